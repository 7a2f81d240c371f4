// Every sparsekern_C op, declared once: its schema and the C++ signature of its kernels.
// ops.cpp defines the schemas from this list; the CPU and CUDA registrations go through
// SK_IMPL, which converts the kernel to the declared function type. A kernel whose
// signature drifts (say `Tensor&` where another backend has `Tensor`) then fails to
// compile, instead of aborting `import sparsekern` with "Mismatch in kernel C++ signatures".
// Seeds and offsets travel as the int64 two's complement of their uint64 value.
// An op `<name>` listed with a `<name>_backward` is differentiable: csrc/autograd.cpp registers
// its autograd, which calls `<name>_backward(grad, <name>'s arguments)` for one grad per leading
// tensor (a trailing noise-state tensor gets none).
#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>

// X(name, schema, (return type), (parameter list))
#define SPARSEKERN_C_OPS(X)                                                                                        \
  X(soft_threshold, "soft_threshold(Tensor weight, Tensor s) -> Tensor", (at::Tensor),                               \
    (const at::Tensor& weight, const at::Tensor& s))                                                               \
  X(soft_threshold_backward, "soft_threshold_backward(Tensor grad, Tensor weight, Tensor s) -> (Tensor, Tensor)",  \
    (std::tuple<at::Tensor, at::Tensor>), (const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& s)) \
  X(hard_concrete,                                                                                                 \
    "hard_concrete(Tensor log_alpha, int seed, int offset, float beta, float gamma, float zeta) -> Tensor",        \
    (at::Tensor), (const at::Tensor& log_alpha, int64_t seed, int64_t offset, double beta, double gamma, double zeta)) \
  X(hard_concrete_backward,                                                                                        \
    "hard_concrete_backward(Tensor grad, Tensor log_alpha, int seed, int offset, float beta, float gamma, "        \
    "float zeta) -> Tensor",                                                                                       \
    (at::Tensor),                                                                                                  \
    (const at::Tensor& grad, const at::Tensor& log_alpha, int64_t seed, int64_t offset, double beta, double gamma, \
     double zeta))                                                                                                 \
  X(hard_concrete_eval, "hard_concrete_eval(Tensor log_alpha, float gamma, float zeta) -> Tensor", (at::Tensor),     \
    (const at::Tensor& log_alpha, double gamma, double zeta))                                                      \
  X(hard_concrete_eval_backward,                                                                                   \
    "hard_concrete_eval_backward(Tensor grad, Tensor log_alpha, float gamma, float zeta) -> Tensor", (at::Tensor),   \
    (const at::Tensor& grad, const at::Tensor& log_alpha, double gamma, double zeta))                              \
  X(l0_norm, "l0_norm(Tensor log_alpha, float beta, float gamma, float zeta) -> Tensor", (at::Tensor),               \
    (const at::Tensor& log_alpha, double beta, double gamma, double zeta))                                         \
  X(l0_norm_backward,                                                                                              \
    "l0_norm_backward(Tensor grad, Tensor log_alpha, float beta, float gamma, float zeta) -> Tensor", (at::Tensor),  \
    (const at::Tensor& grad, const at::Tensor& log_alpha, double beta, double gamma, double zeta))                 \
  X(gated_weight,                                                                                                  \
    "gated_weight(Tensor weight, Tensor log_alpha, int seed, int offset, float beta, float gamma, float zeta) "    \
    "-> Tensor",                                                                                                   \
    (at::Tensor),                                                                                                  \
    (const at::Tensor& weight, const at::Tensor& log_alpha, int64_t seed, int64_t offset, double beta,             \
     double gamma, double zeta))                                                                                   \
  X(gated_weight_backward,                                                                                         \
    "gated_weight_backward(Tensor grad, Tensor weight, Tensor log_alpha, int seed, int offset, float beta, "       \
    "float gamma, float zeta) -> (Tensor, Tensor)",                                                                \
    (std::tuple<at::Tensor, at::Tensor>),                                                                          \
    (const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& log_alpha, int64_t seed, int64_t offset,  \
     double beta, double gamma, double zeta))                                                                      \
  X(gated_activation,                                                                                              \
    "gated_activation(Tensor x, Tensor log_alpha, int seed, int offset, float beta, float gamma, float zeta) "     \
    "-> Tensor",                                                                                                   \
    (at::Tensor),                                                                                                  \
    (const at::Tensor& x, const at::Tensor& log_alpha, int64_t seed, int64_t offset, double beta, double gamma,    \
     double zeta))                                                                                                 \
  X(gated_activation_backward,                                                                                     \
    "gated_activation_backward(Tensor grad, Tensor x, Tensor log_alpha, int seed, int offset, float beta, "        \
    "float gamma, float zeta) -> (Tensor, Tensor)",                                                                \
    (std::tuple<at::Tensor, at::Tensor>),                                                                          \
    (const at::Tensor& grad, const at::Tensor& x, const at::Tensor& log_alpha, int64_t seed, int64_t offset,       \
     double beta, double gamma, double zeta))                                                                      \
  X(uniform, "uniform(Tensor(a!) out, int seed, int offset) -> ()", (void),                                          \
    (at::Tensor & out, int64_t seed, int64_t offset))                                                              \
  X(take_noise, "take_noise(Tensor(a!) state, int numel) -> Tensor", (at::Tensor),                                \
    (at::Tensor & state, int64_t numel))                                                                           \
  SPARSEKERN_C_NOISE_STATE_OPS(X)

