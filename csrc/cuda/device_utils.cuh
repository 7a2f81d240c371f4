// Device helpers shared by the CUDA kernels: dtype conversion, 16-byte vector
// chunks with a scalar fallback, launch geometry, deterministic reductions.
// CUDA headers and csrc/include/sparsekern only (no torch).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>

#include "launch.h"

namespace sparsekern {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kChunk = 8;  // elements per thread step: 16 B of half/bf16, 2 x 16 B of float
constexpr int kTile = kThreads * kChunk;

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// kChunk elements of T starting at flat index i as float. `vec`: the chunk lies
// inside [0, n) and p + i is 16-byte aligned, so it moves as 16-byte words.
template <typename T>
__device__ __forceinline__ void load_chunk(const T* p, int64_t i, int64_t n, bool vec, float (&out)[kChunk]) {
  static_assert((kChunk * sizeof(T)) % 16 == 0, "a chunk must be whole 16-byte words");
  if (vec) {
    constexpr int kPerWord = 16 / sizeof(T);
#pragma unroll
    for (int w = 0; w < kChunk / kPerWord; ++w) {
      const uint4 word = __ldg(reinterpret_cast<const uint4*>(p + i) + w);
      T e[kPerWord];
      memcpy(e, &word, sizeof word);  // not a T* into the uint4: that breaks strict aliasing (GCC -O2 misreads it)
#pragma unroll
      for (int k = 0; k < kPerWord; ++k) out[w * kPerWord + k] = to_f32(e[k]);
    }
  } else {
#pragma unroll
    for (int k = 0; k < kChunk; ++k) out[k] = i + k < n ? to_f32(p[i + k]) : 0.f;
  }
}

template <typename T>
__device__ __forceinline__ void store_chunk(T* p, int64_t i, int64_t n, bool vec, const float (&v)[kChunk]) {
  if (vec) {
    constexpr int kPerWord = 16 / sizeof(T);
#pragma unroll
    for (int w = 0; w < kChunk / kPerWord; ++w) {
      T e[kPerWord];
#pragma unroll
      for (int k = 0; k < kPerWord; ++k) e[k] = from_f32<T>(v[w * kPerWord + k]);
      uint4 word;
      memcpy(&word, e, sizeof word);
      reinterpret_cast<uint4*>(p + i)[w] = word;
    }
  } else {
#pragma unroll
    for (int k = 0; k < kChunk; ++k) {
      if (i + k < n) p[i + k] = from_f32<T>(v[k]);
    }
  }
}

inline bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// SMs of `device`, asked once per device (an attribute query per launch costs host time).
// A failed query is not the next launch's error: it is cleared and 1 assumed.
inline int sm_count(int device) {
  static std::mutex mutex;
  static std::map<int, int> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(device);
  if (it == cache.end()) {
    int sms = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) cudaGetLastError();
    it = cache.emplace(device, sms > 0 ? sms : 1).first;
  }
  return it->second;
}

// Blocks of `kernel` (kThreads threads, no dynamic shared memory) that fit on one SM of `device`:
// its registers decide (48 registers: 5 blocks of 256, not 8). Asked once per (device, kernel).
template <typename Kernel>
inline int blocks_per_sm(int device, Kernel* kernel) {
  static std::mutex mutex;
  static std::map<std::pair<int, const void*>, int> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  const std::pair<int, const void*> key{device, reinterpret_cast<const void*>(kernel)};
  auto it = cache.find(key);
  if (it == cache.end()) {
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, 0) != cudaSuccess) cudaGetLastError();
    it = cache.emplace(key, blocks > 0 ? blocks : 1).first;
  }
  return it->second;
}

// Blocks for a grid-stride loop of `kernel` over `work` items: as many as are resident at once
// on the current device (one wave), never more than the work.
template <typename Kernel>
inline unsigned grid_for(Kernel* kernel, int64_t work) {
  int device = 0;
  cudaGetDevice(&device);
  const int64_t cap = static_cast<int64_t>(sm_count(device)) * blocks_per_sm(device, kernel);
  return static_cast<unsigned>(work < cap ? (work > 0 ? work : 1) : cap);
}

// Sum of v over groups of `width` consecutive lanes (width a power of 2 <= 32), fixed order;
// lane 0 of each group holds the result.
__device__ __forceinline__ float group_sum(float v, int width) {
  for (int off = width / 2; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off, width);
  return v;
}

// Fixed-order sum over the whole block (kThreads threads); valid in thread 0. `scratch`: kThreads / 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  v = group_sum(v, 32);
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.f;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kThreads / 32; ++w) total += scratch[w];
  }
  __syncthreads();
  return total;
}

template <typename T>
struct Tag {
  using type = T;
};

// Calls f(Tag<T>{}) with T the CUDA type of `d`.
template <typename F>
inline void dispatch(DType d, F&& f) {
  switch (d) {
    case DType::kFloat: f(Tag<float>{}); break;
    case DType::kHalf: f(Tag<__half>{}); break;
    case DType::kBFloat16: f(Tag<__nv_bfloat16>{}); break;
  }
}

// The (seed, offset) a kernel uses: its arguments, or the noise state in device memory
// (HcCall::state) when there is one.
__device__ __forceinline__ void read_noise_state(const int64_t* state, uint64_t& seed, uint64_t& offset) {
  if (state != nullptr) {
    seed = static_cast<uint64_t>(state[0]);
    offset = static_cast<uint64_t>(state[1]);
  }
}

}  // namespace cuda
}  // namespace sparsekern
