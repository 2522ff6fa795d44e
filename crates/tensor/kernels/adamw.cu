// One fused AdamW step (decoupled weight decay, bias correction folded into the step size):
// m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²; p ← p − lr·wd·p − lr·(m/bc1) / (sqrt(v/bc2) + eps).
#include "common.cuh"

// Out of place, for f32 or bf16 weights (updated in f32, rounded to nearest even
// when stored as bf16) and f32 or bf16 gradients: the caller's parameter tensor stays unchanged.
template <typename P, typename G>
__device__ void adamw_oop(P* po, const P* pin, float* m, float* v, const G* g, long long n, float lr, float b1,
                          float b2, float eps, float wd, float bc1, float bc2, float gscale) {
    GRID_STRIDE(i, n) {
        float gi = ld(g, i) * gscale;
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float pi = ld(pin, i) * (1.0f - lr * wd);
        st(po, i, pi - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps));
    }
}

#define ADAMW_OOP(P, G, S)                                                                                    \
    extern "C" __global__ void adamw_oop_##S(P* po, const P* pin, float* m, float* v, const G* g, long long n, \
                                             float lr, float b1, float b2, float eps, float wd, float bc1,    \
                                             float bc2, float gscale) {                                       \
        adamw_oop(po, pin, m, v, g, n, lr, b1, b2, eps, wd, bc1, bc2, gscale);                                \
    }

ADAMW_OOP(float, float, f32_f32)
ADAMW_OOP(float, bf16_t, f32_bf16)
ADAMW_OOP(bf16_t, float, bf16_f32)
ADAMW_OOP(bf16_t, bf16_t, bf16_bf16)
