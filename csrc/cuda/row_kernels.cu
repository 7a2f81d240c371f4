// Row CUDA kernels: x seen as [rows, inner], row r sharing param[r % channels]
// (an STR threshold or a hard-concrete gate). A block takes [block_r, block_c]
// tiles in a grid-stride loop: one thread per row computes the row's state into
// shared memory, then each thread maps `ept` consecutive elements of its row.
// Backward also sums its row's terms over the tile in a fixed order (shuffles,
// then shared memory) and writes one partial per (row, column tile): the group
// reduction rides along the elementwise pass, with no atomics. No torch.
#include "device_utils.cuh"
#include "sparsekern/philox.h"
#include "sparsekern/sparsity_math.h"

namespace sparsekern {
namespace cuda {
namespace {

// Tile geometry: a pure function of (rows, inner), so partial shapes and sums repeat.
struct RowShape {
  int64_t rows, inner, channels, row_tiles, col_tiles;
  // > 0: x is channels-last with this many channels: element (r, j) of row r = b * C + c sits at
  // (b * inner + j) * C + c instead of r * inner + j. Same threads, elements and sums: only the
  // addresses differ, so results equal the row-major (NCHW) call bit for bit.
  int64_t cl_channels;
  int block_c;  // columns per tile (power of 2, <= kTile)
  int ept;      // elements per thread (<= kChunk)
  int tpr;      // threads per row
  int block_r;  // rows per tile
};

int block_cols(int64_t inner) {
  int c = 1;
  while (c < inner && c < kTile) c *= 2;
  return c;
}

RowShape row_shape(int64_t rows, int64_t inner, int64_t channels) {
  RowShape s{};
  s.rows = rows;
  s.inner = inner;
  s.channels = channels;
  s.block_c = block_cols(inner);
  s.ept = s.block_c < kChunk ? s.block_c : kChunk;
  s.tpr = s.block_c / s.ept;
  s.block_r = kThreads / s.tpr;
  s.col_tiles = (inner + s.block_c - 1) / s.block_c;
  s.row_tiles = (rows + s.block_r - 1) / s.block_r;
  return s;
}

struct SoftThresholdOp {
  struct Row {
    float t;
  };
  __device__ Row row(float s, int64_t) const { return {str_threshold(s)}; }
  __device__ float forward(float w, Row r) const { return str_value(w, r.t); }
  __device__ float grad_x(float g, float w, Row r) const { return str_grad_weight(g, w, r.t); }
  __device__ float term(float g, float w, Row r) const { return str_grad_s_term(g, w, r.t); }
  __device__ float finish(float sum, Row r) const { return str_grad_s_scale(r.t) * sum; }
};

struct GateOp {
  uint64_t seed, offset;
  const int64_t* state;  // HcCall::state
  HardConcreteParams<float> p;
  struct Row {
    float z, dz;
  };
  __device__ Row row(float la, int64_t r) const {
    uint64_t key = seed, base = offset;
    read_noise_state(state, key, base);
    const Gate<float> g = hc_sample(la, sk_uniform(key, base + static_cast<uint64_t>(r)), p);
    return {g.z, g.dz};
  }
  __device__ float forward(float x, Row r) const { return x * r.z; }
  __device__ float grad_x(float g, float, Row r) const { return g * r.z; }
  __device__ float term(float g, float x, Row) const { return g * x; }
  __device__ float finish(float sum, Row r) const { return sum * r.dz; }
};

// Channels-last addressing (RowShape::cl_channels): where element (r, j) lives, and strided
// versions of load_chunk / store_chunk (count elements, stride apart; zeros past count).
__device__ __forceinline__ int64_t cl_base(const RowShape& sh, int64_t r, int64_t j) {
  const int64_t b = r / sh.cl_channels;
  return (b * sh.inner + j) * sh.cl_channels + (r - b * sh.cl_channels);
}

template <typename T>
__device__ __forceinline__ void load_strided(const T* p, int64_t at, int64_t stride, int64_t count,
                                             float (&out)[kChunk]) {
#pragma unroll
  for (int k = 0; k < kChunk; ++k) out[k] = k < count ? to_f32(p[at + k * stride]) : 0.f;
}

template <typename T>
__device__ __forceinline__ void store_strided(T* p, int64_t at, int64_t stride, int64_t count,
                                              const float (&v)[kChunk]) {
#pragma unroll
  for (int k = 0; k < kChunk; ++k) {
    if (k < count) p[at + k * stride] = from_f32<T>(v[k]);
  }
}

template <typename X, typename P, class Op, bool kBackward>
__global__ void __launch_bounds__(kThreads) row_kernel(const X* x, const P* param, const X* grad, X* out,
                                                       float* partial, RowShape sh, Op op, bool aligned) {
  __shared__ typename Op::Row row_state[kThreads];
  __shared__ float scratch[kThreads / 32];
  const int local_r = threadIdx.x / sh.tpr;
  const int lane_c = threadIdx.x % sh.tpr;
  const int64_t tiles = sh.row_tiles * sh.col_tiles;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int64_t tile_r = t / sh.col_tiles;
    const int64_t tile_c = t - tile_r * sh.col_tiles;
    const int64_t r = tile_r * sh.block_r + local_r;
    const int64_t c = tile_c * sh.block_c + static_cast<int64_t>(lane_c) * sh.ept;
    const bool row_ok = r < sh.rows;
    if (lane_c == 0 && row_ok) row_state[local_r] = op.row(to_f32(param[r % sh.channels]), r);
    __syncthreads();
    float acc = 0.f;
    if (row_ok && c < sh.inner) {
      const typename Op::Row st = row_state[local_r];
      const int64_t i = r * sh.inner + c;
      const int64_t left = sh.inner - c;
      const int64_t lim = i + (left < sh.ept ? left : sh.ept);  // this thread's elements end here
      const bool vec = aligned && sh.ept == kChunk && sh.inner % kChunk == 0 && sh.cl_channels == 0;
      float xv[kChunk], gv[kChunk], ov[kChunk];
      if (sh.cl_channels) {
        load_strided(x, cl_base(sh, r, c), sh.cl_channels, lim - i, xv);
        if constexpr (kBackward) load_strided(grad, cl_base(sh, r, c), sh.cl_channels, lim - i, gv);
      } else {
        load_chunk(x, i, lim, vec, xv);
        if constexpr (kBackward) load_chunk(grad, i, lim, vec, gv);
      }
#pragma unroll
      for (int k = 0; k < kChunk; ++k) {
        if constexpr (kBackward) {
          ov[k] = op.grad_x(gv[k], xv[k], st);
          acc += i + k < lim ? op.term(gv[k], xv[k], st) : 0.f;
        } else {
          ov[k] = op.forward(xv[k], st);
        }
      }
      if (sh.cl_channels) {
        store_strided(out, cl_base(sh, r, c), sh.cl_channels, lim - i, ov);
      } else {
        store_chunk(out, i, lim, vec, ov);
      }
    }
    if constexpr (kBackward) {
      acc = group_sum(acc, sh.tpr < 32 ? sh.tpr : 32);
      if (sh.tpr > 32) {  // a row spans several warps: add their sums in warp order
        if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = acc;
        __syncthreads();
        if (lane_c == 0) {
          acc = 0.f;
          for (int w = 0; w < sh.tpr / 32; ++w) acc += scratch[threadIdx.x / 32 + w];
        }
      }
      if (lane_c == 0 && row_ok) partial[r * sh.col_tiles + tile_c] = op.finish(acc, row_state[local_r]);
    }
    __syncthreads();  // row_state and scratch are reused by the next tile
  }
}

template <class Op>
void launch_rows(DType x_type, DType p_type, const void* x, const void* param, const void* grad, void* out,
                 float* partial, const RowShape& sh, const Op& op, cudaStream_t stream) {
  if (sh.rows <= 0 || sh.inner <= 0) return;
  const bool aligned = aligned16(x) && aligned16(grad) && aligned16(out);
  dispatch(x_type, [&](auto x_tag) {
    dispatch(p_type, [&](auto p_tag) {
      using X = typename decltype(x_tag)::type;
      using P = typename decltype(p_tag)::type;
      auto launch = [&](auto kernel) {
        kernel<<<grid_for(kernel, sh.row_tiles * sh.col_tiles), kThreads, 0, stream>>>(
            static_cast<const X*>(x), static_cast<const P*>(param), static_cast<const X*>(grad), static_cast<X*>(out),
            partial, sh, op, aligned);
      };
      grad ? launch(row_kernel<X, P, Op, true>) : launch(row_kernel<X, P, Op, false>);
    });
  });
}

}  // namespace

int64_t row_col_tiles(int64_t inner) { return (inner + block_cols(inner) - 1) / block_cols(inner); }

void soft_threshold_rows(DType x_type, DType s_type, const void* x, const void* s, const void* grad, void* out,
                         float* partial, int64_t rows, int64_t inner, cudaStream_t stream) {
  launch_rows(x_type, s_type, x, s, grad, out, partial, row_shape(rows, inner, rows), SoftThresholdOp{}, stream);
}

void gated_rows(DType x_type, DType la_type, const void* x, const void* log_alpha, const void* grad, void* out,
                float* partial, int64_t rows, int64_t inner, int64_t channels, const HcCall& hc,
                cudaStream_t stream, bool channels_last) {
  const GateOp op{hc.seed, hc.offset, hc.state, hc_params<float>(hc.beta, hc.gamma, hc.zeta)};
  RowShape sh = row_shape(rows, inner, channels);
  sh.cl_channels = channels_last ? channels : 0;
  launch_rows(x_type, la_type, x, log_alpha, grad, out, partial, sh, op, stream);
}

}  // namespace cuda
}  // namespace sparsekern
