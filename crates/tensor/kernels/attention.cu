// Attention's row kernels around the cuBLAS score and value products: the masked softmax
// (causal, key padding, packed segments; scale applied inside; probabilities kept in f32 for the
// backward) and the softmax backward dS = scale · P ⊙ (dP − rowsum(dP ⊙ P)). One block per row
// of scores [B, H, S, T].
#include "common.cuh"

__device__ __forceinline__ bool visible(int causal, const unsigned char* pad, const unsigned* seg, long long bi,
                                        long long t, long long qp, long long j) {
    return (!causal || j <= qp) && (pad == nullptr || pad[bi * t + j]) &&
           (seg == nullptr || seg[bi * t + j] == seg[bi * t + qp]);
}

template <typename T>
__device__ void masked_softmax(float* p, const T* scores, int causal, const unsigned char* pad, const unsigned* seg,
                               long long h, long long s, long long t, float scale) {
    long long r = blockIdx.x;
    long long i = r % s, bi = (r / s) / h;
    long long qp = t >= s ? i + t - s : (i < t - 1 ? i : t - 1);
    const T* x = scores + r * t;
    float* o = p + r * t;
    float m = NEG_INF;
    for (long long j = threadIdx.x; j < t; j += blockDim.x)
        if (visible(causal, pad, seg, bi, t, qp, j)) m = fmaxf(m, scale * ld(x, j));
    m = block_max(m);
    if (m == NEG_INF) {
        for (long long j = threadIdx.x; j < t; j += blockDim.x) o[j] = 0.0f;
        return;
    }
    float z = 0.0f;
    for (long long j = threadIdx.x; j < t; j += blockDim.x)
        if (visible(causal, pad, seg, bi, t, qp, j)) z += __expf(scale * ld(x, j) - m);
    z = block_sum(z);
    float rz = 1.0f / z;
    for (long long j = threadIdx.x; j < t; j += blockDim.x)
        o[j] = visible(causal, pad, seg, bi, t, qp, j) ? __expf(scale * ld(x, j) - m) * rz : 0.0f;
}

template <typename T>
__device__ void softmax_bwd_scaled(T* ds, const float* p, const T* dp, long long t, float scale) {
    long long r = blockIdx.x;
    const float* pr = p + r * t;
    const T* dr = dp + r * t;
    float dot = 0.0f;
    for (long long j = threadIdx.x; j < t; j += blockDim.x) dot += pr[j] * ld(dr, j);
    dot = block_sum(dot);
    for (long long j = threadIdx.x; j < t; j += blockDim.x) st(ds, r * t + j, scale * pr[j] * (ld(dr, j) - dot));
}

#define INSTANTIATE(T, S)                                                                                     \
    extern "C" __global__ void masked_softmax_##S(float* p, const T* sc, int causal, const unsigned char* pad, \
                                                  const unsigned* seg, long long h, long long s, long long t, \
                                                  float scale) {                                              \
        masked_softmax(p, sc, causal, pad, seg, h, s, t, scale);                                              \
    }                                                                                                         \
    extern "C" __global__ void softmax_bwd_scaled_##S(T* ds, const float* p, const T* dp, long long t,         \
                                                      float scale) {                                          \
        softmax_bwd_scaled(ds, p, dp, t, scale);                                                              \
    }

INSTANTIATE(float, f32)
INSTANTIATE(bf16_t, bf16)
