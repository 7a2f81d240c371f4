// Stand-in for c10's CUDA device guard: the tensors are CPU tensors; the emulated device is
// chosen with the sparsekern_emu::emu_set_device op (tests/cuda_emulation/binding.cpp).
#pragma once
#include <c10/core/Device.h>

namespace c10 {
namespace cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace cuda
}  // namespace c10
