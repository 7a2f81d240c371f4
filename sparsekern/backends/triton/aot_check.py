"""Compiles every Triton kernel variant for a GPU target, without a GPU.

    python -m sparsekern.backends.triton.aot_check [--arch 80,90,100] [--dtypes fp32,bf16,fp16] [--jobs N]

The interpreter (TRITON_INTERPRET=1) runs kernels as Python and so misses what
only the compiler checks (non-constexpr globals, libdevice calls, casts); this
runs the real compiler down to PTX/cubin. It must run with TRITON_INTERPRET unset.
"""
from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor


def _variants(k, dtypes):
    """(kernel, argument types, constexprs) for every kernel, dtype and flag combination."""
    hc = dict(noise_ptr="*i64", seed="i64", offset="i64", beta="fp32", stretch="fp32", gamma="fp32")
    rows = dict(rows="i32", inner="i32", n_col_tiles="i32")
    blocks = sorted({k.flat_config(n)[0] for n in (1, 1 << 30)})  # every BLOCK_SIZE the size rule picks
    yield k.uniform_kernel, dict(out_ptr="*fp32", n="i64", seed="i64", offset="i64"), dict(BLOCK_SIZE=1024)
    for dt, block, at in itertools.product(dtypes, blocks, (False, True)):  # at: noise read from noise_ptr
        p = f"*{dt}"
        for ev, bw in itertools.product((False, True), repeat=2):
            yield (k.hard_concrete_kernel, dict(la_ptr=p, grad_ptr=p, out_ptr="*fp32" if bw else p, n="i64", **hc),
                   dict(EVAL=ev, BACKWARD=bw, NOISE_AT=at, BLOCK_SIZE=block))
        for bw in (False, True):
            yield (k.gated_weight_kernel,
                   dict(w_ptr=p, la_ptr=p, grad_ptr=p, out_ptr=p, grad_la_ptr="*fp32", n="i64", **hc),
                   dict(BACKWARD=bw, NOISE_AT=at, BLOCK_SIZE=block))
            if block == blocks[0]:  # row kernels: tiles by row_tile, not by the flat rule
                yield (k.gated_rows_kernel,
                       dict(x_ptr=p, la_ptr=p, grad_ptr=p, out_ptr=p, partial_ptr="*fp32", channels="i32", **rows,
                            **hc),
                       dict(BACKWARD=bw, NOISE_AT=at, BLOCK_R=32, BLOCK_C=64))
    for dt in dtypes:
        p = f"*{dt}"
        for bw in (False, True):
            yield (k.soft_threshold_kernel, dict(w_ptr=p, s_ptr=p, grad_ptr=p, out_ptr=p, partial_ptr="*fp32", **rows),
                   dict(BACKWARD=bw, BLOCK_R=4, BLOCK_C=1024))
        yield k.l0_partial_kernel, dict(la_ptr=p, partial_ptr="*fp32", n="i32", shift="fp32"), dict(BLOCK_SIZE=k.L0_BLOCK)
        for block in blocks:
            yield (k.l0_backward_kernel, dict(la_ptr=p, grad_ptr=p, out_ptr="*fp32", n="i32", shift="fp32"),
                   dict(BLOCK_SIZE=block))


def _compile(arch: int, index: int, dtypes: tuple[str, ...]) -> str | None:
    """Compiles variant ``index`` for ``sm_<arch>``; the kernel's name if it gave no cubin."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from sparsekern.backends.triton import kernels

    fn, types, consts = next(itertools.islice(_variants(kernels, dtypes), index, None))
    signature = {name: "constexpr" if name in consts else types[name] for name in fn.arg_names}
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts),
                              target=GPUTarget("cuda", arch, 32))
    return None if compiled.asm.get("cubin") else fn.__name__


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="90", help="comma-separated CUDA compute capabilities, e.g. 80,90,100")
    parser.add_argument("--dtypes", default="fp32,bf16,fp16")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiler processes")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("aot_check: unset TRITON_INTERPRET (it replaces the compiler)", file=sys.stderr)
        return 2

    from sparsekern.backends.triton import kernels

    archs, dtypes = [int(a) for a in args.arch.split(",")], tuple(args.dtypes.split(","))
    count = sum(1 for _ in _variants(kernels, dtypes))
    start = time.time()
    # Each compile is single-threaded Python and ptxas: a process per core. spawn, not fork: no
    # compiler state (threads, caches) copied into the workers.
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [(arch, pool.submit(_compile, arch, i, dtypes)) for arch in archs for i in range(count)]
        failed = [(arch, name) for arch, job in jobs if (name := job.result())]
    for arch, name in failed:
        print(f"aot_check: {name} gave no cubin for sm_{arch}", file=sys.stderr)
    if failed:
        return 1
    print(f"aot_check: {count} Triton kernel variants compiled to cubin for "
          f"{', '.join(f'sm_{a}' for a in archs)} in {time.time() - start:.1f} s ({args.jobs} processes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
