// The SPEC 4 Philox stream for a block of consecutive counters, several lanes at once.
// philox_r0 (sparsekern/philox.h) stays the one definition: the vector paths below run
// its integer operations lane by lane (32x32->64 products split into high and low words,
// xors, key additions, all mod 2**32), so every lane equals philox_r0 bit for bit
// (tests/test_rng.py checks every lane and tail position). GCC turns the scalar loop into
// vpmullq plus permutes; this layout needs one vpmuludq per product (uniform: 3.0 -> 1.5 ns
// per number on one Zen 4 thread).
// CPU only; no torch headers.
#pragma once
#include <algorithm>
#include <cstdint>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "sparsekern/macros.h"
#include "sparsekern/philox.h"

namespace sparsekern {
namespace cpu {

// Counters per block; a multiple of every vector width (16 lanes of AVX-512, 8 of AVX2, 4 of SSE2).
constexpr int64_t kRandomBlock = 256;

// Vector layout: each 64-bit lane holds one counter, each Philox word in the low half of
// its lane. One vpmuludq then gives the whole 32x32->64 product (high word = product >> 32,
// low word = the product itself). The upper halves of the state become garbage, but they
// only meet xors and vpmuludq (which reads low halves), so every low half equals philox_r0.
// One vector width's operations on 64-bit lanes (Ops::V); philox_r0_lanes runs the rounds.
#if defined(__AVX512F__)
struct Lanes8 {
  // The all-lanes maskz_ forms equal the plain intrinsics; GCC 12's plain ones warn
  // -Wmaybe-uninitialized about their internal undefined pass-through operand.
  static constexpr __mmask8 kAll = 0xFF;
  using V = __m512i;
  static V set1(uint64_t v) { return _mm512_set1_epi64(static_cast<long long>(v)); }
  static V iota() { return _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7); }
  static V zero() { return _mm512_setzero_si512(); }
  static V add(V a, V b) { return _mm512_add_epi64(a, b); }
  static V high(V a) { return _mm512_maskz_srli_epi64(kAll, a, 32); }
  static V mul(V a, V b) { return _mm512_maskz_mul_epu32(kAll, a, b); }
  static V xor3(V a, V b, V c) { return _mm512_ternarylogic_epi64(a, b, c, 0x96); }  // 0x96: a ^ b ^ c
};
#elif defined(__AVX2__)
struct Lanes4 {
  using V = __m256i;
  static V set1(uint64_t v) { return _mm256_set1_epi64x(static_cast<long long>(v)); }
  static V iota() { return _mm256_setr_epi64x(0, 1, 2, 3); }
  static V zero() { return _mm256_setzero_si256(); }
  static V add(V a, V b) { return _mm256_add_epi64(a, b); }
  static V high(V a) { return _mm256_srli_epi64(a, 32); }
  static V mul(V a, V b) { return _mm256_mul_epu32(a, b); }
  static V xor3(V a, V b, V c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
};
#elif defined(__SSE2__)
struct Lanes2 {  // every x86-64 CPU (the portable build)
  using V = __m128i;
  static V set1(uint64_t v) { return _mm_set1_epi64x(static_cast<long long>(v)); }
  static V iota() { return _mm_set_epi64x(1, 0); }
  static V zero() { return _mm_setzero_si128(); }
  static V add(V a, V b) { return _mm_add_epi64(a, b); }
  static V high(V a) { return _mm_srli_epi64(a, 32); }
  static V mul(V a, V b) { return _mm_mul_epu32(a, b); }
  static V xor3(V a, V b, V c) { return _mm_xor_si128(_mm_xor_si128(a, b), c); }
};
#endif

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__SSE2__)
// philox_r0(seed, counter + lane) in the low halves of the 64-bit lanes (counters wrap mod 2**64).
template <typename Ops>
SK_FORCE_INLINE typename Ops::V philox_r0_lanes(uint64_t seed, uint64_t counter) {
  using V = typename Ops::V;
  const V ctr = Ops::add(Ops::set1(counter), Ops::iota());
  V c0 = ctr, c1 = Ops::high(ctr), c2 = Ops::zero(), c3 = Ops::zero();
  const V ma = Ops::set1(kPhiloxRoundA), mb = Ops::set1(kPhiloxRoundB);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const V pa = Ops::mul(c0, ma);
    const V pb = Ops::mul(c2, mb);
    const V n0 = Ops::xor3(Ops::high(pb), c1, Ops::set1(k0));
    const V n2 = Ops::xor3(Ops::high(pa), c3, Ops::set1(k1));
    c1 = pb;
    c3 = pa;
    c0 = n0;
    c2 = n2;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return c0;
}
#endif

// philox_r0(seed, counter + lane) for one register of 32-bit lanes (two lane calls' low words, in order).
#if defined(__AVX512F__)
SK_FORCE_INLINE __m512i philox_r0_x16(uint64_t seed, uint64_t counter) {
  const __m512i even_words = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  return _mm512_permutex2var_epi32(philox_r0_lanes<Lanes8>(seed, counter), even_words,
                                   philox_r0_lanes<Lanes8>(seed, counter + 8u));
}
#elif defined(__AVX2__)
SK_FORCE_INLINE __m256i philox_r0_x8(uint64_t seed, uint64_t counter) {
  const __m256 lo = _mm256_castsi256_ps(philox_r0_lanes<Lanes4>(seed, counter));
  const __m256 hi = _mm256_castsi256_ps(philox_r0_lanes<Lanes4>(seed, counter + 4u));
  // Even words of both (per 128-bit half: lo0 lo1 hi0 hi1 | lo2 lo3 hi2 hi3), then the 64-bit pieces in order.
  const __m256i mixed = _mm256_castps_si256(_mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)));
  return _mm256_permute4x64_epi64(mixed, _MM_SHUFFLE(3, 1, 2, 0));
}
#elif defined(__SSE2__)
SK_FORCE_INLINE __m128i philox_r0_x4(uint64_t seed, uint64_t counter) {
  const __m128 lo = _mm_castsi128_ps(philox_r0_lanes<Lanes2>(seed, counter));
  const __m128 hi = _mm_castsi128_ps(philox_r0_lanes<Lanes2>(seed, counter + 2u));
  return _mm_castps_si128(_mm_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)));
}
#endif

