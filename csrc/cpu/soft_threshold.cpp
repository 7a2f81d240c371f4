// STR soft threshold (SPEC 1) on CPU: one pass forward, one fused pass backward
// (grad_w plus the per-group sums that give grad_s).
#include <torch/library.h>

#include "cpu_common.h"
#include "sparsekern/sparsity_math.h"
#include "../op_checks.h"
#include "../op_signatures.h"

namespace sparsekern {
namespace cpu {
namespace {

// Thresholds t = sigmoid(s) in the weight's math type T (the reference casts s to it first).
template <typename T>
std::vector<T> thresholds(const at::Tensor& s) {
  const at::Tensor st = as_dense(s, c10::CppTypeToScalarType<T>::value);
  const T* sp = st.data_ptr<T>();
  std::vector<T> t(static_cast<size_t>(st.numel()));
  for (size_t k = 0; k < t.size(); ++k) {
    t[k] = str_threshold(sp[k]);
  }
  return t;
}

void check(const char* op, const at::Tensor& weight, const at::Tensor& s) {
  check_inputs(op, {&weight, &s});
  check_soft_threshold(op, weight, s);
}

at::Tensor soft_threshold(const at::Tensor& weight_in, const at::Tensor& s) {
  check("soft_threshold", weight_in, s);
  const at::Tensor weight = weight_in.contiguous();
  at::Tensor out = new_output(weight);
  const int64_t n = weight.numel();
  if (n == 0) {
    return out;
  }
  const int64_t group_len = n / s.numel();
  SK_DISPATCH_FLOATS(weight.scalar_type(), "soft_threshold", [&] {
    using W = scalar_t;
    using T = math_t<W>;
    const std::vector<T> t = thresholds<T>(s);
    const W* wp = weight.data_ptr<W>();
    W* op = out.data_ptr<W>();
    parallel_elements(n, kMemoryGrain, [&](int64_t begin, int64_t end) {
      for_each_group_segment(begin, end, group_len, [&](int64_t group, int64_t b, int64_t e) {
        const T tg = t[group];
        for (int64_t i = b; i < e; ++i) {
          op[i] = static_cast<W>(str_value(static_cast<T>(wp[i]), tg));
        }
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> soft_threshold_backward(const at::Tensor& grad_in, const at::Tensor& weight_in,
                                                           const at::Tensor& s) {
  check("soft_threshold_backward", weight_in, s);
  check_inputs("soft_threshold_backward", {&grad_in});
  check_grad_shape("soft_threshold_backward", grad_in, weight_in, "weight");
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor grad = as_dense(grad_in, weight.scalar_type());
  at::Tensor grad_w = new_output(weight);
  at::Tensor grad_s = at::empty(s.sizes(), s.options().dtype(math_dtype(s)));
  const int64_t n = weight.numel();
  const int64_t groups = s.numel();
  SK_DISPATCH_FLOATS(weight.scalar_type(), "soft_threshold_backward", [&] {
    using W = scalar_t;
    using T = math_t<W>;
    const std::vector<T> t = thresholds<T>(s);
    const W* wp = weight.data_ptr<W>();
    const W* gp = grad.data_ptr<W>();
    W* gwp = grad_w.data_ptr<W>();
    const int64_t group_len = groups > 0 ? n / groups : 0;
    const std::vector<T> sums = grouped_sums<T>(groups, group_len, [&](int64_t begin, int64_t end) {
      const T tg = t[begin / group_len];
      return lane_sum<T>(begin, end, [&](int64_t i) SK_LAMBDA_INLINE {
        const T g = static_cast<T>(gp[i]);
        const T w = static_cast<T>(wp[i]);
        gwp[i] = static_cast<W>(str_grad_weight(g, w, tg));
        return str_grad_s_term(g, w, tg);
      });
    });
    at::Tensor grad_s_t = at::empty({groups}, s.options().dtype(c10::CppTypeToScalarType<T>::value));
    T* gsp = grad_s_t.data_ptr<T>();
    for (int64_t k = 0; k < groups; ++k) {
      gsp[k] = str_grad_s_scale(t[k]) * sums[k];
    }
    grad_s.copy_(grad_s_t.view(s.sizes()));
  });
  return {grad_w, grad_s};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsekern_C, CPU, m) {
  SK_IMPL(m, soft_threshold, soft_threshold);
  SK_IMPL(m, soft_threshold_backward, soft_threshold_backward);
}

}  // namespace cpu
}  // namespace sparsekern
