// The SPEC 4 uniform stream on CPU, for the op registration and the Python module's direct binding.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace sparsekern {
namespace cpu {

// A new float32 CPU tensor of `numel` uniforms u(seed, offset + i) (seed, offset: uint64 bits).
at::Tensor uniform_new(int64_t numel, int64_t seed, int64_t offset);

}  // namespace cpu
}  // namespace sparsekern
