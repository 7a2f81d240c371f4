// take_noise on CPU (the one definition is csrc/take_noise.h, shared with CUDA).
#include <torch/library.h>

#include "../op_signatures.h"
#include "../take_noise.h"

namespace sparsekern {
namespace cpu {

TORCH_LIBRARY_IMPL(sparsekern_C, CPU, m) {
  SK_IMPL(m, take_noise, ::sparsekern::take_noise);
}

}  // namespace cpu
}  // namespace sparsekern
