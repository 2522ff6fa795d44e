// RMSNorm forward and backward, one block per row: y = x·rstd·w, rstd = 1/sqrt(mean(x²)+eps).
#include "common.cuh"

template <typename T>
__device__ void rms_norm(T* y, float* rstd, const T* x, const T* w, int d, float eps) {
    long long r = blockIdx.x;
    const long long o = r * d;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) { float v = ld(x, o + j); ss += v * v; }
    float rs = rsqrtf(block_sum(ss) / d + eps);
    if (threadIdx.x == 0) rstd[r] = rs;
    for (int j = threadIdx.x; j < d; j += blockDim.x) st(y, o + j, ld(x, o + j) * rs * ld(w, j));
}

// dx = rstd·(dy⊙w − x̂·mean(dy⊙w⊙x̂)); dw (f32, zeroed by the caller) += dy⊙x̂ via atomics.
template <typename T>
__device__ void rms_norm_bwd(T* dx, float* dw, const T* x, const T* w, const float* rstd, const T* dy, int d) {
    long long r = blockIdx.x;
    const long long o = r * d;
    float rs = rstd[r];
    float acc = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) acc += ld(dy, o + j) * ld(w, j) * ld(x, o + j) * rs;
    float mean = block_sum(acc) / d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float xh = ld(x, o + j) * rs, g = ld(dy, o + j);
        st(dx, o + j, rs * (g * ld(w, j) - xh * mean));
        atomicAdd(&dw[j], g * xh);
    }
}

#define INSTANTIATE(T, S)                                                                              \
    extern "C" __global__ void rms_norm_##S(T* y, float* rstd, const T* x, const T* w, int d, float e) { \
        rms_norm(y, rstd, x, w, d, e);                                                                 \
    }                                                                                                  \
    extern "C" __global__ void rms_norm_bwd_##S(T* dx, float* dw, const T* x, const T* w,             \
                                                 const float* rstd, const T* dy, int d) {              \
        rms_norm_bwd(dx, dw, x, w, rstd, dy, d);                                                       \
    }

INSTANTIATE(float, f32)
INSTANTIATE(bf16_t, bf16)
