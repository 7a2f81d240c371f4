// take_noise on CPU (the one definition is csrc/noise_state.h, shared with CUDA).
#include <torch/library.h>

#include "../op_signatures.h"
#include "../noise_state.h"

namespace sparsekern {
namespace cpu {

TORCH_LIBRARY_IMPL(sparsekern_C, CPU, m) {
  SK_IMPL(m, take_noise, ::sparsekern::take_noise);
}

}  // namespace cpu
}  // namespace sparsekern
