// Cross-entropy rows with an ignore index: per-row loss (lse − x[target], 0 when ignored) and
// the gradient g · (softmax − onehot) (0 on ignored rows). One block per row of logits [N, V].
#include "common.cuh"

// The row's max `m` and Σ exp(x − m), on every thread of the block.
template <typename T>
__device__ void row_max_sum(const T* x, long long v, float& m, float& z) {
    m = NEG_INF;
    for (long long j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, ld(x, j));
    m = block_max(m);
    z = 0.0f;
    for (long long j = threadIdx.x; j < v; j += blockDim.x) z += __expf(ld(x, j) - m);
    z = block_sum(z);
}

template <typename T>
__device__ void ce_rows(float* loss, const T* logits, const long long* tgt, long long v, long long ignore) {
    long long r = blockIdx.x;
    const T* x = logits + r * v;
    float m, z;
    row_max_sum(x, v, m, z);
    if (threadIdx.x == 0) loss[r] = tgt[r] == ignore ? 0.0f : m + logf(z) - ld(x, tgt[r]);
}

template <typename T>
__device__ void ce_bwd(T* d, const T* logits, const long long* tgt, long long v, long long ignore, float g) {
    long long r = blockIdx.x;
    const T* x = logits + r * v;
    if (tgt[r] == ignore) {
        for (long long j = threadIdx.x; j < v; j += blockDim.x) st(d, r * v + j, 0.0f);
        return;
    }
    float m, z;
    row_max_sum(x, v, m, z);
    float gz = g / z;
    for (long long j = threadIdx.x; j < v; j += blockDim.x)
        st(d, r * v + j, gz * __expf(ld(x, j) - m) - (j == tgt[r] ? g : 0.0f));
}

#define INSTANTIATE(T, S)                                                                                     \
    extern "C" __global__ void ce_rows_##S(float* l, const T* x, const long long* t, long long v, long long ig) { \
        ce_rows(l, x, t, v, ig);                                                                              \
    }                                                                                                         \
    extern "C" __global__ void ce_bwd_##S(T* d, const T* x, const long long* t, long long v, long long ig,    \
                                          float g) {                                                          \
        ce_bwd(d, x, t, v, ig, g);                                                                            \
    }

INSTANTIATE(float, f32)
INSTANTIATE(bf16_t, bf16)
