// Helpers shared by the CPU kernels: dtype dispatch, argument checks, and the
// deterministic, thread-count-independent work split used by every reduction.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../noise_state.h"
#include "philox_block.h"
#include "sparsekern/macros.h"
#include "sparsekern/philox.h"

namespace sparsekern {
namespace cpu {

// Math runs in float for fp32/fp16/bf16 data and in double for fp64 (SPEC 5).
template <typename S>
using math_t = std::conditional_t<std::is_same<S, double>::value, double, float>;

inline at::ScalarType math_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Elements per work item: fixed, so reductions never depend on the thread count.
constexpr int64_t kChunk = 16384;
// Fewest elements a thread is given (the parallel grain), by the cost of an element: waking a
// second thread costs about a microsecond on a quiet core. Memory-bound loops (under 0.3 ns per
// element) use torch's own elementwise grain (at::internal::GRAIN_SIZE); light math (one exp)
// the reduction chunk; loops that sample gates (Philox + log, log, exp: ~4.5 ns per element)
// split finer, so 8K-16K gates already run on two cores. None of this changes a result: element
// loops are independent per element and reductions combine fixed kChunk pieces in order.
constexpr int64_t kMemoryGrain = 32768;
constexpr int64_t kMathGrain = kChunk;
constexpr int64_t kGateGrain = 4096;
// Independent partial sums per work item (vectorizes without reassociating the sum).
constexpr int kLanes = 16;

// Outputs this large are fresh memory: glibc gives allocations of 32 MiB and more a mapping of
// their own, so each 4 KiB page faults on its first write, and at 16M fp32 elements those faults
// are most of an op's time (uniform into a fresh 64 MB tensor: 109 ms, 60 ms with huge pages).
// Asking for transparent huge pages on the buffer's 2 MiB-aligned interior before the kernel
// writes it leaves one fault per 2 MiB. Only buffers that large: their mapping is their own and
// is unmapped when freed, so no other allocation is affected. A hint: with THP off, or when
// madvise fails, nothing changes. Values are untouched.
constexpr int64_t kHugePageOutputBytes = int64_t(32) << 20;

// `out` must be freshly allocated by the caller (not yet written).
inline void advise_huge_pages(const at::Tensor& out) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const int64_t bytes = out.numel() * static_cast<int64_t>(out.element_size());
  if (bytes < kHugePageOutputBytes) {
    return;
  }
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const uintptr_t start = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t begin = (start + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (start + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (end > begin) {
    madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#else
  (void)out;
#endif
}

// A new output like `like` (dtype, layout), with the huge-page hint when it is large.
inline at::Tensor new_output(const at::Tensor& like) {
  at::Tensor out = at::empty_like(like);
  advise_huge_pages(out);
  return out;
}

inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  advise_huge_pages(out);
  return out;
}

#define SK_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

inline void check_inputs(const char* op, std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors) {
    TORCH_CHECK(t->device().is_cpu(), op, ": expected CPU tensors, got one on ", t->device());
    TORCH_CHECK(at::isFloatingType(t->scalar_type()), op, ": expected floating tensors, got ", t->scalar_type());
  }
}

// `t` contiguous and in `dtype` (a no-op for the tensors the Python layer passes).
inline at::Tensor as_dense(const at::Tensor& t, at::ScalarType dtype) {
  return t.to(dtype).contiguous();
}

inline uint64_t as_u64(int64_t v) {
  return static_cast<uint64_t>(v);
}

// (seed, offset) of an `_at` op's noise state: an int64 CPU tensor [seed, offset], read here.
struct HostNoise {
  int64_t seed;
  int64_t offset;
};

inline HostNoise host_noise(const char* op, const at::Tensor& noise) {
  TORCH_CHECK(noise.device().is_cpu(), op, ": noise must be on the CPU like the other inputs, got ", noise.device());
  check_noise_state(op, "noise", noise);
  const at::Tensor c = noise.contiguous();
  return {c.data_ptr<int64_t>()[0], c.data_ptr<int64_t>()[1]};
}

// Split [begin, end) (flat element indices) at boundaries of groups of `group_len`
// elements and call fn(group, seg_begin, seg_end) for each piece.
template <typename F>
inline void for_each_group_segment(int64_t begin, int64_t end, int64_t group_len, const F& fn) {
  while (begin < end) {
    const int64_t group = begin / group_len;
    const int64_t stop = std::min(end, (group + 1) * group_len);
    fn(group, begin, stop);
    begin = stop;
  }
}

// sum_{i in [begin, end)} term(i) with kLanes interleaved accumulators and a fixed combine:
// lane j adds term(begin + j), term(begin + kLanes + j), ... in order, then the tail, then a
// fixed tree. term(i) may also store outputs; it is called exactly once per index.
// Terms go through a small buffer first: the term loop and the lane adds are then two
// plain loops GCC vectorizes (one interleaved loop became permutes and spills).
template <typename acc_t, typename F>
SK_FORCE_INLINE acc_t lane_sum(int64_t begin, int64_t end, const F& term) {
  constexpr int64_t kBuffer = 16 * kLanes;
  acc_t acc[kLanes] = {};
  alignas(64) acc_t buf[kBuffer];
  int64_t i = begin;
  while (end - i >= kLanes) {
    const int64_t len = std::min(kBuffer, (end - i) / kLanes * kLanes);
    for (int64_t j = 0; j < len; ++j) {
      buf[j] = term(i + j);
    }
    for (int64_t j = 0; j < len; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        acc[l] += buf[j + l];
      }
    }
    i += len;
  }
  acc_t tail = acc_t(0);
  for (; i < end; ++i) {
    tail += term(i);
  }
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) {
      acc[j] += acc[j + width];
    }
  }
  return acc[0] + tail;
}

