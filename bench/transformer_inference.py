"""CPU inference latency of a transformer with heads and FFN neurons removed, against dense.

A Hugging Face model or torch's own ``nn.TransformerEncoder`` (``--model torch``; random weights)
gets l0_hc head and neuron gates; a fraction of the gates
of every layer is closed by hand (``--closed``, lowest index first: latency depends on the
shapes, not on which heads), and ``finalize`` removes them. Both models run the same batch on
one thread, round-robin (one call of each per round, so load that comes and goes hits both
alike); the table gives the quartiles of the per-call times over the rounds, the FLOPs of the
report at the stated sequence length, and the largest difference of the two outputs.

    python bench/transformer_inference.py [--model bert|gpt2|vit|llama|torch] [--closed 0.5] [--rounds 50]

torch's dense encoder runs its fused fast path under ``inference_mode`` (what users get); the shrunk
one, a ``HeadPrunableMultiheadAttention`` with fewer heads, runs the ordinary path.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
import types

import torch
from torch import nn

import sparsekern as sk
from sparsekern.pruning.surgery.report import sparsity_report
from sparsekern.pruning.surgery.transformer_gating import transformer_gates

HIDDEN, LAYERS, HEADS, FFN = 256, 4, 8, 1024


class _TorchEncoder(nn.Module):
    """Token ids -> embedding -> torch's nn.TransformerEncoder; ``last_hidden_state`` like the HF models."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(1000, HIDDEN)
        layer = nn.TransformerEncoderLayer(HIDDEN, HEADS, FFN, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, LAYERS)

    def forward(self, tokens):
        return types.SimpleNamespace(last_hidden_state=self.encoder(self.embed(tokens)))


def _model(kind: str):
    if kind == "torch":
        return _TorchEncoder().eval()
    import transformers as T
    common = {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
              "intermediate_size": FFN}
    config = {"bert": lambda: T.BertConfig(vocab_size=1000, max_position_embeddings=512, **common),
              "gpt2": lambda: T.GPT2Config(vocab_size=1000, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN,
                                           n_positions=512),
              "vit": lambda: T.ViTConfig(image_size=224, patch_size=16, **common),
              "llama": lambda: T.LlamaConfig(vocab_size=1000, max_position_embeddings=512, num_key_value_heads=HEADS,
                                             **common)}[kind]()
    return T.AutoModel.from_config(config).eval()


def _quartiles(xs):
    q = statistics.quantiles(xs, n=4)
    return q[0] * 1e3, q[1] * 1e3, q[2] * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bert", choices=("bert", "gpt2", "vit", "llama", "torch"))
    p.add_argument("--closed", type=float, default=0.5, help="fraction of each layer's heads and neurons closed")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=50)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dense = _model(args.model)
    x = (torch.randn(args.batch, 3, 224, 224) if args.model == "vit"
         else torch.randint(0, 1000, (args.batch, args.seq)))
    gated = sk.sparsify(copy.deepcopy(dense), "l0_hc")
    with torch.no_grad():
        for _, g in transformer_gates(gated):
            g.log_alpha[: round(args.closed * g.num_channels)].fill_(-9.0)
    gated.eval()
    shrunk = sk.finalize(gated)
    with torch.no_grad():
        diff = (shrunk(x).last_hidden_state - gated(x).last_hidden_state).abs().max().item()
    seq = x.shape[1] if args.model != "vit" else (224 // 16) ** 2 + 1
    times = {"dense": [], "shrunk": []}
    with torch.inference_mode():
        for m in (dense, shrunk):  # warm-up
            m(x)
        for _ in range(args.rounds):
            for name, m in (("dense", dense), ("shrunk", shrunk)):
                start = time.perf_counter()
                m(x)
                times[name].append(time.perf_counter() - start)
    flops = {name: sparsity_report(m, x)["total"]["dense_flops"] for name, m in (("dense", dense), ("shrunk", shrunk))}
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in (("dense", dense), ("shrunk", shrunk))}
    print(f"{args.model}: hidden {HIDDEN}, {LAYERS} layers, {HEADS} heads, FFN {FFN}; batch {args.batch}, "
          f"sequence {seq}; {args.closed:.0%} of heads and neurons closed; 1 thread, {args.rounds} rounds; "
          f"max |shrunk - gated| = {diff:.2e}")
    print("| model | params | MFLOPs/example | ms p25 | ms median | ms p75 |")
    print("|---|---|---|---|---|---|")
    for name in ("dense", "shrunk"):
        q = _quartiles(times[name])
        print(f"| {name} | {params[name]} | {flops[name] / 1e6:.1f} | {q[0]:.2f} | {q[1]:.2f} | {q[2]:.2f} |")
    print(f"median speed-up: {statistics.median(times['dense']) / statistics.median(times['shrunk']):.2f}x")


if __name__ == "__main__":
    main()
