// Tensors multiplied by sampled hard-concrete gates (SPEC 2) on CPU:
// gated_weight (one gate per weight, per row, or per tensor) and gated_activation
// (per-example gates over [B, C, ...], RNG index b * C + c). Backward fuses
// grad of the data with the per-gate reductions that give grad_log_alpha.
#include <torch/library.h>

#include <utility>

#include "cpu_common.h"
#include "sparsekern/philox.h"
#include "sparsekern/sparsity_math.h"
#include "../op_checks.h"
#include "../op_signatures.h"

namespace sparsekern {
namespace cpu {
namespace {

// Both operands in double when either is (fp64 is the gradcheck path); otherwise
// log_alpha in float32 (a no-op for the usual fp32 parameters), so kernels are
// instantiated per data dtype only.
// keep_layout: data stays channels-last (see channels_last()) instead of being copied to NCHW.
std::pair<at::Tensor, at::Tensor> promote(const at::Tensor& data, const at::Tensor& log_alpha,
                                          bool keep_layout = false) {
  if (data.scalar_type() == at::kDouble || log_alpha.scalar_type() == at::kDouble) {
    const at::Tensor d = data.to(at::kDouble);
    return {keep_layout ? d : d.contiguous(), as_dense(log_alpha, at::kDouble)};
  }
  return {keep_layout ? data : data.contiguous(), as_dense(log_alpha, at::kFloat)};
}

// x [B, C, spatial...] stored channels-last ([B, spatial..., C] in memory): element (b, c, s)
// sits at (b * S + s) * C + c. The gated_activation kernels index it in place (no layout copies).
bool channels_last(const at::Tensor& x) {
  return x.dim() >= 3 && !x.is_contiguous() && x.movedim(1, -1).is_contiguous();
}

// `t` in `like`'s dtype and strides (the upstream gradient of a channels-last x).
at::Tensor as_layout_of(const at::Tensor& t, const at::Tensor& like) {
  const at::Tensor c = t.to(like.scalar_type());
  if (c.strides() == like.strides()) {
    return c;
  }
  at::Tensor out = at::empty_like(like);
  out.copy_(c);
  return out;
}

// Runs body(W(), P()) for the data storage type W; log_alpha (after promote) is math_t<W>.
template <typename F>
void dispatch_pair(const at::Tensor& data, const F& body) {
  SK_DISPATCH_FLOATS(data.scalar_type(), "sparsekern_gated", [&] { body(scalar_t(), math_t<scalar_t>()); });
}

template <typename W, typename P>
using pair_math_t = std::conditional_t<std::is_same<W, double>::value || std::is_same<P, double>::value, double, float>;

// fn(k, c, u_k) for every gate k < count in parallel: c = k % channels indexes log_alpha,
// u_k is the uniform of counter offset + k. Rows of `channels` gates are cut into Philox
// blocks, so the loop over fn is contiguous float math (vectorizes).
template <typename F>
void parallel_gate_uniforms(int64_t count, int64_t channels, uint64_t seed, uint64_t offset, const F& fn) {
  parallel_elements(count, kGateGrain, [&](int64_t begin, int64_t end) {
    for_each_group_segment(begin, end, channels, [&](int64_t row, int64_t b, int64_t e) {
      const int64_t row_start = row * channels;
      for_each_random_block(seed, offset, b, e, [&](int64_t start, int64_t len, const uint32_t* bits) {
        for (int64_t j = 0; j < len; ++j) {
          fn(start + j, start + j - row_start, uniform_from_bits(bits[j]));
        }
      });
    });
  });
}

// Gates z_k (and dz_k) for k < count, gate k reading log_alpha[k % channels] and counter offset + k.
template <typename T, typename P>
std::vector<Gate<T>> sample_gates(const P* log_alpha, int64_t count, int64_t channels, uint64_t seed,
                                  uint64_t offset, const HardConcreteParams<T>& p) {
  std::vector<Gate<T>> gates(static_cast<size_t>(count));
  Gate<T>* gp = gates.data();
  parallel_gate_uniforms(count, channels, seed, offset, [&, p](int64_t k, int64_t c, float u) SK_LAMBDA_INLINE {
    gp[k] = hc_sample(static_cast<T>(log_alpha[c]), u, p);
  });
  return gates;
}

// out[i] = data[i] * z[i / group_len] for precomputed gates.
template <typename T, typename W>
void scale_groups(const W* data, W* out, int64_t n, int64_t group_len, const std::vector<Gate<T>>& gates) {
  parallel_elements(n, kMemoryGrain, [&](int64_t begin, int64_t end) {
    for_each_group_segment(begin, end, group_len, [&](int64_t group, int64_t b, int64_t e) {
      const T z = gates[group].z;
      for (int64_t i = b; i < e; ++i) {
        out[i] = static_cast<W>(static_cast<T>(data[i]) * z);
      }
    });
  });
}

// grad_data[i] = grad[i] * z[group] and the per-group sums of grad * data.
template <typename T, typename W>
std::vector<T> scale_groups_backward(const W* grad, const W* data, W* grad_data, int64_t n, int64_t group_len,
                                     const std::vector<Gate<T>>& gates) {
  const int64_t groups = static_cast<int64_t>(gates.size());
  return grouped_sums<T>(groups, groups > 0 ? n / groups : 0, [&](int64_t begin, int64_t end) {
    const T z = gates[begin / group_len].z;
    return lane_sum<T>(begin, end, [&](int64_t i) SK_LAMBDA_INLINE {
      const T g = static_cast<T>(grad[i]);
      grad_data[i] = static_cast<W>(g * z);
      return g * static_cast<T>(data[i]);
    });
  });
}

// scale_groups for channels-last data: out[(b*S + s)*C + c] = data[...] * z[b*C + c], in memory order.
template <typename T, typename W>
void scale_channels_last(const W* data, W* out, int64_t n, int64_t channels, int64_t spatial,
                         const std::vector<Gate<T>>& gates) {
  parallel_elements(n, kMemoryGrain, [&](int64_t begin, int64_t end) {
    for_each_group_segment(begin, end, channels, [&](int64_t pixel, int64_t b, int64_t e) {
      const Gate<T>* g = gates.data() + (pixel / spatial) * channels;  // this example's gates
      const int64_t row = pixel * channels;
      for (int64_t i = b; i < e; ++i) {
        out[i] = static_cast<W>(static_cast<T>(data[i]) * g[i - row].z);
      }
    });
  });
}

// scale_groups_backward for channels-last data. The sums run over the NCHW index with the
// same pieces and lanes (grouped_sums, lane_sum), only the addresses differ: the per-gate
// sums, hence grad_log_alpha, equal the contiguous kernel's bit for bit.
template <typename T, typename W>
std::vector<T> scale_channels_last_backward(const W* grad, const W* data, W* grad_data, int64_t channels,
                                            int64_t spatial, const std::vector<Gate<T>>& gates) {
  const int64_t groups = static_cast<int64_t>(gates.size());
  return grouped_sums<T>(groups, spatial, [&](int64_t begin, int64_t end) {
    const int64_t group = begin / spatial;
    const int64_t b = group / channels, c = group - b * channels;
    const int64_t base = (b * spatial + (begin - group * spatial)) * channels + c - begin * channels;
    const T z = gates[group].z;
    return lane_sum<T>(begin, end, [&](int64_t i) SK_LAMBDA_INLINE {
      const int64_t at = base + i * channels;
      const T g = static_cast<T>(grad[at]);
      grad_data[at] = static_cast<W>(g * z);
      return g * static_cast<T>(data[at]);
    });
  });
}

// The result in the caller's dtype when promote() changed it.
at::Tensor restore(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

void check_gated_weight_args(const char* op, const at::Tensor& weight, const at::Tensor& log_alpha) {
  check_inputs(op, {&weight, &log_alpha});
  check_gated_weight(op, weight, log_alpha);
}

at::Tensor gated_weight(const at::Tensor& weight_in, const at::Tensor& log_alpha_in, int64_t seed, int64_t offset,
                        double beta, double gamma, double zeta) {
  check_gated_weight_args("gated_weight", weight_in, log_alpha_in);
  const std::pair<at::Tensor, at::Tensor> promoted = promote(weight_in, log_alpha_in);
  const at::Tensor& weight = promoted.first;
  const at::Tensor& log_alpha = promoted.second;
  at::Tensor out = new_output(weight);
  const int64_t n = weight.numel();
  const int64_t gate_count = log_alpha.numel();
  const uint64_t key = as_u64(seed), base = as_u64(offset);
  dispatch_pair(weight, [&](auto w_tag, auto p_tag) {
    using W = decltype(w_tag);
    using P = decltype(p_tag);
    using T = pair_math_t<W, P>;
    const HardConcreteParams<T> p = hc_params<T>(beta, gamma, zeta);
    const W* wp = weight.data_ptr<W>();
    const P* lp = log_alpha.data_ptr<P>();
    W* op = out.data_ptr<W>();
    if (gate_count == n) {
      parallel_gate_uniforms(n, n, key, base, [&, p](int64_t i, int64_t, float u) SK_LAMBDA_INLINE {
        op[i] = static_cast<W>(static_cast<T>(wp[i]) * hc_sample(static_cast<T>(lp[i]), u, p).z);
      });
    } else {
      const auto gates = sample_gates<T>(lp, gate_count, gate_count, key, base, p);
      scale_groups(wp, op, n, n / gate_count, gates);
    }
  });
  return restore(out, weight_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> gated_weight_backward(const at::Tensor& grad_in, const at::Tensor& weight_in,
                                                         const at::Tensor& log_alpha_in, int64_t seed, int64_t offset,
                                                         double beta, double gamma, double zeta) {
  check_gated_weight_args("gated_weight_backward", weight_in, log_alpha_in);
  check_inputs("gated_weight_backward", {&grad_in});
  check_grad_shape("gated_weight_backward", grad_in, weight_in, "weight");
  const std::pair<at::Tensor, at::Tensor> promoted = promote(weight_in, log_alpha_in);
  const at::Tensor& weight = promoted.first;
  const at::Tensor& log_alpha = promoted.second;
  const at::Tensor grad = as_dense(grad_in, weight.scalar_type());
  at::Tensor grad_w = new_output(weight);
  at::Tensor grad_la = new_output(log_alpha.sizes(), log_alpha.options().dtype(math_dtype(log_alpha)));
  const int64_t n = weight.numel();
  const int64_t gate_count = log_alpha.numel();
  const uint64_t key = as_u64(seed), base = as_u64(offset);
  dispatch_pair(weight, [&](auto w_tag, auto p_tag) {
    using W = decltype(w_tag);
    using P = decltype(p_tag);
    using T = pair_math_t<W, P>;
    using G = math_t<P>;
    const HardConcreteParams<T> p = hc_params<T>(beta, gamma, zeta);
    const W* wp = weight.data_ptr<W>();
    const W* gp = grad.data_ptr<W>();
    const P* lp = log_alpha.data_ptr<P>();
    W* gwp = grad_w.data_ptr<W>();
    G* glp = grad_la.data_ptr<G>();
    if (gate_count == n) {
      parallel_gate_uniforms(n, n, key, base, [&, p](int64_t i, int64_t, float u) SK_LAMBDA_INLINE {
        const Gate<T> gate = hc_sample(static_cast<T>(lp[i]), u, p);
        const T g = static_cast<T>(gp[i]);
        gwp[i] = static_cast<W>(g * gate.z);
        glp[i] = static_cast<G>(g * static_cast<T>(wp[i]) * gate.dz);
      });
    } else {
      const auto gates = sample_gates<T>(lp, gate_count, gate_count, key, base, p);
      const std::vector<T> sums = scale_groups_backward(gp, wp, gwp, n, n / gate_count, gates);
      for (int64_t k = 0; k < gate_count; ++k) {
        glp[k] = static_cast<G>(sums[k] * gates[k].dz);
      }
    }
  });
  return {restore(grad_w, weight_in.scalar_type()), restore(grad_la, math_dtype(log_alpha_in))};
}

void check_gated_activation_args(const char* op, const at::Tensor& x, const at::Tensor& log_alpha) {
  check_inputs(op, {&x, &log_alpha});
  check_gated_activation(op, x, log_alpha);
}

at::Tensor gated_activation(const at::Tensor& x_in, const at::Tensor& log_alpha_in, int64_t seed, int64_t offset,
                            double beta, double gamma, double zeta) {
  check_gated_activation_args("gated_activation", x_in, log_alpha_in);
  const bool cl = channels_last(x_in);
  const std::pair<at::Tensor, at::Tensor> promoted = promote(x_in, log_alpha_in, cl);
  const at::Tensor& x = promoted.first;
  const at::Tensor& log_alpha = promoted.second;
  at::Tensor out = new_output(x);
  const int64_t n = x.numel();
  const int64_t channels = x.size(1);
  const int64_t gate_count = x.size(0) * channels;
  if (gate_count == 0) {
    return restore(out, x_in.scalar_type());
  }
  dispatch_pair(x, [&](auto w_tag, auto p_tag) {
    using W = decltype(w_tag);
    using P = decltype(p_tag);
    using T = pair_math_t<W, P>;
    const HardConcreteParams<T> p = hc_params<T>(beta, gamma, zeta);
    const P* lp = log_alpha.data_ptr<P>();
    const W* xp = x.data_ptr<W>();
    W* op = out.data_ptr<W>();
    if (n == gate_count) {  // a gate per element ([B, C] activations of a Linear): one fused pass
      parallel_gate_uniforms(n, channels, as_u64(seed), as_u64(offset), [&, p](int64_t k, int64_t c, float u)
                                                                             SK_LAMBDA_INLINE {
        op[k] = static_cast<W>(static_cast<T>(xp[k]) * hc_sample(static_cast<T>(lp[c]), u, p).z);
      });
      return;
    }
    const auto gates = sample_gates<T>(lp, gate_count, channels, as_u64(seed), as_u64(offset), p);
    if (cl) {
      scale_channels_last(xp, op, n, channels, n / gate_count, gates);
    } else {
      scale_groups(xp, op, n, n / gate_count, gates);
    }
  });
  return restore(out, x_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> gated_activation_backward(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                             const at::Tensor& log_alpha_in, int64_t seed,
                                                             int64_t offset, double beta, double gamma, double zeta) {
  check_gated_activation_args("gated_activation_backward", x_in, log_alpha_in);
  check_inputs("gated_activation_backward", {&grad_in});
  check_grad_shape("gated_activation_backward", grad_in, x_in, "x");
  const bool cl = channels_last(x_in);
  const std::pair<at::Tensor, at::Tensor> promoted = promote(x_in, log_alpha_in, cl);
  const at::Tensor& x = promoted.first;
  const at::Tensor& log_alpha = promoted.second;
  const at::Tensor grad = cl ? as_layout_of(grad_in, x) : as_dense(grad_in, x.scalar_type());
  at::Tensor grad_x = new_output(x);
  at::Tensor grad_la = at::zeros(log_alpha.sizes(), log_alpha.options().dtype(math_dtype(log_alpha)));
  const int64_t n = x.numel();
  const int64_t batch = x.size(0);
  const int64_t channels = x.size(1);
  const int64_t gate_count = batch * channels;
  if (gate_count > 0) {
    dispatch_pair(x, [&](auto w_tag, auto p_tag) {
      using W = decltype(w_tag);
      using P = decltype(p_tag);
      using T = pair_math_t<W, P>;
      using G = math_t<P>;
      const HardConcreteParams<T> p = hc_params<T>(beta, gamma, zeta);
      const P* lp = log_alpha.data_ptr<P>();
      const W* xp = x.data_ptr<W>();
      const W* gp = grad.data_ptr<W>();
      W* gxp = grad_x.data_ptr<W>();
      // acc[c] = sum over b = 0, 1, ... in order of grad * x * dz (per element) or of the
      // per-gate sums times dz: the same order for any thread count.
      std::vector<T> acc(static_cast<size_t>(channels), T(0));
      T* ap = acc.data();
      if (n == gate_count) {  // a gate per element: one fused pass, threads split the channels
        const uint64_t key = as_u64(seed), base = as_u64(offset);
        at::parallel_for(0, channels, std::max<int64_t>(1, kGateGrain / batch), [&](int64_t c_begin, int64_t c_end) {
          for (int64_t b = 0; b < batch; ++b) {
            const int64_t row = b * channels;
            for_each_random_block(key, base, row + c_begin, row + c_end,
                                  [&](int64_t start, int64_t len, const uint32_t* bits) SK_LAMBDA_INLINE {
              const int64_t c0 = start - row;
              for (int64_t j = 0; j < len; ++j) {
                const Gate<T> gate = hc_sample(static_cast<T>(lp[c0 + j]), uniform_from_bits(bits[j]), p);
                const T g = static_cast<T>(gp[start + j]);
                gxp[start + j] = static_cast<W>(g * gate.z);
                ap[c0 + j] += g * static_cast<T>(xp[start + j]) * gate.dz;
              }
            });
          }
        });
      } else {
        const auto gates = sample_gates<T>(lp, gate_count, channels, as_u64(seed), as_u64(offset), p);
        const std::vector<T> sums = cl ? scale_channels_last_backward(gp, xp, gxp, channels, n / gate_count, gates)
                                       : scale_groups_backward(gp, xp, gxp, n, n / gate_count, gates);
        for (int64_t b = 0; b < batch; ++b) {
          for (int64_t c = 0; c < channels; ++c) {
            ap[c] += sums[b * channels + c] * gates[b * channels + c].dz;
          }
        }
      }
      G* glp = grad_la.data_ptr<G>();
      for (int64_t c = 0; c < channels; ++c) {
        glp[c] = static_cast<G>(ap[c]);
      }
    });
  }
  return {restore(grad_x, x_in.scalar_type()), restore(grad_la, math_dtype(log_alpha_in))};
}

at::Tensor gated_weight_at(const at::Tensor& weight, const at::Tensor& log_alpha, const at::Tensor& noise,
                           double beta, double gamma, double zeta) {
  const HostNoise n = host_noise("gated_weight_at", noise);
  return gated_weight(weight, log_alpha, n.seed, n.offset, beta, gamma, zeta);
}

std::tuple<at::Tensor, at::Tensor> gated_weight_at_backward(const at::Tensor& grad, const at::Tensor& weight,
                                                            const at::Tensor& log_alpha, const at::Tensor& noise,
                                                            double beta, double gamma, double zeta) {
  const HostNoise n = host_noise("gated_weight_at_backward", noise);
  return gated_weight_backward(grad, weight, log_alpha, n.seed, n.offset, beta, gamma, zeta);
}

at::Tensor gated_activation_at(const at::Tensor& x, const at::Tensor& log_alpha, const at::Tensor& noise,
                               double beta, double gamma, double zeta) {
  const HostNoise n = host_noise("gated_activation_at", noise);
  return gated_activation(x, log_alpha, n.seed, n.offset, beta, gamma, zeta);
}

std::tuple<at::Tensor, at::Tensor> gated_activation_at_backward(const at::Tensor& grad, const at::Tensor& x,
                                                                const at::Tensor& log_alpha, const at::Tensor& noise,
                                                                double beta, double gamma, double zeta) {
  const HostNoise n = host_noise("gated_activation_at_backward", noise);
  return gated_activation_backward(grad, x, log_alpha, n.seed, n.offset, beta, gamma, zeta);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsekern_C, CPU, m) {
  SK_IMPL(m, gated_weight, gated_weight);
  SK_IMPL(m, gated_weight_backward, gated_weight_backward);
  SK_IMPL(m, gated_activation, gated_activation);
  SK_IMPL(m, gated_activation_backward, gated_activation_backward);
  SK_IMPL(m, gated_weight_at, gated_weight_at);
  SK_IMPL(m, gated_weight_at_backward, gated_weight_at_backward);
  SK_IMPL(m, gated_activation_at, gated_activation_at);
  SK_IMPL(m, gated_activation_at_backward, gated_activation_at_backward);
}

}  // namespace cpu
}  // namespace sparsekern
