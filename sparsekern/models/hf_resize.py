"""Rebuild the layer shapes and head counts of a shrunk Hugging Face model from its config.

``finalize`` records them in ``config.sparsekern_shapes`` ({layer: [in, out]}) and
``config.sparsekern_heads`` ({attention: [heads, head_dim]}); ``resize_to_config`` gives a model
freshly built from that config the same shapes, so the shrunk weights load into it. This file
imports only torch and transformers: ``save_shrunk_pretrained`` copies it into the modeling file
it writes beside the weights, so ``from_pretrained(trust_remote_code=True)`` needs no sparsekern.
"""
from torch import nn
from transformers.pytorch_utils import Conv1D


def resize_to_config(model, config):
    """Replace every layer named in ``config.sparsekern_shapes`` by a fresh one of the recorded
    shape and set the head attributes of every attention in ``config.sparsekern_heads``."""
    for name, (n_in, n_out) in (getattr(config, "sparsekern_shapes", None) or {}).items():
        parent, _, key = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        old = getattr(holder, key)
        if isinstance(old, Conv1D):
            new = Conv1D(n_out, n_in).to(device=old.weight.device, dtype=old.weight.dtype)
        else:
            new = nn.Linear(n_in, n_out, bias=old.bias is not None, device=old.weight.device,
                            dtype=old.weight.dtype)
        setattr(holder, key, new)
    for name, (heads, head_dim) in (getattr(config, "sparsekern_heads", None) or {}).items():
        module = model.get_submodule(name)
        for attr in ("num_heads", "num_attention_heads"):
            if isinstance(getattr(module, attr, None), int):
                setattr(module, attr, heads)
        for attr in ("all_head_size", "split_size"):
            if isinstance(getattr(module, attr, None), int):
                setattr(module, attr, heads * head_dim)
