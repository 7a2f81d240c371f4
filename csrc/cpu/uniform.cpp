// The SPEC 4 uniform stream on CPU: out[i] = u(seed, offset + i), float32.
#include "uniform.h"

#include <torch/library.h>

#include "cpu_common.h"
#include "../op_signatures.h"

namespace sparsekern {
namespace cpu {
namespace {

void fill_uniform(float* out, int64_t n, int64_t seed, int64_t offset) {
  parallel_uniforms(n, as_u64(seed), as_u64(offset), [&](int64_t i, float u) SK_LAMBDA_INLINE { out[i] = u; });
}

void uniform(at::Tensor& out, int64_t seed, int64_t offset) {
  TORCH_CHECK(out.device().is_cpu(), "uniform: out must be a CPU tensor");
  TORCH_CHECK(out.scalar_type() == at::kFloat, "uniform: out must be float32, got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "uniform: out must be contiguous");
  fill_uniform(out.data_ptr<float>(), out.numel(), seed, offset);
}

}  // namespace

at::Tensor uniform_new(int64_t numel, int64_t seed, int64_t offset) {
  TORCH_CHECK(numel >= 0, "uniform: numel must be non-negative, got ", numel);
  at::Tensor out = new_output({numel}, at::TensorOptions().dtype(at::kFloat));
  fill_uniform(out.data_ptr<float>(), numel, seed, offset);
  return out;
}

TORCH_LIBRARY_IMPL(sparsekern_C, CPU, m) {
  SK_IMPL(m, uniform, uniform);
}

}  // namespace cpu
}  // namespace sparsekern
