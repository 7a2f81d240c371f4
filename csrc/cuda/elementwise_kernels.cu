// Flat (elementwise) CUDA kernels: hard-concrete gates, l0_norm, gated_weight with
// one gate per weight, the uniform stream. Grid-stride loops over chunks of kChunk
// elements with 64-bit indices; 16-byte loads/stores when every pointer is aligned.
// The math is csrc/include/sparsekern (shared with the CPU kernels). No torch.
#include "device_utils.cuh"
#include "sparsekern/philox.h"
#include "sparsekern/sparsity_math.h"

namespace sparsekern {
namespace cuda {
namespace {

using Params = HardConcreteParams<float>;

// Calls body(i, vec) for the first index i of every chunk this thread owns.
template <typename Body>
__device__ __forceinline__ void for_each_chunk(int64_t n, bool aligned, Body body) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * kTile;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * kChunk; i < n; i += step) {
    body(i, aligned && i + kChunk <= n);
  }
}

template <typename Kernel>
unsigned flat_grid(Kernel* kernel, int64_t n) {
  return grid_for(kernel, (n + kTile - 1) / kTile);
}

// Forward: out (L) = z. Backward: out (float) = grad * dz/dlog_alpha.
template <typename L, bool kEval, bool kBackward>
__global__ void __launch_bounds__(kThreads) hard_concrete_kernel(const L* la, const L* grad, void* out, int64_t n,
                                                                 uint64_t seed, uint64_t offset,
                                                                 const int64_t* state, Params p, bool aligned) {
  read_noise_state(state, seed, offset);
  for_each_chunk(n, aligned, [&](int64_t i, bool vec) {
    float a[kChunk], g[kChunk], r[kChunk];
    load_chunk(la, i, n, vec, a);
    if constexpr (kBackward) load_chunk(grad, i, n, vec, g);
#pragma unroll
    for (int k = 0; k < kChunk; ++k) {
      const Gate<float> gate = kEval ? hc_eval(a[k], p) : hc_sample(a[k], sk_uniform(seed, offset + i + k), p);
      if constexpr (kBackward) {
        r[k] = g[k] * gate.dz;
      } else {
        r[k] = gate.z;
      }
    }
    if constexpr (kBackward) {
      store_chunk(static_cast<float*>(out), i, n, vec, r);
    } else {
      store_chunk(static_cast<L*>(out), i, n, vec, r);
    }
  });
}

// partial[tile] = sum of P(z != 0) over tile (kTile elements); fixed order, so it repeats bit for bit.
template <typename L>
__global__ void __launch_bounds__(kThreads) l0_partial_kernel(const L* la, float* partial, int64_t n, Params p,
                                                              bool aligned) {
  __shared__ float scratch[kThreads / 32];
  const int64_t tiles = (n + kTile - 1) / kTile;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int64_t i = t * kTile + threadIdx.x * kChunk;
    float a[kChunk];
    load_chunk(la, i, n, aligned && i + kChunk <= n, a);
    float sum = 0.f;
#pragma unroll
    for (int k = 0; k < kChunk; ++k) sum += i + k < n ? l0_prob(a[k], p) : 0.f;
    const float total = block_sum(sum, scratch);
    if (threadIdx.x == 0) partial[t] = total;
  }
}

template <typename L, typename G>
__global__ void __launch_bounds__(kThreads) l0_backward_kernel(const L* la, const G* grad, float* out, int64_t n,
                                                               Params p, bool aligned) {
  const float g = to_f32(*grad);
  for_each_chunk(n, aligned, [&](int64_t i, bool vec) {
    float a[kChunk], r[kChunk];
    load_chunk(la, i, n, vec, a);
#pragma unroll
    for (int k = 0; k < kChunk; ++k) r[k] = l0_prob_grad(g, a[k], p);
    store_chunk(out, i, n, vec, r);
  });
}

// Forward: out = w * z. Backward: out = grad * z and grad_la = grad * w * dz in the same pass.
template <typename W, typename L, bool kBackward>
__global__ void __launch_bounds__(kThreads) gated_weight_kernel(const W* w, const L* la, const W* grad, W* out,
                                                                float* grad_la, int64_t n, uint64_t seed,
                                                                uint64_t offset, const int64_t* state, Params p,
                                                                bool aligned) {
  read_noise_state(state, seed, offset);
  for_each_chunk(n, aligned, [&](int64_t i, bool vec) {
    float a[kChunk], x[kChunk], g[kChunk], r[kChunk], rl[kChunk];
    load_chunk(la, i, n, vec, a);
    load_chunk(w, i, n, vec, x);
    if constexpr (kBackward) load_chunk(grad, i, n, vec, g);
#pragma unroll
    for (int k = 0; k < kChunk; ++k) {
      const Gate<float> gate = hc_sample(a[k], sk_uniform(seed, offset + i + k), p);
      if constexpr (kBackward) {
        r[k] = g[k] * gate.z;
        rl[k] = g[k] * x[k] * gate.dz;
      } else {
        r[k] = x[k] * gate.z;
      }
    }
    store_chunk(out, i, n, vec, r);
    if constexpr (kBackward) store_chunk(grad_la, i, n, vec, rl);
  });
}

