/* bf16 weight x f32 activation GEMV / skinny GEMM for decode batches of 1-8 tokens, where the
 * step is bound by streaming the weights once from HBM. Each warp streams a row (or a K-segment
 * of a row: split-K, when there are too few rows to fill the GPU) with 16-byte loads that skip
 * L1, converts bf16 to f32 in registers and feeds every token's FMA from the same load, so the
 * weights are read once for the whole batch; f32 accumulation, warp shuffles and a shared-memory
 * reduce across the segments. Activations stay f32 (cuBLASLt would need them in bf16). */
#include "engine/cuda/common.cuh"

#define GEMV_WARPS 8

template <int B>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_kernel(float *out, int ldo, const float *x, int ldx, const uint16_t *w, int rows, int K,
                int kw)
{
    __shared__ float red[GEMV_WARPS][B];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int rpc = GEMV_WARPS / kw; /* rows per CTA */
    const int row = blockIdx.x * rpc + warp / kw, seg = warp % kw;
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; b++)
        acc[b] = 0.0f;
    if (row < rows) {
        const uint16_t *wr = w + (size_t)row * (size_t)K;
        if ((K & 7) == 0 && (ldx & 3) == 0) {
            const uint4 *w4 = reinterpret_cast<const uint4 *>(wr);
            const int n8 = K / 8;
#pragma unroll 4
            for (int c = seg * 32 + lane; c < n8; c += kw * 32) {
                const uint4 v = __ldcs(w4 + c); /* streamed once: do not keep it in L1 */
                const float wf[8] = {bf_lo(v.x), bf_hi(v.x), bf_lo(v.y), bf_hi(v.y),
                                     bf_lo(v.z), bf_hi(v.z), bf_lo(v.w), bf_hi(v.w)};
#pragma unroll
                for (int b = 0; b < B; b++) {
                    const float4 *xv =
                        reinterpret_cast<const float4 *>(x + (size_t)b * ldx) + 2 * c;
                    const float4 x0 = __ldg(xv), x1 = __ldg(xv + 1);
                    acc[b] += wf[0] * x0.x + wf[1] * x0.y + wf[2] * x0.z + wf[3] * x0.w +
                              wf[4] * x1.x + wf[5] * x1.y + wf[6] * x1.z + wf[7] * x1.w;
                }
            }
        } else {
            for (int k = seg * 32 + lane; k < K; k += kw * 32) {
                const float wk = bf16f(wr[k]);
#pragma unroll
                for (int b = 0; b < B; b++)
                    acc[b] += wk * x[(size_t)b * ldx + k];
            }
        }
    }
#pragma unroll
    for (int b = 0; b < B; b++) {
        const float s = warp_sum(acc[b]);
        if (lane == 0) red[warp][b] = s;
    }
    __syncthreads();
    /* thread i < rpc * B finishes row i / B, token i % B */
    if (threadIdx.x < rpc * B) {
        const int r = threadIdx.x / B, b = threadIdx.x % B, orow = blockIdx.x * rpc + r;
        if (orow < rows) {
            float s = 0.0f;
            for (int sg = 0; sg < kw; sg++)
                s += red[r * kw + sg][b];
            out[(size_t)b * ldo + orow] = s;
        }
    }
}

template <int B>
static cudaError_t launch(float *out, int ldo, const float *x, int ldx, const uint16_t *w, int rows,
                          int k, int kw, cudaStream_t stream)
{
    const int rpc = GEMV_WARPS / kw;
    gemv_kernel<B>
        <<<(rows + rpc - 1) / rpc, GEMV_WARPS * 32, 0, stream>>>(out, ldo, x, ldx, w, rows, k, kw);
    return cudaGetLastError();
}

extern "C" cudaError_t cuda_gemv(float *out, int ldo, const float *x, int ldx, const uint16_t *w,
                                 int rows, int k, int n_tok, int n_sm, cudaStream_t stream)
{
    if (rows <= 0 || n_tok <= 0) return cudaSuccess;
    if (n_tok > 8 || k <= 0) return cudaErrorInvalidValue;
    /* the fewest warps per row that still give ~4 CTAs per SM, and never segments shorter
     * than one warp-wide pass (256 elements) */
    int kw = 1;
    const long target = 4L * (n_sm > 0 ? n_sm : 132);
    while (kw < GEMV_WARPS && (long)rows * kw / GEMV_WARPS < target && k >= kw * 2 * 256)
        kw *= 2;
    switch (n_tok) {
    case 1: return launch<1>(out, ldo, x, ldx, w, rows, k, kw, stream);
    case 2: return launch<2>(out, ldo, x, ldx, w, rows, k, kw, stream);
    case 3: return launch<3>(out, ldo, x, ldx, w, rows, k, kw, stream);
    case 4: return launch<4>(out, ldo, x, ldx, w, rows, k, kw, stream);
    case 5: return launch<5>(out, ldo, x, ldx, w, rows, k, kw, stream);
    case 6: return launch<6>(out, ldo, x, ldx, w, rows, k, kw, stream);
    case 7: return launch<7>(out, ldo, x, ldx, w, rows, k, kw, stream);
    default: return launch<8>(out, ldo, x, ldx, w, rows, k, kw, stream);
    }
}
