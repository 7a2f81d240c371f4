// CUDA on the host, for running csrc/cuda unmodified under g++ and the sanitizers.
// Each CUDA thread is a host thread (a pool started once); the blocks of a launch run one
// after another on the same blockDim threads. threadIdx/blockIdx/blockDim/gridDim are thread-locals,
// __syncthreads is a std::barrier over the block, warp shuffles go through a per-warp
// buffer between two barriers, __shared__ is static storage (one block at a time, so
// it is per-block; it keeps the previous block's values where a GPU's are undefined).
// Anything the kernels use that is not emulated faithfully aborts: partial shuffle
// masks, __syncthreads reached by some threads of a block only, 2-D/3-D launches.
// The runtime calls (device attributes, occupancy) answer from a fake device table.
#pragma once
#include <atomic>
#include <barrier>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---------------------------------------------------------------- keywords
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
constexpr int warpSize = 32;

template <typename T>
inline T __ldg(const T* p) {
  T v;
  std::memcpy(&v, p, sizeof v);  // the bytes, whatever type wrote them
  return v;
}

// ---------------------------------------------------------------- half / bfloat16 (storage + RN conversions)
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

namespace emu {
inline uint32_t f2u(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float u2f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "cuda emulation: %s\n", what);
  std::fflush(stderr);
  std::abort();
}
}  // namespace emu

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exp = (h.bits >> 10) & 0x1fu, man = h.bits & 0x3ffu;
  if (exp == 0x1f) return emu::u2f(sign | 0x7f800000u | (man << 13));  // inf / NaN (payload kept)
  if (exp != 0) return emu::u2f(sign | ((exp + 112) << 23) | (man << 13));
  const float sub = static_cast<float>(man) * 5.9604644775390625e-8f;  // man * 2**-24, exact
  return sign ? -sub : sub;
}

