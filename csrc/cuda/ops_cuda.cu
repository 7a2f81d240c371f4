// CUDA implementations of the sparsekern_C ops (schemas in csrc/ops.cpp): the torch
// side only. Each op checks its arguments (csrc/op_checks.h, shared with the CPU binding)
// and dtypes, allocates outputs, launches one kernel from csrc/cuda/*_kernels.cu on the
// current stream and, for group gradients, sums the kernel's fixed-shape partial buffer
// (deterministic: no atomics anywhere).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "launch.h"
#include "../op_signatures.h"
#include "../noise_state.h"
#include "../op_checks.h"

namespace sparsekern {
namespace cuda {
namespace {

using at::Tensor;

DType dtype_of(const Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "sparsekern cuda kernels: ", name, " must be a CUDA tensor, got ", t.device());
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat;
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, "sparsekern cuda kernels: ", name, " must be float32, float16 or bfloat16, got ",
                       t.scalar_type());
  }
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

HcCall hc_call(int64_t seed, int64_t offset, double beta, double gamma, double zeta) {
  return {static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), beta, gamma, zeta};
}

// An `_at` op's call: the kernel reads (seed, offset) from `noise` (int64 [seed, offset]) on the device.
HcCall hc_call_at(const char* op, const Tensor& noise, const Tensor& data, double beta, double gamma, double zeta) {
  TORCH_CHECK(noise.device() == data.device(), op, ": noise must be on ", data.device(), " like the other inputs, got ",
              noise.device());
  check_noise_state(op, "noise", noise);
  TORCH_CHECK(noise.is_contiguous(), op, ": noise must be contiguous (the kernels read it in device memory)");
  HcCall hc = hc_call(0, 0, beta, gamma, zeta);
  hc.state = noise.data_ptr<int64_t>();
  return hc;
}

// The upstream gradient in the dtype of the output it belongs to, contiguous.
Tensor grad_like(const Tensor& grad, const Tensor& like) { return grad.to(like.scalar_type()).contiguous(); }

Tensor f32_empty(const Tensor& like) { return at::empty(like.sizes(), like.options().dtype(at::kFloat)); }

Tensor row_partial(const Tensor& x, int64_t rows, int64_t inner) {
  return at::empty({rows, inner > 0 ? row_col_tiles(inner) : 0}, x.options().dtype(at::kFloat));
}

int64_t groups(const Tensor& x, const Tensor& param) { return param.numel() == 1 ? 1 : x.size(0); }

int64_t inner_of(const Tensor& x, int64_t rows) { return rows > 0 ? x.numel() / rows : 0; }

