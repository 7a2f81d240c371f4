// exp / log / abs used by the sparsity math. On the GPU they are CUDA's accurate
// expf/logf (never --use_fast_math). On the host, float versions are branch-free
// polynomials (Cephes-style, ~1-2 ulp) so that GCC/Clang vectorize whole loops;
// libm calls would keep every loop scalar. double always uses the libm functions.
// No torch headers.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "sparsekern/macros.h"

namespace sparsekern {
namespace host_math {

SK_FORCE_INLINE float bits_to_float(int32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

SK_FORCE_INLINE int32_t float_to_bits(float f) {
  int32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

// Round to nearest integer for |v| < 2**22 without SSE4.1 (roundps).
SK_FORCE_INLINE float round_small(float v) {
  const float magic = 12582912.0f;  // 1.5 * 2**23
  return (v + magic) - magic;
}

// exp(x) for every float: NaN -> NaN, overflow -> inf, underflow -> (sub)normal or 0.
SK_FORCE_INLINE float exp(float x) {
  const float xc = x < -104.0f ? -104.0f : (x > 88.8f ? 88.8f : x);  // NaN passes through
  const float n = round_small(xc * 1.44269504088896341f);
  float r = xc - n * 0.693359375f;  // Cody-Waite: ln2 = 0.693359375 - 2.12194440e-4
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2**n applied as two exact power-of-two factors so n in [-150, 128] never leaves normal range.
  const int32_t ni = static_cast<int32_t>(n == n ? n : 0.0f);
  const int32_t half = ni >> 1;
  const float scale_a = bits_to_float((half + 127) << 23);
  const float scale_b = bits_to_float((ni - half + 127) << 23);
  return (p * scale_a) * scale_b;
}

// log(x) for positive, normal, finite x (the callers pass clamped uniforms only).
SK_FORCE_INLINE float log_positive(float x) {
  const int32_t bits = float_to_bits(x);
  int32_t e = ((bits >> 23) & 0xff) - 126;                   // x = m * 2**e, m in [0.5, 1)
  float m = bits_to_float((bits & 0x007fffff) | 0x3f000000);
  const bool low = m < 0.707106781186547524f;
  e = low ? e - 1 : e;
  m = low ? m + m - 1.0f : m - 1.0f;
  const float fe = static_cast<float>(e);
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y = y + fe * -2.12194440e-4f;
  y = y - 0.5f * z;
  return (m + y) + fe * 0.693359375f;
}

}  // namespace host_math

SK_HD float sk_exp(float x) {
#if SK_DEVICE_PASS
  return ::expf(x);
#else
  return host_math::exp(x);
#endif
}

SK_HD double sk_exp(double x) {
#if SK_DEVICE_PASS
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

// log of a value known to be positive, normal and finite.
SK_HD float sk_log_positive(float x) {
#if SK_DEVICE_PASS
  return ::logf(x);
#else
  return host_math::log_positive(x);
#endif
}

SK_HD double sk_log_positive(double x) {
#if SK_DEVICE_PASS
  return ::log(x);
#else
  return std::log(x);
#endif
}

// |x| without a libm call (keeps NaN a NaN).
template <typename T>
SK_HD T sk_abs(T x) {
  return x < T(0) ? -x : x;
}

}  // namespace sparsekern
