// Portability macros shared by the CPU (C++) and CUDA (nvcc) builds. No torch headers.
#pragma once

// Host code forces inlining: a call left in a loop (GCC gives up on large TUs) stops
// the loop from vectorizing.
#if defined(__GNUC__) || defined(__clang__)
#define SK_FORCE_INLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define SK_FORCE_INLINE __forceinline
#else
#define SK_FORCE_INLINE inline
#endif

#if defined(__CUDACC__)
#define SK_HD __host__ __device__ __forceinline__
#else
#define SK_HD SK_FORCE_INLINE
#endif

// For lambdas in host loops: [&](int64_t i) SK_LAMBDA_INLINE { ... }
#if defined(__GNUC__) || defined(__clang__)
#define SK_LAMBDA_INLINE __attribute__((always_inline))
#else
#define SK_LAMBDA_INLINE
#endif

// True while nvcc compiles device code; host-only fast paths are skipped there.
#if defined(__CUDA_ARCH__)
#define SK_DEVICE_PASS 1
#else
#define SK_DEVICE_PASS 0
#endif