// Round to nearest even, subnormals and overflow to inf included; NaN -> 0x7fff like CUDA.
inline __half __float2half_rn(float f) {
  const uint32_t u = emu::f2u(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return {0x7fff};
  if (a >= 0x47800000u) {  // >= 65536: inf (65520 .. 65536 rounds up to inf too, below)
    return {static_cast<uint16_t>(sign | 0x7c00u)};
  }
  if (a < 0x38800000u) {  // below the smallest normal half (2**-14): a multiple of 2**-24
    const float q = emu::u2f(a) * 16777216.0f;  // exact scaling, then round to an integer (RNE)
    const float r = (q + 12582912.0f) - 12582912.0f;
    return {static_cast<uint16_t>(sign | static_cast<uint32_t>(r))};
  }
  const uint32_t rounded = a + 0xfffu + ((a >> 13) & 1u);  // RNE on the 13 dropped bits
  const uint32_t h = (rounded >> 13) - (112u << 10);
  return {static_cast<uint16_t>(sign | (h > 0x7c00u ? 0x7c00u : h))};
}

inline float __bfloat162float(__nv_bfloat16 b) { return emu::u2f(static_cast<uint32_t>(b.bits) << 16); }

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const uint32_t u = emu::f2u(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {0x7fff};
  return {static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

// ---------------------------------------------------------------- runtime API (a fake device table)
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9,
                      cudaErrorInvalidDevice = 101;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace emu {
struct Device {
  int sms;
  int blocks_per_sm;  // what the occupancy calculator answers for 256 threads
};
// 0: small, so grid-stride loops go round several times; 1: one block in all; 2: an H100-sized one.
inline constexpr Device kDevices[] = {{2, 5}, {1, 1}, {132, 5}};
inline constexpr int kDeviceCount = 3;

struct Stats {
  std::atomic<long> launches{0}, attribute_queries{0}, occupancy_queries{0}, last_grid{0};
};
inline Stats stats;
inline thread_local int current_device = 0;
inline thread_local cudaError_t last_error = cudaSuccess;
}  // namespace emu

inline cudaError_t cudaGetDevice(int* d) {
  *d = emu::current_device;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) {
  if (d < 0 || d >= emu::kDeviceCount) return emu::last_error = cudaErrorInvalidDevice;
  emu::current_device = d;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int d) {
  ++emu::stats.attribute_queries;
  if (d < 0 || d >= emu::kDeviceCount) return emu::last_error = cudaErrorInvalidDevice;
  if (attr != cudaDevAttrMultiProcessorCount) return emu::last_error = cudaErrorInvalidValue;
  *v = emu::kDevices[d].sms;
  return cudaSuccess;
}
template <typename F>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, F, int block_size, size_t) {
  ++emu::stats.occupancy_queries;
  if (block_size <= 0 || block_size > 1024) return emu::last_error = cudaErrorInvalidValue;
  const int by_threads = 2048 / block_size, by_regs = emu::kDevices[emu::current_device].blocks_per_sm;
  *n = by_threads < by_regs ? by_threads : by_regs;
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() { return std::exchange(emu::last_error, cudaSuccess); }
inline cudaError_t cudaPeekAtLastError() { return emu::last_error; }
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    default: return "invalid argument";
  }
}

// ---------------------------------------------------------------- blocks, barriers, warps
namespace emu {
struct Warp {
  explicit Warp(int lanes) : bar(lanes) {}
  std::barrier<> bar;
  uint64_t slot[32] = {};
};

struct Block {
  explicit Block(unsigned threads) : bar(threads), syncs(threads) {
    for (unsigned w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<Warp>(32));
  }
  std::barrier<> bar;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<long> syncs;  // __syncthreads calls per thread in this block, compared at its end
};

inline thread_local Block* block = nullptr;
inline thread_local long syncs = 0;

inline void end_block() {
  block->syncs[threadIdx.x] = std::exchange(syncs, 0);
  block->bar.arrive_and_wait();
  if (block->syncs[threadIdx.x] != block->syncs[0]) fail("__syncthreads reached by some threads of a block only");
  block->bar.arrive_and_wait();  // nobody writes syncs[] for the next block before all have compared
}

// The host threads that play the CUDA threads: started once (starting 256 threads per launch
// costs 30 ms, 400 ms under TSan), then woken for every launch. Launches run one at a time.
class Pool {
 public:
  ~Pool() {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    start_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  // job(t) on threads t = 0 .. n-1, returning when all are done.
  void run(unsigned n, const std::function<void(unsigned)>& job) {
    const std::lock_guard<std::mutex> one_launch_at_a_time(launch_mutex_);
    std::unique_lock<std::mutex> lock(mutex_);
    while (threads_.size() < n) {
      const unsigned t = static_cast<unsigned>(threads_.size());
      threads_.emplace_back([this, t] { work(t); });
    }
    job_ = &job;
    active_ = n;
    pending_ = n;
    ++generation_;
    start_.notify_all();
    done_.wait(lock, [&] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void work(unsigned t) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      start_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (t >= active_) continue;
      const std::function<void(unsigned)>* job = job_;
      lock.unlock();
      (*job)(t);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::mutex launch_mutex_, mutex_;
  std::condition_variable start_, done_;
  std::vector<std::thread> threads_;
  const std::function<void(unsigned)>* job_ = nullptr;
  unsigned active_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};
inline Pool pool;

// kernel(args...) over grid x block threads, blocks in order. The arguments are converted
// to the kernel's parameter types once, as a launch copies them to the device.
template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 threads, size_t smem, cudaStream_t, A&&... args) {
  ++stats.launches;
  stats.last_grid = grid.x;
  if (grid.x == 0 || threads.x == 0 || threads.x > 1024 || smem > 48 * 1024) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (grid.y != 1 || grid.z != 1 || threads.y != 1 || threads.z != 1) fail("only 1-D launches are emulated");
  if (threads.x % 32 != 0) fail("blockDim.x must be a multiple of 32 (whole warps)");
  const std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  Block ctx(threads.x);
  const int device = current_device;
  pool.run(threads.x, [&](unsigned t) {
    threadIdx = dim3(t);
    blockDim = threads;
    gridDim = grid;
    current_device = device;
    block = &ctx;
    for (unsigned b = 0; b < grid.x; ++b) {
      blockIdx = dim3(b);
      std::apply(kernel, params);
      end_block();
    }
    block = nullptr;
  });
}

// `kernel<<<grid, block, smem, stream>>>(args)` is rewritten to `::emu::launcher(kernel, grid, block, smem, stream)(args)`.
template <typename K>
struct Launcher {
  K kernel;
  dim3 grid, threads;
  size_t smem;
  cudaStream_t stream;
  template <typename... A>
  void operator()(A&&... args) const {
    launch(kernel, grid, threads, smem, stream, std::forward<A>(args)...);
  }
};
template <typename K>
Launcher<K> launcher(K kernel, dim3 grid, dim3 threads, size_t smem = 0, cudaStream_t stream = nullptr) {
  return {kernel, grid, threads, smem, stream};
}
}  // namespace emu

inline void __syncthreads() {
  ++emu::syncs;
  emu::block->bar.arrive_and_wait();
}

// The value of lane (lane + delta) in this lane's segment of `width` lanes; its own value past the segment's end.
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle of a 32/64-bit value");
  if (mask != 0xffffffffu) emu::fail("partial shuffle masks are not emulated");
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) emu::fail("shuffle width must be a power of 2 <= 32");
  emu::Warp& warp = *emu::block->warps[threadIdx.x / 32];
  const unsigned lane = threadIdx.x % 32;
  std::memcpy(&warp.slot[lane], &v, sizeof v);
  warp.bar.arrive_and_wait();
  const unsigned src = lane % width + delta < static_cast<unsigned>(width) ? lane + delta : lane;
  T r;
  std::memcpy(&r, &warp.slot[src], sizeof r);
  warp.bar.arrive_and_wait();  // nobody overwrites a slot before every lane has read
  return r;
}
