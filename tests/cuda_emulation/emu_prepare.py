"""A host-C++ copy of csrc for the CUDA emulation: the committed sources stay as nvcc compiles them.

Only two kinds of text change, each checked to have happened:
* `kernel<<<grid, block, smem, stream>>>(args)` becomes `::emu::launcher(kernel, grid, block, smem, stream)(args)`;
* the torch binding (csrc/cuda/ops_cuda.cu) registers its kernels as the CPU kernels of the
  `sparsekern_emu` library (the tensors are CPU tensors) and checks `is_cpu()` where it checked
  `is_cuda()`.
`mutations` (regex, replacement, path) edit the copy further; the mutation test uses them.
"""
from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")

_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;()]*>)?)<<<(.*?)>>>")
_REGISTRATION = "TORCH_LIBRARY_IMPL(sparsekern_C, CUDA, m)"


def _sub(pattern, repl, text: str, what: str, flags=0) -> str:
    new, count = re.subn(pattern, repl, text, flags=flags)
    if count == 0:
        raise ValueError(f"cuda emulation: {what}: pattern {pattern!r} not found")
    return new


def rewrite(name: str, text: str) -> str:
    """The host C++ text of csrc/cuda/<name>."""
    if "<<<" in text:
        text = _sub(_LAUNCH, r"::emu::launcher(\1, \2)", text, f"{name} launches")
        assert "<<<" not in text and ">>>" not in text, f"{name}: a launch the rewrite missed"
    if name == "ops_cuda.cu":
        text = _sub(re.escape(_REGISTRATION), "TORCH_LIBRARY_IMPL(sparsekern_emu, CPU, m)", text, name)
        text = _sub(r"\.is_cuda\(\)", ".is_cpu()", text, name)
    return text


def _write_if_changed(path: str, text: str) -> None:
    """Unchanged files keep their mtime, so ninja does not rebuild them."""
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def prepare(dest: str, mutations=()) -> dict[str, str]:
    """Writes the copy of csrc under dest/csrc; returns {name: path} of the C++ sources to build.

    Every mutation must match: a mutant that silently equals the original would prove nothing.
    """
    texts = {}
    for dirpath, _, files in os.walk(CSRC):
        for f in files:
            src = os.path.join(dirpath, f)
            rel = os.path.relpath(src, CSRC)
            with open(src) as fh:
                texts[rel] = fh.read()
    for pattern, repl, rel in mutations:
        texts[rel] = _sub(pattern, repl, texts[rel], f"mutation of {rel}", flags=re.M)
    sources = {}
    for rel, text in texts.items():
        out = os.path.join(dest, "csrc", rel)
        if rel.startswith("cuda" + os.sep) and rel.endswith(".cu"):
            name = os.path.basename(rel)
            out = out[: -len(".cu")] + ".cpp"
            text = rewrite(name, text)
            sources[name[: -len(".cu")]] = out
        _write_if_changed(out, text)
    return sources
