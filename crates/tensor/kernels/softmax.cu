// Softmax / log-softmax over the last dimension and their backward, one block per row.
#include "common.cuh"

template <typename T>
__device__ void softmax(T* y, const T* x, int d, int log) {
    const long long o = (long long)blockIdx.x * d;
    float m = NEG_INF;
    for (int j = threadIdx.x; j < d; j += blockDim.x) m = fmaxf(m, ld(x, o + j));
    m = block_max(m);
    float s = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) s += __expf(ld(x, o + j) - m);
    s = block_sum(s);
    float lse = m + __logf(s);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float v = ld(x, o + j);
        st(y, o + j, log ? v - lse : __expf(v - lse));
    }
}

// softmax: dx = y⊙(dy − Σ dy⊙y); log-softmax: dx = dy − exp(y)·Σ dy.
template <typename T>
__device__ void softmax_bwd(T* dx, const T* y, const T* dy, int d, int log) {
    const long long o = (long long)blockIdx.x * d;
    float s = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) s += log ? ld(dy, o + j) : ld(dy, o + j) * ld(y, o + j);
    s = block_sum(s);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float yv = ld(y, o + j), g = ld(dy, o + j);
        st(dx, o + j, log ? g - __expf(yv) * s : yv * (g - s));
    }
}

#define INSTANTIATE(T, S)                                                                          \
    extern "C" __global__ void softmax_##S(T* y, const T* x, int d, int log) { softmax(y, x, d, log); } \
    extern "C" __global__ void softmax_bwd_##S(T* dx, const T* y, const T* dy, int d, int log) {   \
        softmax_bwd(dx, y, dy, d, log);                                                            \
    }

INSTANTIATE(float, f32)
INSTANTIATE(bf16_t, bf16)
