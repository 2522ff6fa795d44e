// Interleaved rotary embedding: pairs (x[2i], x[2i+1]) of each head of x [B, S, H, D] rotate by
// the angle of their token's position; `sign` −1 applies the inverse rotation (the backward).
#include "common.cuh"

template <typename T>
__device__ void rope(T* y, const T* x, const unsigned* pos, const float* cs, const float* sn, long long n_pairs,
                     long long h, long long half, float sign) {
    GRID_STRIDE(q, n_pairs) {
        long long i = q % half, tok = q / (half * h);
        long long f = (long long)pos[tok] * half + i;
        float c = cs[f], s = sign * sn[f];
        float a = ld(x, 2 * q), b = ld(x, 2 * q + 1);
        st(y, 2 * q, a * c - b * s);
        st(y, 2 * q + 1, a * s + b * c);
    }
}

#define INSTANTIATE(T, S)                                                                                     \
    extern "C" __global__ void rope_##S(T* y, const T* x, const unsigned* pos, const float* cs, const float* sn, \
                                        long long n, long long h, long long half, float sign) {               \
        rope(y, x, pos, cs, sn, n, h, half, sign);                                                            \
    }

INSTANTIATE(float, f32)
INSTANTIATE(bf16_t, bf16)
