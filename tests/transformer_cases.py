"""The tiny transformers of the transformer-gate tests (2 layers, hidden 64) and their helpers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsekern.models import build_model
from sparsekern.nn import HeadGate
from sparsekern.pruning.surgery.transformer_gating import transformer_gates

T = pytest.importorskip("transformers")
SEQ, VOCAB, HEADS, HIDDEN = 8, 50, 4, 64


def _hf(kind: str, **extra):
    torch.manual_seed(0)
    common = {"hidden_size": HIDDEN, "num_hidden_layers": 2, "num_attention_heads": HEADS, "intermediate_size": 128}
    config = {
        "bert": lambda: T.BertConfig(vocab_size=VOCAB, max_position_embeddings=16, **common),
        "gpt2": lambda: T.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=HEADS, n_positions=16,
                                     bos_token_id=0, eos_token_id=0),
        "vit": lambda: T.ViTConfig(image_size=16, patch_size=4, num_channels=3, **common),
        "llama": lambda: T.LlamaConfig(vocab_size=VOCAB, max_position_embeddings=16, num_key_value_heads=HEADS,
                                       **common),
    }[kind]()
    for k, v in extra.items():
        setattr(config, k, v)
    config._attn_implementation = "eager"
    return T.AutoModel.from_config(config).eval()


def _input(kind: str, batch: int = 2):
    gen = torch.Generator().manual_seed(1)
    if kind == "vit":
        return torch.randn(batch, 3, 16, 16, generator=gen)
    return torch.randint(0, VOCAB, (batch, SEQ), generator=gen)


class _Out(nn.Module):
    """A Hugging Face model's last hidden state as one tensor (what the tests compare)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).last_hidden_state


MODELS = ["bert", "gpt2", "vit", "llama", "transformer"]
FFN = {"bert": 128, "gpt2": 4 * HIDDEN, "vit": 128, "llama": 128, "transformer": 128}


class TorchEncoderClassifier(nn.Module):
    """Token ids -> embedding -> nn.TransformerEncoder (2 layers) -> mean over tokens -> Linear:
    torch's own transformer layers (head gates make its attention a HeadPrunableMultiheadAttention)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        layer = nn.TransformerEncoderLayer(HIDDEN, HEADS, 128, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(HIDDEN, 3)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(1))


def _model(kind: str):
    if kind == "torch_encoder":
        torch.manual_seed(0)
        return TorchEncoderClassifier().eval()
    if kind == "transformer":
        torch.manual_seed(0)
        return build_model("transformer", 3, VOCAB, SEQ).eval()
    if kind == "llama_gqa":  # grouped-query attention: 4 query heads on 2 k/v heads
        return _hf("llama", num_key_value_heads=2)
    return _hf(kind)


def _forward(model, x):
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.last_hidden_state


def _close_some(model):
    """Closes gates by hand: in gate i, the first (i % 3) + 1 channels (a whole layer's heads in one)."""
    with torch.no_grad():
        for i, (_, g) in enumerate(transformer_gates(model)):
            n = g.num_channels if i == 2 else i % 3 + 1
            g.log_alpha[:n].fill_(-9.0)


def _positions(kind: str) -> int:
    return (16 // 4) ** 2 + 1 if kind == "vit" else SEQ  # ViT: 4x4 patches and the class token


def _empty_head_layers(gated):
    """Attention sites whose heads all closed: the shrunk model keeps one zero-output head there."""
    return [s for s, g in transformer_gates(gated) if isinstance(g, HeadGate) and not g.kept().any()]


def _one_group_weights(sites) -> int:
    """What a layer whose heads all closed keeps: one k/v group (one head without grouping), its
    query rows and output columns (group_width each) and its k and v rows (head_dim each)."""
    return sum((2 * s.group_width + 2 * s.head_dim) * HIDDEN for s in sites)


def _one_head_flops(sites, t: int) -> float:
    return sum(_one_group_weights([s]) * t + 2 * s.group_width * t * t for s in sites)


