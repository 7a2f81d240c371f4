// Stand-in for the CUDA header: see tests/cuda_emulation/emulation.h.
#pragma once
#include "emulation.h"