__global__ void __launch_bounds__(kThreads) uniform_kernel(float* out, int64_t n, uint64_t seed, uint64_t offset,
                                                           bool aligned) {
  for_each_chunk(n, aligned, [&](int64_t i, bool vec) {
    float r[kChunk];
#pragma unroll
    for (int k = 0; k < kChunk; ++k) r[k] = sk_uniform(seed, offset + i + k);
    store_chunk(out, i, n, vec, r);
  });
}

Params params_of(const HcCall& hc) { return hc_params<float>(hc.beta, hc.gamma, hc.zeta); }

}  // namespace

void hard_concrete(DType la_type, const void* log_alpha, const void* grad, void* out, int64_t n, const HcCall& hc,
                   bool eval_gate, cudaStream_t stream) {
  if (n <= 0) return;
  const bool aligned = aligned16(log_alpha) && aligned16(grad) && aligned16(out);
  dispatch(la_type, [&](auto tag) {
    using L = typename decltype(tag)::type;
    const auto* la = static_cast<const L*>(log_alpha);
    const auto* g = static_cast<const L*>(grad);
    auto launch = [&](auto kernel) {
      kernel<<<flat_grid(kernel, n), kThreads, 0, stream>>>(la, g, out, n, hc.seed, hc.offset, hc.state,
                                                            params_of(hc), aligned);
    };
    if (eval_gate) {
      grad ? launch(hard_concrete_kernel<L, true, true>) : launch(hard_concrete_kernel<L, true, false>);
    } else {
      grad ? launch(hard_concrete_kernel<L, false, true>) : launch(hard_concrete_kernel<L, false, false>);
    }
  });
}

int64_t l0_block_size() { return kTile; }

void l0_partial(DType la_type, const void* log_alpha, float* partial, int64_t n, const HcCall& hc,
                cudaStream_t stream) {
  if (n <= 0) return;
  const bool aligned = aligned16(log_alpha);
  dispatch(la_type, [&](auto tag) {
    using L = typename decltype(tag)::type;
    l0_partial_kernel<L><<<flat_grid(l0_partial_kernel<L>, n), kThreads, 0, stream>>>(
        static_cast<const L*>(log_alpha), partial, n, params_of(hc), aligned);
  });
}

void l0_backward(DType la_type, DType grad_type, const void* log_alpha, const void* grad, float* out, int64_t n,
                 const HcCall& hc, cudaStream_t stream) {
  if (n <= 0) return;
  const bool aligned = aligned16(log_alpha) && aligned16(out);
  dispatch(la_type, [&](auto la_tag) {
    dispatch(grad_type, [&](auto grad_tag) {
      using L = typename decltype(la_tag)::type;
      using G = typename decltype(grad_tag)::type;
      l0_backward_kernel<L, G><<<flat_grid(l0_backward_kernel<L, G>, n), kThreads, 0, stream>>>(
          static_cast<const L*>(log_alpha), static_cast<const G*>(grad), out, n, params_of(hc), aligned);
    });
  });
}

void gated_weight_full(DType w_type, DType la_type, const void* w, const void* log_alpha, const void* grad,
                       void* out, float* grad_la, int64_t n, const HcCall& hc, cudaStream_t stream) {
  if (n <= 0) return;
  const bool aligned = aligned16(w) && aligned16(log_alpha) && aligned16(grad) && aligned16(out) && aligned16(grad_la);
  dispatch(w_type, [&](auto w_tag) {
    dispatch(la_type, [&](auto la_tag) {
      using W = typename decltype(w_tag)::type;
      using L = typename decltype(la_tag)::type;
      auto launch = [&](auto kernel) {
        kernel<<<flat_grid(kernel, n), kThreads, 0, stream>>>(
            static_cast<const W*>(w), static_cast<const L*>(log_alpha), static_cast<const W*>(grad),
            static_cast<W*>(out), grad_la, n, hc.seed, hc.offset, hc.state, params_of(hc), aligned);
      };
      grad ? launch(gated_weight_kernel<W, L, true>) : launch(gated_weight_kernel<W, L, false>);
    });
  });
}

void uniform(float* out, int64_t n, uint64_t seed, uint64_t offset, cudaStream_t stream) {
  if (n <= 0) return;
  uniform_kernel<<<flat_grid(uniform_kernel, n), kThreads, 0, stream>>>(out, n, seed, offset, aligned16(out));
}

}  // namespace cuda
}  // namespace sparsekern