// Per-group sums: groups of `group_len` consecutive elements, range_sum(begin, end)
// returns the partial sum of a piece inside one group (and may store outputs).
// Pieces are fixed (kChunk) and combined in order: the result is bitwise
// reproducible for any number of threads.
// grain: elements per thread at least (rounded to whole kChunk pieces).
template <typename acc_t, typename F>
std::vector<acc_t> grouped_sums(int64_t groups, int64_t group_len, const F& range_sum,
                                int64_t grain = kMemoryGrain) {
  const int64_t item_grain = std::max<int64_t>(1, grain / kChunk);
  std::vector<acc_t> sums(static_cast<size_t>(groups), acc_t(0));
  if (groups == 0 || group_len == 0) {
    return sums;
  }
  if (group_len >= kChunk) {
    const int64_t per_group = (group_len + kChunk - 1) / kChunk;
    std::vector<acc_t> partial(static_cast<size_t>(groups * per_group));
    at::parallel_for(0, groups * per_group, item_grain, [&](int64_t first, int64_t last) {
      for (int64_t item = first; item < last; ++item) {
        const int64_t group = item / per_group;
        const int64_t start = group * group_len + (item % per_group) * kChunk;
        const int64_t stop = std::min(start + kChunk, (group + 1) * group_len);
        partial[item] = range_sum(start, stop);
      }
    });
    for (int64_t group = 0; group < groups; ++group) {
      acc_t acc = acc_t(0);
      for (int64_t j = 0; j < per_group; ++j) {
        acc += partial[group * per_group + j];
      }
      sums[group] = acc;
    }
  } else {
    const int64_t groups_per_item = std::max<int64_t>(1, kChunk / group_len);
    const int64_t items = (groups + groups_per_item - 1) / groups_per_item;
    at::parallel_for(0, items, item_grain, [&](int64_t first, int64_t last) {
      const int64_t stop_group = std::min(groups, last * groups_per_item);
      for (int64_t group = first * groups_per_item; group < stop_group; ++group) {
        sums[group] = range_sum(group * group_len, (group + 1) * group_len);
      }
    });
  }
  return sums;
}

// Element-wise loop over [0, n) in parallel, at least `grain` elements per thread; body(begin, end).
template <typename F>
inline void parallel_elements(int64_t n, int64_t grain, const F& body) {
  at::parallel_for(0, n, grain, body);
}

// fn(i, u_i) for i in [0, n) in parallel, u_i the SPEC 4 uniform of counter base + i.
// The Philox words come in blocks so the loop over fn holds float math only (vectorizes).
template <typename F>
inline void parallel_uniforms(int64_t n, uint64_t seed, uint64_t base, const F& fn) {
  parallel_elements(n, kGateGrain, [&](int64_t begin, int64_t end) {
    for_each_random_block(seed, base, begin, end, [&](int64_t start, int64_t len, const uint32_t* bits) {
      for (int64_t j = 0; j < len; ++j) {
        fn(start + j, uniform_from_bits(bits[j]));
      }
    });
  });
}

}  // namespace cpu
}  // namespace sparsekern
