// Hard-concrete gates on CPU (SPEC 2): training sample, deterministic gate and
// expected L0, each with its backward. One pass per call; the noise is regenerated
// from (seed, offset) in backward instead of being stored.
#include <torch/library.h>

#include "cpu_common.h"
#include "sparsekern/philox.h"
#include "sparsekern/sparsity_math.h"
#include "../op_checks.h"
#include "../op_signatures.h"

namespace sparsekern {
namespace cpu {
namespace {

// out[i] = f(i, T(log_alpha[i])), stored in log_alpha's dtype (a gate) or, with
// kParamGrad, in its math dtype (a parameter gradient).
template <bool kParamGrad = false, typename F>
at::Tensor map_gate(const char* name, const at::Tensor& log_alpha_in, const F& f) {
  check_inputs(name, {&log_alpha_in});
  const at::Tensor log_alpha = log_alpha_in.contiguous();
  at::Tensor out = kParamGrad ? new_output(log_alpha.sizes(), log_alpha.options().dtype(math_dtype(log_alpha)))
                              : new_output(log_alpha);
  const int64_t n = log_alpha.numel();
  SK_DISPATCH_FLOATS(log_alpha.scalar_type(), "sparsekern_gate", [&] {
    using P = scalar_t;
    using T = math_t<P>;
    using O = std::conditional_t<kParamGrad, T, P>;
    const P* lp = log_alpha.data_ptr<P>();
    O* op = out.data_ptr<O>();
    const auto fn = f(T());
    parallel_elements(n, kMathGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        op[i] = static_cast<O>(fn(i, static_cast<T>(lp[i])));
      }
    });
  });
  return out;
}

// out[i] = f(T(grad[i]), T(log_alpha[i])) in log_alpha's math dtype (a parameter gradient).
template <typename F>
at::Tensor map_gate_grad(const char* name, const at::Tensor& grad_in, const at::Tensor& log_alpha_in, const F& f) {
  check_inputs(name, {&grad_in, &log_alpha_in});
  check_grad_shape(name, grad_in, log_alpha_in, "log_alpha");
  const at::Tensor log_alpha = log_alpha_in.contiguous();
  const at::Tensor grad = as_dense(grad_in, log_alpha.scalar_type());
  at::Tensor out = new_output(log_alpha.sizes(), log_alpha.options().dtype(math_dtype(log_alpha)));
  const int64_t n = log_alpha.numel();
  SK_DISPATCH_FLOATS(log_alpha.scalar_type(), "sparsekern_gate", [&] {
    using P = scalar_t;
    using T = math_t<P>;
    const P* lp = log_alpha.data_ptr<P>();
    const P* gp = grad.data_ptr<P>();
    T* op = out.data_ptr<T>();
    const auto fn = f(T());
    parallel_elements(n, kMathGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        op[i] = fn(i, static_cast<T>(gp[i]), static_cast<T>(lp[i]));
      }
    });
  });
  return out;
}

// Training gates: out[i] = f(u_i, T(log_alpha[i]), T(grad[i])) with u_i the uniform of
// counter offset + i; in log_alpha's dtype for the gate (no grad), its math dtype for the
// gradient.
template <bool kGrad, typename F>
at::Tensor map_sampled_gate(const char* name, const at::Tensor* grad_in, const at::Tensor& log_alpha_in, int64_t seed,
                            int64_t offset, const F& f) {
  check_inputs(name, {&log_alpha_in});
  const at::Tensor log_alpha = log_alpha_in.contiguous();
  at::Tensor grad;
  if (kGrad) {
    check_inputs(name, {grad_in});
    check_grad_shape(name, *grad_in, log_alpha_in, "log_alpha");
    grad = as_dense(*grad_in, log_alpha.scalar_type());
  }
  at::Tensor out = kGrad ? new_output(log_alpha.sizes(), log_alpha.options().dtype(math_dtype(log_alpha)))
                         : new_output(log_alpha);
  SK_DISPATCH_FLOATS(log_alpha.scalar_type(), "sparsekern_sampled_gate", [&] {
    using P = scalar_t;
    using T = math_t<P>;
    using O = std::conditional_t<kGrad, T, P>;
    const P* lp = log_alpha.data_ptr<P>();
    const P* gp = kGrad ? grad.data_ptr<P>() : nullptr;
    O* op = out.data_ptr<O>();
    const auto fn = f(T());
    parallel_uniforms(log_alpha.numel(), as_u64(seed), as_u64(offset), [&](int64_t i, float u) SK_LAMBDA_INLINE {
      op[i] = static_cast<O>(fn(u, static_cast<T>(lp[i]), kGrad ? static_cast<T>(gp[i]) : T(0)));
    });
  });
  return out;
}

