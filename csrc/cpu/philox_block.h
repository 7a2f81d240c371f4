// The SPEC 4 Philox stream for a block of consecutive counters, several lanes at once.
// philox_r0 (sparsekern/philox.h) stays the one definition: the vector paths below run
// its integer operations lane by lane (32x32->64 products split into high and low words,
// xors, key additions, all mod 2**32), so every lane equals philox_r0 bit for bit
// (tests/test_rng.py checks every lane and tail position). GCC turns the scalar loop into
// 64-bit-lane multiplies plus permutes, about 3x slower than vpmuludq on even/odd lanes.
// CPU only; no torch headers.
#pragma once
#include <algorithm>
#include <cstdint>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "sparsekern/macros.h"
#include "sparsekern/philox.h"

namespace sparsekern {
namespace cpu {

// Counters per block; a multiple of every vector width (16 lanes of AVX-512, 8 of AVX2).
constexpr int64_t kRandomBlock = 256;

#if defined(__AVX512F__)
// The all-lanes maskz_ forms equal the plain intrinsics; GCC 12's plain ones warn
// -Wmaybe-uninitialized about their internal undefined pass-through operand.
constexpr __mmask8 kAll8 = 0xFF;

// High and low 32 bits of the 32x32->64 products x * m, 16 lanes.
SK_FORCE_INLINE void mul_hi_lo(__m512i x, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_maskz_mul_epu32(kAll8, x, m);  // lanes 0, 2, ...: 64-bit products
  const __m512i odd = _mm512_maskz_mul_epu32(kAll8, _mm512_maskz_srli_epi64(kAll8, x, 32), m);  // lanes 1, 3, ...
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_maskz_srli_epi64(kAll8, even, 32), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_maskz_slli_epi64(kAll8, odd, 32));
}

// philox_r0(seed, counter + lane) for lanes 0..15.
SK_FORCE_INLINE __m512i philox_r0_x16(uint64_t seed, uint64_t counter) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i lo_base = _mm512_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(counter)));
  const __m512i hi_base = _mm512_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(counter >> 32)));
  __m512i c0 = _mm512_add_epi32(lo_base, lane);
  const __mmask16 carry = _mm512_cmplt_epu32_mask(c0, lo_base);  // the low word wrapped: +1 into the high word
  __m512i c1 = _mm512_mask_add_epi32(hi_base, carry, hi_base, _mm512_set1_epi32(1));
  __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
  const __m512i ma = _mm512_set1_epi32(static_cast<int32_t>(kPhiloxRoundA));
  const __m512i mb = _mm512_set1_epi32(static_cast<int32_t>(kPhiloxRoundB));
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < kPhiloxRounds; ++round) {
    __m512i hi_a, lo_a, hi_b, lo_b;
    mul_hi_lo(c0, ma, hi_a, lo_a);
    mul_hi_lo(c2, mb, hi_b, lo_b);
    // 0x96: three-way xor
    const __m512i n0 = _mm512_ternarylogic_epi32(hi_b, c1, _mm512_set1_epi32(static_cast<int32_t>(k0)), 0x96);
    const __m512i n2 = _mm512_ternarylogic_epi32(hi_a, c3, _mm512_set1_epi32(static_cast<int32_t>(k1)), 0x96);
    c1 = lo_b;
    c3 = lo_a;
    c0 = n0;
    c2 = n2;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return c0;
}
#elif defined(__AVX2__)
SK_FORCE_INLINE void mul_hi_lo(__m256i x, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(x, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), m);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// philox_r0(seed, counter + lane) for lanes 0..7.
SK_FORCE_INLINE __m256i philox_r0_x8(uint64_t seed, uint64_t counter) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i lo_base = _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(counter)));
  const __m256i hi_base = _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(counter >> 32)));
  __m256i c0 = _mm256_add_epi32(lo_base, lane);
  // Unsigned c0 < lo_base (the low word wrapped) via signed compare of sign-flipped words; -1 where true.
  const __m256i flip = _mm256_set1_epi32(static_cast<int32_t>(0x80000000u));
  const __m256i carry = _mm256_cmpgt_epi32(_mm256_xor_si256(lo_base, flip), _mm256_xor_si256(c0, flip));
  __m256i c1 = _mm256_sub_epi32(hi_base, carry);
  __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
  const __m256i ma = _mm256_set1_epi32(static_cast<int32_t>(kPhiloxRoundA));
  const __m256i mb = _mm256_set1_epi32(static_cast<int32_t>(kPhiloxRoundB));
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < kPhiloxRounds; ++round) {
    __m256i hi_a, lo_a, hi_b, lo_b;
    mul_hi_lo(c0, ma, hi_a, lo_a);
    mul_hi_lo(c2, mb, hi_b, lo_b);
    const __m256i n0 = _mm256_xor_si256(_mm256_xor_si256(hi_b, c1), _mm256_set1_epi32(static_cast<int32_t>(k0)));
    const __m256i n2 = _mm256_xor_si256(_mm256_xor_si256(hi_a, c3), _mm256_set1_epi32(static_cast<int32_t>(k1)));
    c1 = lo_b;
    c3 = lo_a;
    c0 = n0;
    c2 = n2;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return c0;
}
#endif

// Lanes the block function computes at once (1: the scalar philox_r0).
#if defined(__AVX512F__)
constexpr int64_t kPhiloxLanes = 16;
#elif defined(__AVX2__)
constexpr int64_t kPhiloxLanes = 8;
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
