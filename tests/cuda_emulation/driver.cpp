// Every launcher of csrc/cuda/launch.h, run by the emulation without torch, for the sanitizer
// builds (emu_build.py) and the mutation test. Each buffer is its own heap block ending exactly where
// its data ends, so ASan sees a step past the end; `shift` puts the data one element past a
// 16-byte boundary (the scalar path). Outputs are checked against the shared scalar math run
// serially: bit for bit where elementwise, to float rounding for the per-tile sums.
//   driver [reduced]    reduced: the TSan set; exit 0 when every output matched
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/device_utils.cuh"
#include "cuda/launch.h"
#include "sparsekern/philox.h"
#include "sparsekern/sparsity_math.h"

using namespace sparsekern;
using namespace sparsekern::cuda;

namespace {

int failures = 0;
int launches = 0;
constexpr double kBeta = 2.0 / 3.0, kGamma = -0.1, kZeta = 1.1;
const HardConcreteParams<float> kParams = hc_params<float>(kBeta, kGamma, kZeta);
const HardConcreteParams<float> kEvalParams = hc_params<float>(1.0, kGamma, kZeta);

template <typename T>
struct Buffer {
  Buffer(int64_t n, int shift) : n(n) {
    if (posix_memalign(&raw, 16, (n + shift) * sizeof(T) + (n + shift == 0)) != 0) std::abort();
    data = static_cast<T*>(raw) + shift;
  }
  ~Buffer() { std::free(raw); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* raw = nullptr;
  T* data = nullptr;
  int64_t n;
};

// Values in [shift - scale, shift + scale), rounded to T; a fixed function of (key, i).
template <typename T>
void fill(Buffer<T>& b, uint64_t key, float scale, float shift) {
  for (int64_t i = 0; i < b.n; ++i) b.data[i] = from_f32<T>(shift + scale * (2.f * sk_uniform(key, i) - 1.f));
}

template <typename T>
void poison(Buffer<T>& b) {
  for (int64_t i = 0; i < b.n; ++i) b.data[i] = from_f32<T>(NAN);
}

template <typename T>
constexpr DType dtype_of() {
  return std::is_same<T, float>::value ? DType::kFloat : std::is_same<T, __half>::value ? DType::kHalf : DType::kBFloat16;
}

template <typename T>
const char* name_of() {
  return std::is_same<T, float>::value ? "f32" : std::is_same<T, __half>::value ? "f16" : "bf16";
}

void fail(const std::string& what, int64_t i, double got, double want) {
  if (++failures <= 20) std::fprintf(stderr, "MISMATCH %s at %lld: got %.9g, want %.9g\n", what.c_str(), (long long)i, got, want);
}

// got[i] must have the bits of from_f32<T>(want(i)).
template <typename T, typename F>
void expect_bits(const std::string& what, const T* got, int64_t n, F want) {
  for (int64_t i = 0; i < n; ++i) {
    const T w = from_f32<T>(want(i));
    if (std::memcmp(&got[i], &w, sizeof(T)) != 0) return fail(what, i, to_f32(got[i]), to_f32(w));
  }
}

void expect_sum(const std::string& what, int64_t i, double got, double want, double abs_sum) {
  if (!(std::fabs(got - want) <= 1e-5 * abs_sum + 1e-30)) fail(what, i, got, want);
}

void check_launch(const std::string& what) {
  ++launches;
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) fail(what + ": launch error " + cudaGetErrorString(err), 0, 0, 0);
}

struct Noise {
  uint64_t seed, offset;
  bool in_memory;  // HcCall::state: the kernels read [seed, offset] from a buffer
};

// ---------------------------------------------------------------- flat launchers
template <typename L, typename W>
void flat(int64_t n, int shift, const Noise& nz) {
  const std::string tag = std::string(name_of<L>()) + "/" + name_of<W>() + " n=" + std::to_string(n) +
                          " shift=" + std::to_string(shift) + (nz.in_memory ? " state" : "");
  Buffer<L> la(n, shift), grad_l(n, shift), out_l(n, shift);
  Buffer<W> w(n, shift), grad_w(n, shift), out_w(n, shift);
  Buffer<float> out_f(n, shift), out_f2(n, shift);
  Buffer<int64_t> state(2, 0);
  state.data[0] = static_cast<int64_t>(nz.seed);
  state.data[1] = static_cast<int64_t>(nz.offset);
  fill(la, 1, 3.f, 0.f);
  fill(grad_l, 2, 1.f, 0.f);
  fill(w, 3, 1.f, 0.f);
  fill(grad_w, 4, 1.f, 0.f);
  HcCall hc{nz.in_memory ? 0 : nz.seed, nz.in_memory ? 0 : nz.offset, kBeta, kGamma, kZeta,
            nz.in_memory ? state.data : nullptr};
  const uint64_t seed = nz.seed, offset = nz.offset;
  auto a = [&](int64_t i) { return to_f32(la.data[i]); };
  auto u = [&](int64_t i) { return sk_uniform(seed, offset + i); };

  for (bool eval : {false, true}) {
    const std::string what = (eval ? "hard_concrete_eval " : "hard_concrete ") + tag;
    poison(out_l);
    hard_concrete(dtype_of<L>(), la.data, nullptr, out_l.data, n, hc, eval, nullptr);
    check_launch(what);
    expect_bits(what, out_l.data, n, [&](int64_t i) { return eval ? hc_eval(a(i), kEvalParams).z : hc_sample(a(i), u(i), kParams).z; });
    poison(out_f);
    hard_concrete(dtype_of<L>(), la.data, grad_l.data, out_f.data, n, hc, eval, nullptr);
    check_launch(what + " backward");
    expect_bits(what + " backward", out_f.data, n, [&](int64_t i) {
      return to_f32(grad_l.data[i]) * (eval ? hc_eval(a(i), kEvalParams).dz : hc_sample(a(i), u(i), kParams).dz);
    });
  }

  const int64_t tiles = (n + l0_block_size() - 1) / l0_block_size();
  Buffer<float> partial(tiles, 0);
  poison(partial);
  l0_partial(dtype_of<L>(), la.data, partial.data, n, hc, nullptr);
  check_launch("l0_partial " + tag);
  for (int64_t t = 0; t < tiles; ++t) {
    double want = 0, abs_sum = 0;
    for (int64_t i = t * l0_block_size(); i < std::min(n, (t + 1) * l0_block_size()); ++i) {
      want += l0_prob(a(i), kParams);
      abs_sum += std::fabs(l0_prob(a(i), kParams));
    }
    expect_sum("l0_partial " + tag, t, partial.data[t], want, abs_sum);
  }
  Buffer<W> g0(1, 0);
  g0.data[0] = from_f32<W>(0.37f);
  poison(out_f);
  l0_backward(dtype_of<L>(), dtype_of<W>(), la.data, g0.data, out_f.data, n, hc, nullptr);
  check_launch("l0_backward " + tag);
  expect_bits("l0_backward " + tag, out_f.data, n, [&](int64_t i) { return l0_prob_grad(to_f32(g0.data[0]), a(i), kParams); });

  poison(out_w);
  gated_weight_full(dtype_of<W>(), dtype_of<L>(), w.data, la.data, nullptr, out_w.data, nullptr, n, hc, nullptr);
  check_launch("gated_weight_full " + tag);
  expect_bits("gated_weight_full " + tag, out_w.data, n, [&](int64_t i) { return to_f32(w.data[i]) * hc_sample(a(i), u(i), kParams).z; });
  poison(out_w);
  poison(out_f2);
  gated_weight_full(dtype_of<W>(), dtype_of<L>(), w.data, la.data, grad_w.data, out_w.data, out_f2.data, n, hc, nullptr);
  check_launch("gated_weight_full backward " + tag);
  expect_bits("gated_weight_full backward " + tag, out_w.data, n,
              [&](int64_t i) { return to_f32(grad_w.data[i]) * hc_sample(a(i), u(i), kParams).z; });
  expect_bits("gated_weight_full backward grad_la " + tag, out_f2.data, n, [&](int64_t i) {
    return to_f32(grad_w.data[i]) * to_f32(w.data[i]) * hc_sample(a(i), u(i), kParams).dz;
  });

  poison(out_f);
  uniform(out_f.data, n, seed, offset, nullptr);
  check_launch("uniform " + tag);
  expect_bits("uniform " + tag, out_f.data, n, u);
}

// ---------------------------------------------------------------- row launchers
template <typename X, typename P>
void rows(int64_t nrows, int64_t inner, int64_t channels, int shift, const Noise& nz) {
  const int64_t n = nrows * inner, col_tiles = row_col_tiles(inner);
  const std::string tag = std::string(name_of<X>()) + "/" + name_of<P>() + " rows=" + std::to_string(nrows) +
                          " inner=" + std::to_string(inner) + " channels=" + std::to_string(channels) +
                          " shift=" + std::to_string(shift) + (nz.in_memory ? " state" : "");
  Buffer<X> x(n, shift), grad(n, shift), out(n, shift);
  Buffer<P> param(channels, shift);
  Buffer<float> partial(nrows * col_tiles, 0);
  Buffer<int64_t> state(2, 0);
  state.data[0] = static_cast<int64_t>(nz.seed);
  state.data[1] = static_cast<int64_t>(nz.offset);
  fill(x, 5, 1.f, 0.f);
  fill(grad, 6, 1.f, 0.f);
  auto xv = [&](int64_t i) { return to_f32(x.data[i]); };
  auto gv = [&](int64_t i) { return to_f32(grad.data[i]); };
  // Checks grad_x bit for bit and each row's partials summed over its tiles against finish(sum of terms).
  auto check_partials = [&](const std::string& what, auto term, auto scale) {
    for (int64_t r = 0; r < nrows; ++r) {
      double got = 0, want = 0, abs_sum = 0;
      for (int64_t c = 0; c < col_tiles; ++c) got += partial.data[r * col_tiles + c];
      for (int64_t i = r * inner; i < (r + 1) * inner; ++i) {
        want += term(r, i);
        abs_sum += std::fabs(term(r, i));
      }
      expect_sum(what + " partial", r, got, scale(r) * want, std::fabs(scale(r)) * abs_sum);
    }
  };

  if (channels == nrows) {  // soft threshold: one s per row
    fill(param, 7, 0.5f, -1.f);
    auto t = [&](int64_t r) { return str_threshold(to_f32(param.data[r])); };
    const std::string what = "soft_threshold_rows " + tag;
    poison(out);
    soft_threshold_rows(dtype_of<X>(), dtype_of<P>(), x.data, param.data, nullptr, out.data, nullptr, nrows, inner, nullptr);
    check_launch(what);
    expect_bits(what, out.data, n, [&](int64_t i) { return str_value(xv(i), t(i / inner)); });
    poison(out);
    poison(partial);
    soft_threshold_rows(dtype_of<X>(), dtype_of<P>(), x.data, param.data, grad.data, out.data, partial.data, nrows, inner,
                        nullptr);
    check_launch(what + " backward");
    expect_bits(what + " backward", out.data, n, [&](int64_t i) { return str_grad_weight(gv(i), xv(i), t(i / inner)); });
    check_partials(what, [&](int64_t r, int64_t i) { return str_grad_s_term(gv(i), xv(i), t(r)); },
                   [&](int64_t r) { return str_grad_s_scale(t(r)); });
  }

  fill(param, 8, 3.f, 0.f);
  HcCall hc{nz.in_memory ? 0 : nz.seed, nz.in_memory ? 0 : nz.offset, kBeta, kGamma, kZeta,
            nz.in_memory ? state.data : nullptr};
  auto gate = [&](int64_t r) {
    return hc_sample(to_f32(param.data[r % channels]), sk_uniform(nz.seed, nz.offset + r), kParams);
  };
  const std::string what = "gated_rows " + tag;
  poison(out);
  gated_rows(dtype_of<X>(), dtype_of<P>(), x.data, param.data, nullptr, out.data, nullptr, nrows, inner, channels, hc,
             nullptr);
  check_launch(what);
  expect_bits(what, out.data, n, [&](int64_t i) { return xv(i) * gate(i / inner).z; });
  poison(out);
  poison(partial);
  gated_rows(dtype_of<X>(), dtype_of<P>(), x.data, param.data, grad.data, out.data, partial.data, nrows, inner, channels,
             hc, nullptr);
  check_launch(what + " backward");
  expect_bits(what + " backward", out.data, n, [&](int64_t i) { return gv(i) * gate(i / inner).z; });
  check_partials(what, [&](int64_t, int64_t i) { return gv(i) * xv(i); }, [&](int64_t r) { return gate(r).dz; });
}

template <typename A, typename B>
void all_shapes(bool reduced) {
  const std::vector<int64_t> flat_sizes =
      reduced ? std::vector<int64_t>{2049, 40001} : std::vector<int64_t>{1, 7, 8, 9, 2047, 2048, 2049, 40001};
  // (rows, inner, channels): tails, one thread per row, rows of 2 and 8 warps with several
  // column tiles, several row tiles, channels < rows (gated_activation's layout).
  const std::vector<std::array<int64_t, 3>> row_shapes =
      reduced ? std::vector<std::array<int64_t, 3>>{{3, 300, 3}, {2, 5000, 2}, {12, 9, 4}}
              : std::vector<std::array<int64_t, 3>>{{1, 1, 1},     {7, 13, 7}, {3, 300, 3},  {2, 5000, 2},
                                                    {700, 3, 700}, {12, 9, 4}, {64, 33, 64}, {600, 1, 8}};
  const Noise noises[] = {{0x8000000000000005ull, 0xfffffffffffff448ull, false}, {12345, 7, true}};
  for (int shift : {0, 1}) {
    if (reduced && shift) continue;
    for (int64_t n : flat_sizes) flat<A, B>(n, shift, noises[n % 2]);
    for (const auto& s : row_shapes) rows<A, B>(s[0], s[1], s[2], shift, noises[(s[0] + s[1]) % 2]);
  }
}

}  // namespace

int main(int argc, char** argv) {
  // reduced: one dtype pair, a few shapes, aligned only (the TSan run: races do not depend on the dtype).
  const bool reduced = argc > 1 && std::string(argv[1]) == "reduced";
  all_shapes<float, float>(reduced);
  if (!reduced) {
    all_shapes<__half, __half>(false);
    all_shapes<__nv_bfloat16, __nv_bfloat16>(false);
    all_shapes<float, __nv_bfloat16>(false);  // (data, parameter) pairs of two dtypes
    all_shapes<__half, float>(false);
  }
  std::printf("cuda emulation driver: %d launches, %d mismatches\n", launches, failures);
  return failures == 0 ? 0 : 1;
}