// The gate ops with (seed, offset) in an int64 tensor `noise` = [seed, offset] instead of ints:
// CPU kernels read it on the host, CUDA kernels in device memory (no host sync, and a captured
// CUDA graph reads the live counter at every replay). `noise` gets no gradient.
#define SPARSEKERN_C_NOISE_STATE_OPS(X)                                                                           \
  X(hard_concrete_at, "hard_concrete_at(Tensor log_alpha, Tensor noise, float beta, float gamma, float zeta) "    \
    "-> Tensor", (at::Tensor),                                                                                     \
    (const at::Tensor& log_alpha, const at::Tensor& noise, double beta, double gamma, double zeta))               \
  X(hard_concrete_at_backward,                                                                                     \
    "hard_concrete_at_backward(Tensor grad, Tensor log_alpha, Tensor noise, float beta, float gamma, "             \
    "float zeta) -> Tensor", (at::Tensor),                                                                         \
    (const at::Tensor& grad, const at::Tensor& log_alpha, const at::Tensor& noise, double beta, double gamma,     \
     double zeta))                                                                                                 \
  X(gated_weight_at,                                                                                               \
    "gated_weight_at(Tensor weight, Tensor log_alpha, Tensor noise, float beta, float gamma, float zeta) "         \
    "-> Tensor", (at::Tensor),                                                                                     \
    (const at::Tensor& weight, const at::Tensor& log_alpha, const at::Tensor& noise, double beta, double gamma,   \
     double zeta))                                                                                                 \
  X(gated_weight_at_backward,                                                                                      \
    "gated_weight_at_backward(Tensor grad, Tensor weight, Tensor log_alpha, Tensor noise, float beta, "            \
    "float gamma, float zeta) -> (Tensor, Tensor)", (std::tuple<at::Tensor, at::Tensor>),                          \
    (const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& log_alpha, const at::Tensor& noise,       \
     double beta, double gamma, double zeta))                                                                      \
  X(gated_activation_at,                                                                                           \
    "gated_activation_at(Tensor x, Tensor log_alpha, Tensor noise, float beta, float gamma, float zeta) "          \
    "-> Tensor", (at::Tensor),                                                                                     \
    (const at::Tensor& x, const at::Tensor& log_alpha, const at::Tensor& noise, double beta, double gamma,        \
     double zeta))                                                                                                 \
  X(gated_activation_at_backward,                                                                                  \
    "gated_activation_at_backward(Tensor grad, Tensor x, Tensor log_alpha, Tensor noise, float beta, "             \
    "float gamma, float zeta) -> (Tensor, Tensor)", (std::tuple<at::Tensor, at::Tensor>),                          \
    (const at::Tensor& grad, const at::Tensor& x, const at::Tensor& log_alpha, const at::Tensor& noise,            \
     double beta, double gamma, double zeta))

namespace sparsekern {
namespace signature {
// One function type per op, e.g. signature::uniform = void(at::Tensor&, int64_t, int64_t).
#define SK_STRIP_PARENS(...) __VA_ARGS__
#define SK_DECLARE_SIGNATURE(name, schema, ret, params) using name = SK_STRIP_PARENS ret params;
SPARSEKERN_C_OPS(SK_DECLARE_SIGNATURE)
#undef SK_DECLARE_SIGNATURE
}  // namespace signature
}  // namespace sparsekern

// m.impl with the kernel converted to the declared type: no conversion exists between
// different function pointer types, so a mismatch is a compile error here.
#define SK_IMPL(m, name, kernel) (m).impl(#name, static_cast<::sparsekern::signature::name*>(&(kernel)))
