/* Embedding lookup, row gathers, f32 -> bf16 conversion and KV block staging: the data-movement
 * kernels of the CUDA backend. */
#include "engine/cuda/common.cuh"

/* One block per token; 16-byte loads of 8 bf16 when the row allows it. */
__global__ void embed_kernel(float *x, const uint16_t *table, const int32_t *tokens, int dim)
{
    const int t = blockIdx.x;
    const uint16_t *row = table + (size_t)tokens[t] * (size_t)dim;
    float *dst = x + (size_t)t * (size_t)dim;
    if ((dim & 7) == 0) {
        const uint4 *src = reinterpret_cast<const uint4 *>(row);
        float4 *d4 = reinterpret_cast<float4 *>(dst);
        for (int i = threadIdx.x; i < dim / 8; i += blockDim.x) {
            uint4 v = __ldg(src + i);
            d4[2 * i] = make_float4(bf_lo(v.x), bf_hi(v.x), bf_lo(v.y), bf_hi(v.y));
            d4[2 * i + 1] = make_float4(bf_lo(v.z), bf_hi(v.z), bf_lo(v.w), bf_hi(v.w));
        }
    } else {
        for (int i = threadIdx.x; i < dim; i += blockDim.x)
            dst[i] = bf16f(row[i]);
    }
}

extern "C" cudaError_t cuda_embed(float *x, const uint16_t *table, const int32_t *tokens, int n,
                                  int dim, cudaStream_t stream)
{
    if (n <= 0) return cudaSuccess;
    embed_kernel<<<n, 128, 0, stream>>>(x, table, tokens, dim);
    return cudaGetLastError();
}

__global__ void gather_kernel(float *dst, uint16_t *dst16, const float *src, const int32_t *rows,
                              int dim)
{
    const int i = blockIdx.x;
    const float *s = src + (size_t)rows[i] * (size_t)dim;
    float *d = dst + (size_t)i * (size_t)dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float v = s[j];
        d[j] = v;
        if (dst16) dst16[(size_t)i * (size_t)dim + j] = f2bf(v);
    }
}

extern "C" cudaError_t cuda_gather_rows(float *dst, uint16_t *dst16, const float *src,
                                        const int32_t *rows, int n, int dim, cudaStream_t stream)
{
    if (n <= 0) return cudaSuccess;
    gather_kernel<<<n, 128, 0, stream>>>(dst, dst16, src, rows, dim);
    return cudaGetLastError();
}

__global__ void f32_to_bf16_kernel(uint16_t *dst, const float *src, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = f2bf(src[i]);
}

extern "C" cudaError_t cuda_f32_to_bf16(uint16_t *dst, const float *src, size_t n,
                                        cudaStream_t stream)
{
    if (n == 0) return cudaSuccess;
    unsigned blocks = ceil_div(n, 256);
    if (blocks > 4096) blocks = 4096;
    f32_to_bf16_kernel<<<blocks, 256, 0, stream>>>(dst, src, n);
    return cudaGetLastError();
}

/* grid (n_layers, 2): K then V of each layer, widened to (or narrowed from) f32 staging. */
__global__ void kv_block_kernel(uint16_t *k_pool, uint16_t *v_pool, float *staging,
                                size_t layer_elems, size_t block_elems, int block, int to_pool)
{
    const int l = blockIdx.x, which = blockIdx.y;
    uint16_t *pool =
        (which ? v_pool : k_pool) + (size_t)l * layer_elems + (size_t)block * block_elems;
    float *st = staging + (size_t)(2 * l + which) * block_elems;
    for (size_t i = threadIdx.x; i < block_elems; i += blockDim.x) {
        if (to_pool)
            pool[i] = f2bf(st[i]);
        else
            st[i] = bf16f(pool[i]);
    }
}

extern "C" cudaError_t cuda_kv_block_copy(uint16_t *k_pool, uint16_t *v_pool, float *staging,
                                          int n_layers, size_t layer_elems, size_t block_elems,
                                          int block, int to_pool, cudaStream_t stream)
{
    kv_block_kernel<<<dim3(n_layers, 2), 256, 0, stream>>>(k_pool, v_pool, staging, layer_elems,
                                                           block_elems, block, to_pool);
    return cudaGetLastError();
}