// ---------------------------------------------------------------- soft threshold
Tensor soft_threshold(const Tensor& weight_in, const Tensor& s_in) {
  check_one_device("soft_threshold", {&weight_in, &s_in});
  check_soft_threshold("soft_threshold", weight_in, s_in);
  const c10::cuda::CUDAGuard guard(weight_in.device());
  const Tensor weight = weight_in.contiguous(), s = s_in.contiguous();
  Tensor out = at::empty(weight.sizes(), weight.options());
  const int64_t rows = groups(weight, s);
  soft_threshold_rows(dtype_of(weight, "weight"), dtype_of(s, "s"), weight.data_ptr(), s.data_ptr(), nullptr,
                      out.data_ptr(), nullptr, rows, inner_of(weight, rows), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<Tensor, Tensor> soft_threshold_backward(const Tensor& grad_in, const Tensor& weight_in,
                                                   const Tensor& s_in) {
  check_one_device("soft_threshold_backward", {&grad_in, &weight_in, &s_in});
  check_soft_threshold("soft_threshold_backward", weight_in, s_in);
  check_grad_shape("soft_threshold_backward", grad_in, weight_in, "weight");
  const c10::cuda::CUDAGuard guard(weight_in.device());
  const Tensor weight = weight_in.contiguous(), s = s_in.contiguous(), grad = grad_like(grad_in, weight);
  Tensor grad_w = at::empty(weight.sizes(), weight.options());
  const int64_t rows = groups(weight, s), inner = inner_of(weight, rows);
  Tensor partial = row_partial(weight, rows, inner);
  soft_threshold_rows(dtype_of(weight, "weight"), dtype_of(s, "s"), weight.data_ptr(), s.data_ptr(),
                      grad.data_ptr(), grad_w.data_ptr(), partial.data_ptr<float>(), rows, inner, stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_w, partial.sum(1).reshape(s.sizes())};
}

// ---------------------------------------------------------------- hard-concrete gates
Tensor gates(const char* op, const Tensor* grad_in, const Tensor& la_in, const HcCall& hc, bool eval_gate) {
  if (grad_in) {
    check_one_device(op, {grad_in, &la_in});
    check_grad_shape(op, *grad_in, la_in, "log_alpha");
  }
  const c10::cuda::CUDAGuard guard(la_in.device());
  const Tensor la = la_in.contiguous();
  const Tensor grad = grad_in ? grad_like(*grad_in, la) : Tensor();
  Tensor out = grad_in ? f32_empty(la) : at::empty(la.sizes(), la.options());
  hard_concrete(dtype_of(la, "log_alpha"), la.data_ptr(), grad_in ? grad.data_ptr() : nullptr, out.data_ptr(),
                la.numel(), hc, eval_gate, stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

Tensor hard_concrete_fwd(const Tensor& la, int64_t seed, int64_t offset, double beta, double gamma, double zeta) {
  return gates("hard_concrete", nullptr, la, hc_call(seed, offset, beta, gamma, zeta), false);
}

Tensor hard_concrete_bwd(const Tensor& grad, const Tensor& la, int64_t seed, int64_t offset, double beta,
                         double gamma, double zeta) {
  return gates("hard_concrete_backward", &grad, la, hc_call(seed, offset, beta, gamma, zeta), false);
}

Tensor hard_concrete_eval_fwd(const Tensor& la, double gamma, double zeta) {
  return gates("hard_concrete_eval", nullptr, la, hc_call(0, 0, 1.0, gamma, zeta), true);
}

Tensor hard_concrete_eval_bwd(const Tensor& grad, const Tensor& la, double gamma, double zeta) {
  return gates("hard_concrete_eval_backward", &grad, la, hc_call(0, 0, 1.0, gamma, zeta), true);
}

// ---------------------------------------------------------------- expected L0
Tensor l0_norm_fwd(const Tensor& la_in, double beta, double gamma, double zeta) {
  const c10::cuda::CUDAGuard guard(la_in.device());
  const Tensor la = la_in.contiguous();
  const int64_t n = la.numel();
  Tensor partial = at::empty({(n + l0_block_size() - 1) / l0_block_size()}, la.options().dtype(at::kFloat));
  l0_partial(dtype_of(la, "log_alpha"), la.data_ptr(), partial.data_ptr<float>(), n,
             hc_call(0, 0, beta, gamma, zeta), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return partial.sum().to(la.scalar_type());
}

Tensor l0_norm_bwd(const Tensor& grad_in, const Tensor& la_in, double beta, double gamma, double zeta) {
  check_one_device("l0_norm_backward", {&grad_in, &la_in});
  check_scalar_grad("l0_norm_backward", grad_in);
  const c10::cuda::CUDAGuard guard(la_in.device());
  const Tensor la = la_in.contiguous(), grad = grad_in.contiguous();
  Tensor out = f32_empty(la);
  l0_backward(dtype_of(la, "log_alpha"), dtype_of(grad, "grad"), la.data_ptr(), grad.data_ptr(),
              out.data_ptr<float>(), la.numel(), hc_call(0, 0, beta, gamma, zeta), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ---------------------------------------------------------------- gated weight / activation
// One call for forward (grad_in == nullptr) and backward: (out or grad_w, grad_la or undefined).
std::tuple<Tensor, Tensor> gated_weight_impl(const char* op, const Tensor* grad_in, const Tensor& w_in,
                                             const Tensor& la_in, const HcCall& hc) {
  check_one_device(op, {&w_in, &la_in});
  check_gated_weight(op, w_in, la_in);
  if (grad_in) {
    check_one_device(op, {grad_in, &w_in});
    check_grad_shape(op, *grad_in, w_in, "weight");
  }
  const c10::cuda::CUDAGuard guard(w_in.device());
  const Tensor w = w_in.contiguous(), la = la_in.contiguous();
  const Tensor grad = grad_in ? grad_like(*grad_in, w) : Tensor();
  const void* grad_ptr = grad_in ? grad.data_ptr() : nullptr;
  const DType wt = dtype_of(w, "weight"), lt = dtype_of(la, "log_alpha");
  Tensor out = at::empty(w.sizes(), w.options());
  Tensor grad_la;
  if (la.numel() == w.numel()) {
    if (grad_in) grad_la = f32_empty(la);
    gated_weight_full(wt, lt, w.data_ptr(), la.data_ptr(), grad_ptr, out.data_ptr(),
                      grad_in ? grad_la.data_ptr<float>() : nullptr, w.numel(), hc, stream());
  } else {
    const int64_t rows = la.numel(), inner = inner_of(w, rows);
    Tensor partial = grad_in ? row_partial(w, rows, inner) : Tensor();
    gated_rows(wt, lt, w.data_ptr(), la.data_ptr(), grad_ptr, out.data_ptr(),
               grad_in ? partial.data_ptr<float>() : nullptr, rows, inner, rows, hc, stream());
    if (grad_in) grad_la = partial.sum(1).reshape(la.sizes());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, grad_la};
}

Tensor gated_weight_fwd(const Tensor& w, const Tensor& la, int64_t seed, int64_t offset, double beta, double gamma,
                        double zeta) {
  return std::get<0>(gated_weight_impl("gated_weight", nullptr, w, la, hc_call(seed, offset, beta, gamma, zeta)));
}

std::tuple<Tensor, Tensor> gated_weight_bwd(const Tensor& grad, const Tensor& w, const Tensor& la, int64_t seed,
                                            int64_t offset, double beta, double gamma, double zeta) {
  return gated_weight_impl("gated_weight_backward", &grad, w, la, hc_call(seed, offset, beta, gamma, zeta));
}

std::tuple<Tensor, Tensor> gated_activation_impl(const char* op, const Tensor* grad_in, const Tensor& x_in,
                                                 const Tensor& la_in, const HcCall& hc) {
  check_one_device(op, {&x_in, &la_in});
  check_gated_activation(op, x_in, la_in);
  if (grad_in) {
    check_one_device(op, {grad_in, &x_in});
    check_grad_shape(op, *grad_in, x_in, "x");
  }
  const c10::cuda::CUDAGuard guard(x_in.device());
  // Channels-last x ([B, spatial..., C] in memory) is read and written in place: no NCHW copies.
  const bool cl = x_in.dim() >= 3 && !x_in.is_contiguous() && x_in.movedim(1, -1).is_contiguous();
  const Tensor x = cl ? x_in : x_in.contiguous(), la = la_in.contiguous();
  Tensor grad;
  if (grad_in) {
    grad = grad_in->to(x.scalar_type());
    if (grad.strides() != x.strides()) grad = at::empty_like(x).copy_(grad);  // x's layout, dense
  }
  const int64_t batch = x.size(0), channels = x.size(1), rows = batch * channels, inner = inner_of(x, rows);
  Tensor out = cl ? at::empty_like(x) : at::empty(x.sizes(), x.options());
  Tensor partial = grad_in ? row_partial(x, rows, inner) : Tensor();
  gated_rows(dtype_of(x, "x"), dtype_of(la, "log_alpha"), x.data_ptr(), la.data_ptr(),
             grad_in ? grad.data_ptr() : nullptr, out.data_ptr(), grad_in ? partial.data_ptr<float>() : nullptr,
             rows, inner, channels, hc, stream(), cl);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!grad_in) return {out, Tensor()};
  return {out, partial.sum(1).reshape({batch, channels}).sum(0).reshape(la.sizes())};
}

Tensor gated_activation_fwd(const Tensor& x, const Tensor& la, int64_t seed, int64_t offset, double beta,
                            double gamma, double zeta) {
  return std::get<0>(
      gated_activation_impl("gated_activation", nullptr, x, la, hc_call(seed, offset, beta, gamma, zeta)));
}

std::tuple<Tensor, Tensor> gated_activation_bwd(const Tensor& grad, const Tensor& x, const Tensor& la, int64_t seed,
                                                int64_t offset, double beta, double gamma, double zeta) {
  return gated_activation_impl("gated_activation_backward", &grad, x, la, hc_call(seed, offset, beta, gamma, zeta));
}

// ---------------------------------------------------------------- noise state in device memory
// Argument errors name the int-seeded op and noise errors the `_at` op, as on the CPU.
Tensor hard_concrete_at_fwd(const Tensor& la, const Tensor& noise, double beta, double gamma, double zeta) {
  return gates("hard_concrete", nullptr, la, hc_call_at("hard_concrete_at", noise, la, beta, gamma, zeta), false);
}

Tensor hard_concrete_at_bwd(const Tensor& grad, const Tensor& la, const Tensor& noise, double beta, double gamma,
                            double zeta) {
  return gates("hard_concrete_backward", &grad, la,
               hc_call_at("hard_concrete_at_backward", noise, la, beta, gamma, zeta), false);
}

Tensor gated_weight_at_fwd(const Tensor& w, const Tensor& la, const Tensor& noise, double beta, double gamma,
                           double zeta) {
  return std::get<0>(
      gated_weight_impl("gated_weight", nullptr, w, la, hc_call_at("gated_weight_at", noise, w, beta, gamma, zeta)));
}

std::tuple<Tensor, Tensor> gated_weight_at_bwd(const Tensor& grad, const Tensor& w, const Tensor& la,
                                               const Tensor& noise, double beta, double gamma, double zeta) {
  return gated_weight_impl("gated_weight_backward", &grad, w, la,
                           hc_call_at("gated_weight_at_backward", noise, w, beta, gamma, zeta));
}

Tensor gated_activation_at_fwd(const Tensor& x, const Tensor& la, const Tensor& noise, double beta, double gamma,
                               double zeta) {
  return std::get<0>(gated_activation_impl("gated_activation", nullptr, x, la,
                                           hc_call_at("gated_activation_at", noise, x, beta, gamma, zeta)));
}

std::tuple<Tensor, Tensor> gated_activation_at_bwd(const Tensor& grad, const Tensor& x, const Tensor& la,
                                                   const Tensor& noise, double beta, double gamma, double zeta) {
  return gated_activation_impl("gated_activation_backward", &grad, x, la,
                               hc_call_at("gated_activation_at_backward", noise, x, beta, gamma, zeta));
}

// ---------------------------------------------------------------- the random stream
void uniform_out(Tensor& out, int64_t seed, int64_t offset) {
  const c10::cuda::CUDAGuard guard(out.device());
  TORCH_CHECK(out.is_cuda() && out.scalar_type() == at::kFloat && out.is_contiguous(),
              "sparsekern uniform: out must be a contiguous float32 CUDA tensor");
  uniform(out.data_ptr<float>(), out.numel(), static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace cuda
}  // namespace sparsekern

TORCH_LIBRARY_IMPL(sparsekern_C, CUDA, m) {
  namespace k = sparsekern::cuda;
  SK_IMPL(m, soft_threshold, k::soft_threshold);
  SK_IMPL(m, soft_threshold_backward, k::soft_threshold_backward);
  SK_IMPL(m, hard_concrete, k::hard_concrete_fwd);
  SK_IMPL(m, hard_concrete_backward, k::hard_concrete_bwd);
  SK_IMPL(m, hard_concrete_eval, k::hard_concrete_eval_fwd);
  SK_IMPL(m, hard_concrete_eval_backward, k::hard_concrete_eval_bwd);
  SK_IMPL(m, l0_norm, k::l0_norm_fwd);
  SK_IMPL(m, l0_norm_backward, k::l0_norm_bwd);
  SK_IMPL(m, gated_weight, k::gated_weight_fwd);
  SK_IMPL(m, gated_weight_backward, k::gated_weight_bwd);
  SK_IMPL(m, gated_activation, k::gated_activation_fwd);
  SK_IMPL(m, gated_activation_backward, k::gated_activation_bwd);
  SK_IMPL(m, uniform, k::uniform_out);
  SK_IMPL(m, take_noise, ::sparsekern::take_noise);
  SK_IMPL(m, hard_concrete_at, k::hard_concrete_at_fwd);
  SK_IMPL(m, hard_concrete_at_backward, k::hard_concrete_at_bwd);
  SK_IMPL(m, gated_weight_at, k::gated_weight_at_fwd);
  SK_IMPL(m, gated_weight_at_backward, k::gated_weight_at_bwd);
  SK_IMPL(m, gated_activation_at, k::gated_activation_at_fwd);
  SK_IMPL(m, gated_activation_at_backward, k::gated_activation_at_bwd);
}
