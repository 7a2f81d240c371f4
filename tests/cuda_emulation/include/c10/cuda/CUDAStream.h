// Stand-in for c10's CUDA stream under the emulation: one (null) stream.
#pragma once
#include "emulation.h"

namespace c10 {
namespace cuda {
struct CUDAStream {
  operator cudaStream_t() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(signed char = -1) { return {}; }
}  // namespace cuda
}  // namespace c10
