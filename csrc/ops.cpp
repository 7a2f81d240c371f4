// Schemas of the compiled ops (namespace sparsekern_C). They mirror the functions of
// sparsekern/reference.py; seeds/offsets travel as int64 two's complement of the uint64.
// Kernels: csrc/cpu (CPU) and csrc/cuda (CUDA). Fake kernels: sparsekern/compiled.py.
#include <torch/library.h>

TORCH_LIBRARY(sparsekern_C, m) {
  m.set_python_module("sparsekern.compiled");  // where the fake kernels live
  m.def("soft_threshold(Tensor weight, Tensor s) -> Tensor");
  m.def("soft_threshold_backward(Tensor grad, Tensor weight, Tensor s) -> (Tensor, Tensor)");
  m.def("hard_concrete(Tensor log_alpha, int seed, int offset, float beta, float gamma, float zeta) -> Tensor");
  m.def(
      "hard_concrete_backward(Tensor grad, Tensor log_alpha, int seed, int offset, float beta, float gamma, "
      "float zeta) -> Tensor");
  m.def("hard_concrete_eval(Tensor log_alpha, float gamma, float zeta) -> Tensor");
  m.def("hard_concrete_eval_backward(Tensor grad, Tensor log_alpha, float gamma, float zeta) -> Tensor");
  m.def("l0_norm(Tensor log_alpha, float beta, float gamma, float zeta) -> Tensor");
  m.def("l0_norm_backward(Tensor grad, Tensor log_alpha, float beta, float gamma, float zeta) -> Tensor");
  m.def(
      "gated_weight(Tensor weight, Tensor log_alpha, int seed, int offset, float beta, float gamma, float zeta) "
      "-> Tensor");
  m.def(
      "gated_weight_backward(Tensor grad, Tensor weight, Tensor log_alpha, int seed, int offset, float beta, "
      "float gamma, float zeta) -> (Tensor, Tensor)");
  m.def(
      "gated_activation(Tensor x, Tensor log_alpha, int seed, int offset, float beta, float gamma, float zeta) "
      "-> Tensor");
  m.def(
      "gated_activation_backward(Tensor grad, Tensor x, Tensor log_alpha, int seed, int offset, float beta, "
      "float gamma, float zeta) -> (Tensor, Tensor)");
  m.def("uniform(Tensor(a!) out, int seed, int offset) -> ()");
}
