// The noise state of a gated layer, an int64 tensor [seed, offset] (the bits of two uint64s):
// its check, shared by the CPU and CUDA `_at` ops, and take_noise, one definition for CPU and
// CUDA (ATen ops: a 2-element clone and an in-place add).
#pragma once
#include <ATen/ATen.h>

namespace sparsekern {

inline void check_noise_state(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kLong && t.numel() == 2, op, ": ", name,
              " must be an int64 tensor [seed, offset], got ", t.scalar_type(), " of shape ", t.sizes());
}

// A copy of `state`, then state's offset += numel in place (int64 wrap-around, i.e. the uint64
// counter mod 2**64). One opaque op, not clone + add_ in the graph: inductor's partitioner could
// recompute a plain clone in the backward, after the advance.
inline at::Tensor take_noise(at::Tensor& state, int64_t numel) {
  check_noise_state("take_noise", "state", state);
  TORCH_CHECK(numel >= 0, "take_noise: numel must be non-negative, got ", numel);
  at::Tensor noise = state.clone();
  state.view(-1).narrow(0, 1, 1).add_(numel);
  return noise;
}

}  // namespace sparsekern
