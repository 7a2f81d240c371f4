"""Save a shrunk Hugging Face model so ``AutoModel.from_pretrained`` rebuilds it without sparsekern.

transformers has no per-layer head or neuron counts in its configs (and, in 5.x, no
``prune_heads``), so the stock class cannot load a model with closed heads removed. This writes,
beside ``save_pretrained``'s safetensors and config.json, a small modeling file (importing only
torch and transformers) whose class subclasses the original and, after its ``__init__``,
resizes the layers recorded in ``config.sparsekern_shapes`` and sets the head attributes of
``config.sparsekern_heads`` (``sparsekern.models.hf_resize``, copied in); ``config.auto_map``
points the Auto classes at it (Hugging Face's custom-code mechanism): ``AutoModel.from_pretrained(directory, trust_remote_code=True)``.
"""
from __future__ import annotations

import inspect
import os

from torch import nn

MODELING_FILE = "modeling_sparsekern_shrunk.py"
# the Auto class that loads a model class, by the end of its name (AutoModel always)
AUTO_CLASSES = (("ForSequenceClassification", "AutoModelForSequenceClassification"),
                ("ForImageClassification", "AutoModelForImageClassification"),
                ("ForCausalLM", "AutoModelForCausalLM"), ("LMHeadModel", "AutoModelForCausalLM"))

TEMPLATE = '''"""Written by sparsekern: {base} with closed attention heads and FFN neurons removed.

Imports only torch and transformers: the layer shapes and head counts are in config.json
(sparsekern_shapes: {{layer: [in, out]}}, sparsekern_heads: {{attention: [heads, head_dim]}}).
"""
{resize}

from {module} import {base} as _Base


class {name}(_Base):
    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        resize_to_config(self, config)
'''


def _resize_source() -> str:
    """sparsekern.models.hf_resize without its docstring: torch and transformers imports and resize_to_config."""
    from sparsekern.models import hf_resize  # imports transformers

    source = inspect.getsource(hf_resize)
    return source[source.index('"""', 3) + 3:].strip()


def save_shrunk_pretrained(model: nn.Module, directory: str) -> None:
    """``model.save_pretrained(directory)`` plus the modeling file and ``auto_map`` (module
    docstring). ``model``: a Hugging Face model shrunk by ``finalize`` (``transformer_shrink``)."""
    config = getattr(model, "config", None)
    if not hasattr(model, "save_pretrained") or config is None:
        raise ValueError(f"save_shrunk_pretrained: {type(model).__name__} is not a Hugging Face model")
    if not hasattr(model, "sparsekern_shapes"):
        raise ValueError("save_shrunk_pretrained: model is not shrunk; pass the model finalize() returned")
    base = type(model)
    name = f"Shrunk{base.__name__}"
    auto = {"AutoModel": f"{MODELING_FILE[:-3]}.{name}"}
    for suffix, auto_class in AUTO_CLASSES:
        if base.__name__.endswith(suffix):
            auto[auto_class] = auto["AutoModel"]
    config.sparsekern_shapes, config.sparsekern_heads = model.sparsekern_shapes, model.sparsekern_heads
    config.auto_map = auto
    # the current module names (save_original_format would write ViT's legacy keys, which the
    # subclass would not map back)
    model.save_pretrained(directory, save_original_format=False)
    with open(os.path.join(directory, MODELING_FILE), "w") as f:
        f.write(TEMPLATE.format(base=base.__name__, module=base.__module__, name=name, resize=_resize_source()))
