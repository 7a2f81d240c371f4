// Host launchers of the CUDA kernels: plain C++ over raw pointers, no torch.
// csrc/cuda/ops_cuda.cu (the torch binding) allocates tensors and calls these;
// every launcher enqueues exactly one kernel on `stream`.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace sparsekern {
namespace cuda {

enum class DType : int { kFloat = 0, kHalf = 1, kBFloat16 = 2 };

// Hard-concrete call parameters; seed/offset are the SPEC's uint64 values. With `state`
// (device memory holding int64 [seed, offset]) the kernel reads them there instead: no host
// sync, and a captured CUDA graph reads the live counter at every replay.
struct HcCall {
  uint64_t seed;
  uint64_t offset;
  double beta;
  double gamma;
  double zeta;
  const int64_t* state = nullptr;
};

// ---------------------------------------------------------------- row kernels
// A row kernel sees x as [rows, inner]; row r owns param[r % channels]. Backward
// writes grad_x and partial[r * row_col_tiles(inner) + column tile] (float32),
// the group sums of that tile, which the caller sums over the last dim.
int64_t row_col_tiles(int64_t inner);

// soft threshold: param = s (channels = rows); partial holds dL/ds per tile.
void soft_threshold_rows(DType x_type, DType s_type, const void* x, const void* s, const void* grad, void* out,
                         float* partial, int64_t rows, int64_t inner, cudaStream_t stream);

// one hard-concrete gate per row, noise counter offset + r: gated_weight per row
// (channels = rows) and gated_activation (x as [B * C, spatial], channels = C).
// partial holds dz * sum(g * x) per tile. channels_last: x, grad and out are [B, spatial, C] in
// memory (gated_activation on NHWC), read in place with the row-major call's results bit for bit.
void gated_rows(DType x_type, DType la_type, const void* x, const void* log_alpha, const void* grad, void* out,
                float* partial, int64_t rows, int64_t inner, int64_t channels, const HcCall& hc,
                cudaStream_t stream, bool channels_last = false);

// ---------------------------------------------------------------- flat kernels
// hard_concrete / hard_concrete_eval: forward writes z (la_type) to out; backward
// (grad != nullptr) writes grad * dz as float32.
void hard_concrete(DType la_type, const void* log_alpha, const void* grad, void* out, int64_t n, const HcCall& hc,
                   bool eval_gate, cudaStream_t stream);

// l0_norm: partial[i] = sum of P(z != 0) over block i of l0_block_size() elements.
int64_t l0_block_size();
void l0_partial(DType la_type, const void* log_alpha, float* partial, int64_t n, const HcCall& hc,
                cudaStream_t stream);
// out = grad * P * (1 - P); grad is a 0-dim tensor of grad_type.
void l0_backward(DType la_type, DType grad_type, const void* log_alpha, const void* grad, float* out, int64_t n,
                 const HcCall& hc, cudaStream_t stream);

// gated_weight with one gate per weight: forward out = w * z; backward (grad !=
// nullptr) out = grad * z and grad_la = grad * w * dz (float32), in one pass.
void gated_weight_full(DType w_type, DType la_type, const void* w, const void* log_alpha, const void* grad,
                       void* out, float* grad_la, int64_t n, const HcCall& hc, cudaStream_t stream);

// out[i] = u(seed, offset + i) (SPEC 4), float32.
void uniform(float* out, int64_t n, uint64_t seed, uint64_t offset, cudaStream_t stream);

}  // namespace cuda
}  // namespace sparsekern
