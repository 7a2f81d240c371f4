// Per-element math of SPEC sections 1-2 (STR and hard-concrete gates), written once
// for the CPU and CUDA kernels. T is float (for fp32/fp16/bf16 data) or double.
// The operation order follows sparsekern/backends/reference.py so results agree to rounding;
// NaN inputs give NaN outputs like the reference. No torch headers.
#pragma once
#include <cstdint>

#include "sparsekern/elementary.h"
#include "sparsekern/macros.h"

namespace sparsekern {

constexpr double kHardConcreteEps = 1e-6;

// 1 / (1 + exp(-x)): exp overflow gives exactly 0, never inf/inf; NaN stays NaN.
template <typename T>
SK_HD T sk_sigmoid(T x) {
  return T(1) / (T(1) + sk_exp(-x));
}

// torch.sign: +-1, else 0 (torch.sign(NaN) is 0 too; NaN still reaches str_value's output).
template <typename T>
SK_HD T sk_sign(T x) {
  return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
}

// clamp(x, 0, 1) that keeps NaN (like torch.clamp).
template <typename T>
SK_HD T sk_clamp01(T x) {
  return x < T(0) ? T(0) : (x > T(1) ? T(1) : x);
}

// ---------------------------------------------------------------- STR (SPEC 1)
// t = str_threshold(s) = sigmoid(s), computed once per group.
template <typename T>
SK_HD T str_threshold(T s) {
  return sk_sigmoid(s);
}

// w_hat = sign(w) * max(|w| - t, 0)
template <typename T>
SK_HD T str_value(T w, T t) {
  const T mag = sk_abs(w) - t;
  return sk_sign(w) * (mag < T(0) ? T(0) : mag);
}

// m = 1[|w| > t]
template <typename T>
SK_HD bool str_mask(T w, T t) {
  return sk_abs(w) > t;
}

// dL/dw = g * m
template <typename T>
SK_HD T str_grad_weight(T g, T w, T t) {
  return str_mask(w, t) ? g : T(0);
}

// One term of sum_group(g * m * sign(w)).
template <typename T>
SK_HD T str_grad_s_term(T g, T w, T t) {
  return (str_mask(w, t) ? g : T(0)) * sk_sign(w);
}

// dL/ds = str_grad_s_scale(t) * sum_group(terms), with t = sigmoid(s).
template <typename T>
SK_HD T str_grad_s_scale(T t) {
  return -t * (T(1) - t);
}

// ---------------------------------------------------------------- hard concrete (SPEC 2)
// Constants in the math type; stretch = zeta - gamma and l0_shift = beta * log(-gamma / zeta)
// are formed in double by the caller (hc_params) before rounding, as the reference does.
template <typename T>
struct HardConcreteParams {
  T beta;
  T gamma;
  T stretch;
  T l0_shift;
};

template <typename T>
inline HardConcreteParams<T> hc_params(double beta, double gamma, double zeta) {
  return {T(beta), T(gamma), T(zeta - gamma), T(beta * std::log(-gamma / zeta))};
}

// A gate value and its derivative with respect to log_alpha.
template <typename T>
struct Gate {
  T z;
  T dz;
};

// Training sample from the raw uniform u of SPEC 4:
//   u = clamp(u, eps, 1 - eps); s = sigmoid((log u - log(1 - u) + log_alpha) / beta)
//   s_bar = s * (zeta - gamma) + gamma; z = clamp(s_bar, 0, 1)
//   dz = 1[0 < s_bar < 1] * (zeta - gamma) * s * (1 - s) / beta
template <typename T>
SK_HD Gate<T> hc_sample(T log_alpha, float u_raw, const HardConcreteParams<T>& p) {
  const T lo = T(kHardConcreteEps);
  const T hi = T(1.0 - kHardConcreteEps);
  T u = T(u_raw);
  u = u < lo ? lo : (u > hi ? hi : u);
  const T s = sk_sigmoid((sk_log_positive(u) - sk_log_positive(T(1) - u) + log_alpha) / p.beta);
  const T s_bar = s * p.stretch + p.gamma;
  const bool inside = s_bar > T(0) && s_bar < T(1);
  return {sk_clamp01(s_bar), inside ? p.stretch * s * (T(1) - s) / p.beta : T(0)};
}

// Deterministic (eval) gate clamp(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1) and its derivative.
template <typename T>
SK_HD Gate<T> hc_eval(T log_alpha, const HardConcreteParams<T>& p) {
  const T sig = sk_sigmoid(log_alpha);
  const T s_bar = sig * p.stretch + p.gamma;
  const bool inside = s_bar > T(0) && s_bar < T(1);
  return {sk_clamp01(s_bar), inside ? p.stretch * sig * (T(1) - sig) : T(0)};
}

// P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta)).
template <typename T>
SK_HD T l0_prob(T log_alpha, const HardConcreteParams<T>& p) {
  return sk_sigmoid(log_alpha - p.l0_shift);
}

// grad * dP/dlog_alpha = grad * P * (1 - P)
template <typename T>
SK_HD T l0_prob_grad(T grad, T log_alpha, const HardConcreteParams<T>& p) {
  const T prob = l0_prob(log_alpha, p);
  return grad * prob * (T(1) - prob);
}

}  // namespace sparsekern
