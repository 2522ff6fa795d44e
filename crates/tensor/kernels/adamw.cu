// One fused AdamW step (decoupled weight decay, bias correction folded into the step size):
// m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²; p ← p − lr·wd·p − lr·(m/bc1) / (sqrt(v/bc2) + eps).
#include "common.cuh"

// Out of place for f32 or bf16 weights (updated in f32, rounded to nearest even when stored as
// bf16) and f32 or bf16 gradients, so the caller's parameter tensors stay unchanged; many
// tensors in one launch (the multi-tensor form, as torch's fused AdamW): `tab` holds eight 64-bit
// words per tensor — po, pin, m, v, g, n, the bits of its weight decay, unused — and `chunks`
// one word per chunk of `chunk` elements: tensor index << 40 | first element.
template <typename P, typename G>
__device__ void adamw_multi(const unsigned long long* tab, const unsigned long long* chunks, long long nchunks,
                            long long chunk, float lr, float b1, float b2, float eps, float bc1, float bc2,
                            float gscale) {
    for (long long c = blockIdx.x; c < nchunks; c += gridDim.x) {
        unsigned long long e = chunks[c];
        const unsigned long long* d = tab + 8 * (e >> 40);
        long long start = (long long)(e & ((1ull << 40) - 1));
        P* po = (P*)d[0];
        const P* pin = (const P*)d[1];
        float* m = (float*)d[2];
        float* v = (float*)d[3];
        const G* g = (const G*)d[4];
        long long end = min((long long)d[5], start + chunk);
        float wd = __uint_as_float((unsigned int)d[6]);
        for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
            float gi = ld(g, i) * gscale;
            float mi = b1 * m[i] + (1.0f - b1) * gi;
            float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
            m[i] = mi;
            v[i] = vi;
            float pi = ld(pin, i) * (1.0f - lr * wd);
            st(po, i, pi - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps));
        }
    }
}

#define ADAMW_MULTI(P, G, S)                                                                                      \
    extern "C" __global__ void adamw_multi_##S(const unsigned long long* tab, const unsigned long long* chunks,   \
                                               long long nchunks, long long chunk, float lr, float b1, float b2, \
                                               float eps, float bc1, float bc2, float gscale) {                   \
        adamw_multi<P, G>(tab, chunks, nchunks, chunk, lr, b1, b2, eps, bc1, bc2, gscale);                        \
    }

ADAMW_MULTI(float, float, f32_f32)
ADAMW_MULTI(float, bf16_t, f32_bf16)
ADAMW_MULTI(bf16_t, float, bf16_f32)
ADAMW_MULTI(bf16_t, bf16_t, bf16_bf16)
