// Stand-in for c10's launch check: the emulated launch records a bad configuration here.
#pragma once
#include <c10/util/Exception.h>

#include "emulation.h"

#define C10_CUDA_KERNEL_LAUNCH_CHECK()                                                         \
  do {                                                                                         \
    const cudaError_t sk_emu_err = cudaGetLastError();                                         \
    TORCH_CHECK(sk_emu_err == cudaSuccess, "CUDA kernel launch: ", cudaGetErrorString(sk_emu_err)); \
  } while (0)