at::Tensor hard_concrete(const at::Tensor& log_alpha, int64_t seed, int64_t offset, double beta, double gamma,
                         double zeta) {
  return map_sampled_gate<false>("hard_concrete", nullptr, log_alpha, seed, offset, [&](auto zero) {
    using T = decltype(zero);
    const HardConcreteParams<T> p = hc_params<T>(beta, gamma, zeta);
    return [=](float u, T la, T) SK_LAMBDA_INLINE { return hc_sample(la, u, p).z; };
  });
}

at::Tensor hard_concrete_backward(const at::Tensor& grad, const at::Tensor& log_alpha, int64_t seed, int64_t offset,
                                  double beta, double gamma, double zeta) {
  return map_sampled_gate<true>("hard_concrete_backward", &grad, log_alpha, seed, offset, [&](auto zero) {
    using T = decltype(zero);
    const HardConcreteParams<T> p = hc_params<T>(beta, gamma, zeta);
    return [=](float u, T la, T g) SK_LAMBDA_INLINE { return g * hc_sample(la, u, p).dz; };
  });
}

at::Tensor hard_concrete_eval(const at::Tensor& log_alpha, double gamma, double zeta) {
  return map_gate("hard_concrete_eval", log_alpha, [&](auto zero) {
    using T = decltype(zero);
    const HardConcreteParams<T> p = hc_params<T>(1.0, gamma, zeta);
    return [=](int64_t, T la) SK_LAMBDA_INLINE { return hc_eval(la, p).z; };
  });
}

at::Tensor hard_concrete_eval_backward(const at::Tensor& grad, const at::Tensor& log_alpha, double gamma,
                                       double zeta) {
  return map_gate_grad("hard_concrete_eval_backward", grad, log_alpha, [&](auto zero) {
    using T = decltype(zero);
    const HardConcreteParams<T> p = hc_params<T>(1.0, gamma, zeta);
    return [=](int64_t, T g, T la) SK_LAMBDA_INLINE { return g * hc_eval(la, p).dz; };
  });
}

at::Tensor l0_norm(const at::Tensor& log_alpha_in, double beta, double gamma, double zeta) {
  check_inputs("l0_norm", {&log_alpha_in});
  const at::Tensor log_alpha = log_alpha_in.contiguous();
  at::Tensor out = at::empty({}, log_alpha.options());
  const int64_t n = log_alpha.numel();
  SK_DISPATCH_FLOATS(log_alpha.scalar_type(), "l0_norm", [&] {
    using P = scalar_t;
    using T = math_t<P>;
    const HardConcreteParams<T> p = hc_params<T>(beta, gamma, zeta);
    const P* lp = log_alpha.data_ptr<P>();
    const std::vector<T> total = grouped_sums<T>(1, n, [&](int64_t begin, int64_t end) {
      return lane_sum<T>(begin, end, [&](int64_t i) SK_LAMBDA_INLINE { return l0_prob(static_cast<T>(lp[i]), p); });
    }, kMathGrain);
    out.fill_(total[0]);
  });
  return out;
}

at::Tensor l0_norm_backward(const at::Tensor& grad, const at::Tensor& log_alpha, double beta, double gamma,
                            double zeta) {
  check_scalar_grad("l0_norm_backward", grad);
  const double g = grad.item<double>();
  return map_gate<true>("l0_norm_backward", log_alpha, [&](auto zero) {
    using T = decltype(zero);
    const HardConcreteParams<T> p = hc_params<T>(beta, gamma, zeta);
    const T gt = static_cast<T>(g);
    return [=](int64_t, T la) SK_LAMBDA_INLINE { return l0_prob_grad(gt, la, p); };
  });
}

at::Tensor hard_concrete_at(const at::Tensor& log_alpha, const at::Tensor& noise, double beta, double gamma,
                            double zeta) {
  const HostNoise n = host_noise("hard_concrete_at", noise);
  return hard_concrete(log_alpha, n.seed, n.offset, beta, gamma, zeta);
}

at::Tensor hard_concrete_at_backward(const at::Tensor& grad, const at::Tensor& log_alpha, const at::Tensor& noise,
                                     double beta, double gamma, double zeta) {
  const HostNoise n = host_noise("hard_concrete_at_backward", noise);
  return hard_concrete_backward(grad, log_alpha, n.seed, n.offset, beta, gamma, zeta);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsekern_C, CPU, m) {
  SK_IMPL(m, hard_concrete, hard_concrete);
  SK_IMPL(m, hard_concrete_backward, hard_concrete_backward);
  SK_IMPL(m, hard_concrete_at, hard_concrete_at);
  SK_IMPL(m, hard_concrete_at_backward, hard_concrete_at_backward);
  SK_IMPL(m, hard_concrete_eval, hard_concrete_eval);
  SK_IMPL(m, hard_concrete_eval_backward, hard_concrete_eval_backward);
  SK_IMPL(m, l0_norm, l0_norm);
  SK_IMPL(m, l0_norm_backward, l0_norm_backward);
}

}  // namespace cpu
}  // namespace sparsekern