// Lanes the block function computes at once (1: the scalar philox_r0).
#if defined(__AVX512F__)
constexpr int64_t kPhiloxLanes = 16;
#elif defined(__AVX2__)
constexpr int64_t kPhiloxLanes = 8;
#elif defined(__SSE2__)
constexpr int64_t kPhiloxLanes = 4;
#else
constexpr int64_t kPhiloxLanes = 1;
#endif

// bits[j] = philox_r0(seed, counter + j) for j < n <= kRandomBlock (counter wraps mod 2**64).
// Whole vectors are written: bits must hold kRandomBlock words.
SK_FORCE_INLINE void philox_r0_block(uint64_t seed, uint64_t counter, int64_t n, uint32_t* bits) {
  for (int64_t j = 0; j < n; j += kPhiloxLanes) {
#if defined(__AVX512F__)
    _mm512_storeu_si512(reinterpret_cast<void*>(bits + j), philox_r0_x16(seed, counter + static_cast<uint64_t>(j)));
#elif defined(__AVX2__)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(bits + j), philox_r0_x8(seed, counter + static_cast<uint64_t>(j)));
#elif defined(__SSE2__)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(bits + j), philox_r0_x4(seed, counter + static_cast<uint64_t>(j)));
#else
    bits[j] = philox_r0(seed, counter + static_cast<uint64_t>(j));
#endif
  }
}

// Walks [begin, end) in blocks: body(start, len, bits) with bits[j] = philox_r0(seed, base + start + j)
// for j < len. The caller's loop over j then holds only float math, which GCC vectorizes.
template <typename F>
SK_FORCE_INLINE void for_each_random_block(uint64_t seed, uint64_t base, int64_t begin, int64_t end, const F& body) {
  alignas(64) uint32_t bits[kRandomBlock];
  for (int64_t start = begin; start < end; start += kRandomBlock) {
    const int64_t len = std::min(kRandomBlock, end - start);
    philox_r0_block(seed, base + static_cast<uint64_t>(start), len, bits);
    body(start, len, static_cast<const uint32_t*>(bits));
  }
}

}  // namespace cpu
}  // namespace sparsekern
