// Autograd for the differentiable sparsekern_C ops, registered in C++ so that one dispatcher
// call does the forward and records the backward node: no Python between the caller and the
// kernel (the Python custom-op path costs ~12 us per call around a ~2 us kernel on a 1K tensor).
//
// An op `<name>` is differentiable when op_signatures.h also lists `<name>_backward`, whose
// schema is (grad, the op's arguments) -> one grad per leading tensor; tensors past those (the
// int64 noise state of the `_at` ops) get none. One boxed kernel serves them all: it runs the
// forward below autograd, saves the inputs (masks and noise are recomputed from them, as in
// the Python path) and the backward calls `<name>_backward`. The last differentiable tensor is
// the parameter (s, log_alpha): its grad comes back in its own dtype.
// The Python layer calls these ops directly in eager mode (sparsekern/ops/fast_path.py).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <unordered_map>
#include <vector>

#include "op_signatures.h"

namespace sparsekern {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr const char* kNamespace = "sparsekern_C::";
constexpr const char* kBackwardSuffix = "_backward";

#define SK_OP_NAME(name, schema, ret, params) #name,
const std::vector<std::string> kOpNames = {SPARSEKERN_C_OPS(SK_OP_NAME)};
#undef SK_OP_NAME

bool listed(const std::string& name) {
  for (const std::string& n : kOpNames) {
    if (n == name) return true;
  }
  return false;
}

bool has_backward(const std::string& name) { return listed(name + kBackwardSuffix); }

c10::OperatorHandle find_op(const std::string& name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow((kNamespace + name).c_str(), "");
}

// `<name>_backward` must take (grad, <name>'s arguments) and return a gradient for each of the
// leading tensor arguments.
void check_convention(const c10::FunctionSchema& fwd, const c10::FunctionSchema& bwd) {
  const auto& args = fwd.arguments();
  const auto tensors = std::count_if(args.begin(), args.end(), [](const c10::Argument& a) {
    return a.type()->kind() == c10::TypeKind::TensorType;
  });
  const auto grads = static_cast<int64_t>(bwd.returns().size());
  TORCH_CHECK(bwd.arguments().size() == args.size() + 1 && grads >= 1 && grads <= tensors,
              "sparsekern: ", bwd.name(), " must take (grad, the arguments of ", fwd.name(),
              ") and return a gradient for each leading tensor argument (csrc/autograd.cpp)");
}

// Looked up on first use (not during static init, where the schemas may not be defined yet);
// C++ guarantees the one-time, thread-safe initialization of a function-local static.
const c10::OperatorHandle& backward_op(const std::string& qualified_forward_name) {
  static const auto table = [] {
    std::unordered_map<std::string, c10::OperatorHandle> t;
    for (const std::string& n : kOpNames) {
      if (has_backward(n)) {
        const c10::OperatorHandle bwd = find_op(n + kBackwardSuffix);
        check_convention(find_op(n).schema(), bwd.schema());
        t.emplace(kNamespace + n, bwd);
      }
    }
    return t;
  }();
  return table.at(qualified_forward_name);
}

struct Differentiable : public torch::autograd::Function<Differentiable> {
  // `tensors` are the op's leading Tensor arguments (tracked by autograd), `scalars` the rest.
  static at::Tensor forward(AutogradContext* ctx, at::TensorList tensors, const c10::OperatorHandle& op,
                            c10::DispatchKeySet keys, const std::vector<c10::IValue>& scalars) {
    torch::jit::Stack stack(tensors.begin(), tensors.end());
    stack.insert(stack.end(), scalars.begin(), scalars.end());
    op.redispatchBoxed(keys & c10::after_autograd_keyset, &stack);
    ctx->save_for_backward(tensors.vec());
    ctx->saved_data["op"] = op.schema().name();
    ctx->saved_data["scalars"] = c10::ivalue::Tuple::create(scalars);
    return stack.back().toTensor();
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const auto scalars = ctx->saved_data["scalars"].toTuple();
    torch::jit::Stack stack{grads[0]};
    stack.insert(stack.end(), saved.begin(), saved.end());
    stack.insert(stack.end(), scalars->elements().begin(), scalars->elements().end());
    backward_op(ctx->saved_data["op"].toStringRef()).callBoxed(&stack);
    variable_list out;
    for (const c10::IValue& v : stack) out.push_back(v.toTensor());
    out.back() = out.back().to(saved[out.size() - 1].scalar_type());
    out.resize(saved.size() + 3);  // none for the noise state, op, keys, scalars
    return out;
  }
};

// The Autograd kernel of every differentiable op: split the boxed arguments and apply.
void autograd_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const auto args = torch::jit::last(*stack, op.schema().arguments().size());
  const bool record = torch::autograd::GradMode::is_enabled() &&
                      std::any_of(args.begin(), args.end(), [](const c10::IValue& v) {
                        return v.isTensor() && v.toTensor().requires_grad();
                      });
  if (!record) {  // the common no-grad call: straight to the kernel
    op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
    return;
  }
  std::vector<at::Tensor> tensors;
  std::vector<c10::IValue> scalars;
  for (const c10::IValue& v : args) {
    if (v.isTensor()) {
      tensors.push_back(v.toTensor());
    } else {
      scalars.push_back(v);
    }
  }
  torch::jit::drop(*stack, args.size());
  stack->emplace_back(Differentiable::apply(at::TensorList(tensors), op, keys, scalars));
}

TORCH_LIBRARY_IMPL(sparsekern_C, Autograd, m) {
  for (const std::string& n : kOpNames) {
    if (has_backward(n)) {
      m.impl(n.c_str(), torch::CppFunction::makeFromBoxedFunction<&autograd_kernel>());
      // No double backward: an error when a second-order gradient reaches it, as with the
      // Python custom ops (the default fallback would only warn and drop the gradient).
      m.impl((n + kBackwardSuffix).c_str(), torch::autograd::autogradNotImplementedFallback());
    }
  }
}

}  // namespace
}  // namespace sparsekern
