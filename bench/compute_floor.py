"""The compute floor of the gate ops on CPU: the same Philox + hard-concrete loop the kernels
run, with no memory traffic (bench-only; setup.py never builds it).

    python bench/compute_floor.py --threads 1,2          # ns per element of each floor

The loop is the kernels' own code: ``philox_r0_block`` (csrc/cpu/philox_block.h) fills a block of
256 words on the stack, ``hc_sample`` (csrc/include/sparsekern/sparsity_math.h) turns each into a
gate, and the gates are summed in 16 lanes instead of being stored, so nothing but L1 is
touched. It is compiled with setup.py's flags (``-O3 -ffp-contract=off -fno-math-errno
-fno-trapping-math -march=native``, plus ``-fopenmp``) and split over threads by ``at::parallel_for``
in pieces of 16384 elements. Floors:

- ``philox``: the uniform stream's words alone (Philox4x32-10 rounds);
- ``gate``: Philox + one hard-concrete sample (log, log, exp, two divisions): a gate op's forward;
- ``gate_grad``: the same, keeping z and dz: what a backward regenerates per element.

A gate op's fwd+bwd floor is ``gate`` + ``gate_grad`` per element (the backward regenerates the
noise, it does not store it).
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
HC = (2.0 / 3.0, -0.1, 1.1)  # beta, gamma, zeta (the defaults of bench/ops.py)

_SOURCE = r"""
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "philox_block.h"
#include "sparsekern/sparsity_math.h"

namespace {
using namespace sparsekern;
using namespace sparsekern::cpu;

constexpr int64_t kChunk = 16384;  // pieces split over threads (the kernels' reduction chunk, csrc/cpu/cpu_common.h)
constexpr int kLanes = 16;

// sum over the block of value(j) in kLanes lanes: a register reduction, nothing stored.
template <typename F>
SK_FORCE_INLINE void add_block(float* acc, int64_t len, const F& value) {
  alignas(64) float buf[kRandomBlock];
  for (int64_t j = 0; j < len; ++j) buf[j] = value(j);
  for (int64_t j = len; j < kRandomBlock; ++j) buf[j] = 0.0f;
  for (int64_t j = 0; j < kRandomBlock; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += buf[j + l];
}

// kind 0: uniforms only; 1: gate z; 2: gate z + dz. Returns the checksum (keeps the loop alive).
double floor_loop(int64_t n, int64_t seed, int64_t kind, double beta, double gamma, double zeta) {
  const HardConcreteParams<float> p = hc_params<float>(beta, gamma, zeta);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> sums(static_cast<size_t>(chunks), 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      alignas(64) float acc[kLanes] = {};
      const int64_t begin = c * kChunk, end = std::min(n, begin + kChunk);
      for_each_random_block(static_cast<uint64_t>(seed), 0u, begin, end,
                            [&](int64_t start, int64_t len, const uint32_t* bits) SK_LAMBDA_INLINE {
        const float la = 0.5f;  // a register, not a load: no memory traffic
        if (kind == 0) {
          add_block(acc, len, [&](int64_t j) SK_LAMBDA_INLINE { return uniform_from_bits(bits[j]); });
        } else if (kind == 1) {
          add_block(acc, len, [&](int64_t j) SK_LAMBDA_INLINE {
            return hc_sample(la, uniform_from_bits(bits[j]), p).z;
          });
        } else {
          add_block(acc, len, [&](int64_t j) SK_LAMBDA_INLINE {
            const Gate<float> g = hc_sample(la, uniform_from_bits(bits[j]), p);
            return g.z + g.dz;
          });
        }
      });
      double s = 0.0;
      for (int l = 0; l < kLanes; ++l) s += acc[l];
      sums[c] = s;
    }
  });
  double total = 0.0;
  for (double s : sums) total += s;
  return total;
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("floor_loop", &floor_loop, "the gate ops' compute loop with no memory traffic");
}
"""

KINDS = {"philox": 0, "gate": 1, "gate_grad": 2}


@functools.lru_cache(maxsize=None)
def extension():
    """Compiles (once per source, torch's extension cache) and loads the floor loop."""
    from torch.utils.cpp_extension import load_inline

    # -fopenmp: ATen's parallel_for is a header template; without it, it runs on one thread.
    flags = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-march=native", "-fopenmp"]
    return load_inline(name="sparsekern_bench_compute_floor", cpp_sources=[_SOURCE], functions=None,
                       extra_cflags=flags, extra_ldflags=["-fopenmp"],
                       extra_include_paths=[str(ROOT / "csrc" / "include"), str(ROOT / "csrc" / "cpu")],
                       verbose=False)


def floor_call(kind: str, n: int, seed: int = 7):
    """A zero-argument callable running the `kind` floor over n elements (at torch's thread count)."""
    ext, code = extension(), KINDS[kind]
    return lambda: ext.floor_loop(n, seed, code, *HC)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--n", type=int, default=1 << 22, help="elements per call")
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, n={args.n}, {args.rounds} rounds round-robin, min over rounds")
    print("| threads | " + " | ".join(f"{k} ns/elem (median, min)" for k in KINDS) + " | load avg |")
    print("|---:|" + "---:|" * len(KINDS) + "---|")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        calls = {k: floor_call(k, args.n) for k in KINDS}
        for c in calls.values():
            c()
        times = {k: [] for k in calls}
        load = os.getloadavg()[0]
        for _ in range(args.rounds):
            for k, c in calls.items():
                start = time.perf_counter()
                c()
                times[k].append(time.perf_counter() - start)
        cells = " | ".join(f"{statistics.median(v) * 1e9 / args.n:.2f}, {min(v) * 1e9 / args.n:.2f}"
                           for v in times.values())
        print(f"| {threads} | {cells} | {load:.1f} -> {os.getloadavg()[0]:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
