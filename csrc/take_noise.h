// take_noise: the (seed, offset) a gated layer's step uses, taken from its noise state and the
// state advanced, for CPU and CUDA alike (ATen ops: a 2-element clone and an in-place add).
#pragma once
#include <ATen/ATen.h>

namespace sparsekern {

// A copy of `state` = int64 [seed, offset], then state's offset += numel in place (int64
// wrap-around, i.e. the uint64 counter mod 2**64). One opaque op, not clone + add_ in the graph:
// inductor's partitioner could recompute a plain clone in the backward, after the advance.
inline at::Tensor take_noise(at::Tensor& state, int64_t numel) {
  TORCH_CHECK(state.scalar_type() == at::kLong && state.dim() == 1 && state.size(0) == 2,
              "take_noise: state must be an int64 tensor [seed, offset], got ", state.scalar_type(), " of shape ",
              state.sizes());
  TORCH_CHECK(numel >= 0, "take_noise: numel must be non-negative, got ", numel);
  at::Tensor noise = state.clone();
  state.narrow(0, 1, 1).add_(numel);
  return noise;
}

}  // namespace sparsekern
