// The random-number contract of SPEC section 4: Philox4x32-10 on a 64-bit counter,
// first output word mapped to a float32 uniform exactly like Triton's tl.rand.
// Branch-free so CPU loops over it vectorize. No torch headers.
#pragma once
#include <cstdint>

#include "sparsekern/macros.h"

namespace sparsekern {

constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;
constexpr float kUniformScale = 4.6566127342e-10f;

// r0 of Philox4x32-10 with counter words (lo(counter), hi(counter), 0, 0) and key (lo(seed), hi(seed)).
SK_HD uint32_t philox_r0(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter);
  uint32_t c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0u, c3 = 0u;
  uint32_t k0 = static_cast<uint32_t>(seed);
  uint32_t k1 = static_cast<uint32_t>(seed >> 32);
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const uint64_t pa = static_cast<uint64_t>(kPhiloxRoundA) * c0;
    const uint64_t pb = static_cast<uint64_t>(kPhiloxRoundB) * c2;
    const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(pb);
    c3 = static_cast<uint32_t>(pa);
    c0 = n0;
    c2 = n2;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return c0;
}

// u = float32(x) * 4.6566127342e-10 with x = int32(r0), x = ~x if negative (SPEC 4).
SK_HD float uniform_from_bits(uint32_t r0) {
  const int32_t x = static_cast<int32_t>(r0);
  const int32_t folded = x ^ (x >> 31);  // == ~x for x < 0, x otherwise
  return static_cast<float>(folded) * kUniformScale;
}

// The SPEC's u for flat element i of a call: counter = offset + i (wrapping uint64).
SK_HD float sk_uniform(uint64_t seed, uint64_t counter) {
  return uniform_from_bits(philox_r0(seed, counter));
}

}  // namespace sparsekern
