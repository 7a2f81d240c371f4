// Argument checks shared by the CPU and CUDA bindings, so both reject the same calls with the
// same one-line message (the Python layer checks first; these guard direct torch.ops calls,
// where a wrong count or shape would otherwise read past a buffer). Device types and dtypes
// are each binding's own checks.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>

namespace sparsekern {

inline void check_one_device(const char* op, std::initializer_list<const at::Tensor*> tensors) {
  const at::Tensor* first = *tensors.begin();
  for (const at::Tensor* t : tensors) {
    TORCH_CHECK(t->device() == first->device(), op, ": expected all tensors on one device, got ", first->device(),
                " and ", t->device());
  }
}

// grad has the shape of the output it is the gradient of (`what`: that input's name).
inline void check_grad_shape(const char* op, const at::Tensor& grad, const at::Tensor& like, const char* what) {
  TORCH_CHECK(grad.sizes() == like.sizes(), op, ": grad and ", what, " shapes differ");
}

inline void check_scalar_grad(const char* op, const at::Tensor& grad) {
  TORCH_CHECK(grad.numel() == 1, op, ": grad must have one element, got ", grad.sizes());
}

inline void check_soft_threshold(const char* op, const at::Tensor& weight, const at::Tensor& s) {
  const int64_t groups = s.numel();
  TORCH_CHECK(groups == 1 || (weight.dim() > 0 && groups == weight.size(0)), op,
              ": s must have 1 or weight.shape[0] elements, got ", s.sizes());
}

inline void check_gated_weight(const char* op, const at::Tensor& weight, const at::Tensor& log_alpha) {
  const int64_t gates = log_alpha.numel();
  TORCH_CHECK(gates == weight.numel() || gates == 1 || (weight.dim() > 0 && gates == weight.size(0)), op,
              ": log_alpha must have weight.numel(), weight.shape[0] or 1 elements, got ", log_alpha.sizes());
}

inline void check_gated_activation(const char* op, const at::Tensor& x, const at::Tensor& log_alpha) {
  TORCH_CHECK(x.dim() >= 2, op, ": x must have shape [B, C, ...], got ", x.sizes());
  TORCH_CHECK(log_alpha.numel() == x.size(1), op, ": log_alpha must have x.shape[1] elements, got ",
              log_alpha.sizes());
}

}  // namespace sparsekern
