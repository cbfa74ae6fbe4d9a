/* Device helpers shared by the kernel files: bf16 bit conversions, vector unpacking, warp and
 * block reductions. */
#ifndef LLMGATE_ENGINE_CUDA_COMMON_CUH
#define LLMGATE_ENGINE_CUDA_COMMON_CUH

#include "engine/cuda/kernels.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

/* bf16 bits -> f32 (exact). */
__device__ __forceinline__ float bf16f(uint16_t h)
{
    return __uint_as_float((uint32_t)h << 16);
}

/* f32 -> bf16 bits, round to nearest even (as the host's f32_to_bf16). */
__device__ __forceinline__ uint16_t f2bf(float f)
{
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

/* The two bf16 halves of a 32-bit word, low element first. */
__device__ __forceinline__ float bf_lo(uint32_t u)
{
    return __uint_as_float(u << 16);
}
__device__ __forceinline__ float bf_hi(uint32_t u)
{
    return __uint_as_float(u & 0xffff0000u);
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
 * red holds 33 floats of shared memory. */
__device__ __forceinline__ float block_sum(float v, float *red)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); /* red may still be read by a previous call */
    if (lane == 0) red[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < nw ? red[lane] : 0.0f;
        s = warp_sum(s);
        if (lane == 0) red[32] = s;
    }
    __syncthreads();
    return red[32];
}

static inline unsigned ceil_div(size_t a, unsigned b)
{
    return (unsigned)((a + b - 1) / b);
}

#endif
