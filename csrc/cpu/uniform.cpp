// The SPEC 4 uniform stream on CPU: out[i] = u(seed, offset + i), float32.
#include <torch/library.h>

#include "cpu_common.h"
#include "../op_signatures.h"

namespace sparsekern {
namespace cpu {
namespace {

void uniform(at::Tensor& out, int64_t seed, int64_t offset) {
  TORCH_CHECK(out.device().is_cpu(), "uniform: out must be a CPU tensor");
  TORCH_CHECK(out.scalar_type() == at::kFloat, "uniform: out must be float32, got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "uniform: out must be contiguous");
  const uint64_t key = as_u64(seed), base = as_u64(offset);
  float* op = out.data_ptr<float>();
  parallel_uniforms(out.numel(), key, base, [&](int64_t i, float u) SK_LAMBDA_INLINE { op[i] = u; });
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsekern_C, CPU, m) {
  SK_IMPL(m, uniform, uniform);
}

}  // namespace cpu
}  // namespace sparsekern
