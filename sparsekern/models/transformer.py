"""``transformer``: a small token classifier whose heads and FFN neurons can be removed.

Token ids [B, T] (LongTensor) -> embedding + learned positions -> pre-norm encoder layers
(attention with its own ``q_proj``/``k_proj``/``v_proj``/``o_proj``, MLP ``fc1``/``fc2``) ->
LayerNorm, mean over tokens -> Linear. torch's MultiheadAttention cannot have fewer heads at the
same head width, hence the own attention: it reshapes with ``-1`` heads, so a layer with h
heads kept is the same class with ``widths``. No padding mask: every sequence has T tokens.

``build_model("transformer", num_classes, in_channels, image_size, widths=)``: ``in_channels``
is the vocabulary size, ``image_size`` the longest sequence (an int T, or (1, T)). ``widths``:
per layer, kept heads then kept FFN neurons ([4, 128, 4, 128] dense), what
``transformer_widths()`` of a shrunk model returns.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsekern.models.sites import check_widths

DIM, HEADS, FFN, LAYERS = 64, 4, 128, 2
HEAD_DIM = DIM // HEADS


class Attention(nn.Module):
    def __init__(self, heads: int):
        super().__init__()
        self.num_heads, self.head_dim = heads, HEAD_DIM
        width = heads * HEAD_DIM
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(DIM, width) for _ in range(3))
        self.o_proj = nn.Linear(width, DIM)

    def forward(self, x):
        b, t, _ = x.shape

        def split(y):  # [B, T, h*d] -> [B, h, T, d]
            return y.reshape(b, t, -1, self.head_dim).transpose(1, 2)

        context = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.o_proj(context.transpose(1, 2).reshape(b, t, -1))


class Mlp(nn.Module):
    def __init__(self, neurons: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(DIM, neurons), nn.GELU(), nn.Linear(neurons, DIM)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, heads: int, neurons: int):
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(DIM), Attention(heads)
        self.norm2, self.mlp = nn.LayerNorm(DIM), Mlp(neurons)

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerClassifier(nn.Module):
    def __init__(self, num_classes: int, vocab: int, length: int, widths=None):
        super().__init__()
        sizes = check_widths("transformer", widths, [HEADS, FFN] * LAYERS)
        self.length = length
        self.embed, self.position = nn.Embedding(vocab, DIM), nn.Parameter(torch.zeros(length, DIM))
        nn.init.normal_(self.position, std=0.02)
        self.layers = nn.ModuleList(Block(sizes[2 * i], sizes[2 * i + 1]) for i in range(LAYERS))
        self.norm, self.head = nn.LayerNorm(DIM), nn.Linear(DIM, num_classes)

    def forward(self, tokens):
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32) or tokens.shape[1] > self.length:
            raise ValueError(f"transformer: expected token ids [B, T <= {self.length}] (int64), got "
                             f"{tuple(tokens.shape)} {tokens.dtype}")
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        for block in self.layers:
            x = block(x)
        return self.head(self.norm(x).mean(1))

    def transformer_widths(self) -> list[int]:
        """Heads and FFN neurons per layer (``build_model(..., widths=)`` rebuilds this shape)."""
        return [n for b in self.layers for n in (b.attention.num_heads, b.mlp.fc1.out_features)]


def transformer(num_classes: int, in_channels: int, image_size: tuple[int, int], widths=None) -> nn.Module:
    """in_channels: the vocabulary size; image_size: (1, T) or (T, T) from an int T: the longest sequence."""
    if image_size[0] not in (1, image_size[1]):
        raise ValueError(f"build_model: transformer takes image_size T or (1, T) (the longest sequence), "
                         f"got {image_size}")
    return TransformerClassifier(num_classes, in_channels, image_size[1], widths)
