// Elementwise kernels: binary ops (b equal-shaped or broadcast over rows), affine, SiLU and its
// backward, SwiGLU, dtype casts. Math in f32.
#include "common.cuh"

template <typename T>
__device__ void binary(T* out, const T* a, const T* b, long long n, long long nb, int kind) {
    GRID_STRIDE(i, n) {
        float x = ld(a, i), y = ld(b, i % nb);
        st(out, i, kind == 0 ? x + y : (kind == 1 ? x - y : x * y));
    }
}

template <typename T>
__device__ void affine(T* out, const T* x, long long n, float s, float b) {
    GRID_STRIDE(i, n) st(out, i, s * ld(x, i) + b);
}

__device__ __forceinline__ float sigm(float x) { return 1.0f / (1.0f + __expf(-x)); }

template <typename T>
__device__ void silu(T* out, const T* x, long long n) {
    GRID_STRIDE(i, n) { float v = ld(x, i); st(out, i, v * sigm(v)); }
}

template <typename T>
__device__ void silu_bwd(T* dx, const T* x, const T* dy, long long n) {
    GRID_STRIDE(i, n) {
        float v = ld(x, i), s = sigm(v);
        st(dx, i, ld(dy, i) * s * (1.0f + v * (1.0f - s)));
    }
}

template <typename T>
__device__ void sigmoid(T* out, const T* x, long long n) {
    GRID_STRIDE(i, n) st(out, i, sigm(ld(x, i)));
}

template <typename T>
__device__ void sigmoid_bwd(T* dx, const T* y, const T* dy, long long n) {
    GRID_STRIDE(i, n) { float s = ld(y, i); st(dx, i, ld(dy, i) * s * (1.0f - s)); }
}

template <typename T>
__device__ void swiglu(T* out, const T* g, const T* u, long long n) {
    GRID_STRIDE(i, n) { float v = ld(g, i); st(out, i, v * sigm(v) * ld(u, i)); }
}

#define INSTANTIATE(T, S)                                                                                  \
    extern "C" __global__ void binary_##S(T* o, const T* a, const T* b, long long n, long long nb, int k) { \
        binary(o, a, b, n, nb, k);                                                                         \
    }                                                                                                      \
    extern "C" __global__ void affine_##S(T* o, const T* x, long long n, float s, float b) {              \
        affine(o, x, n, s, b);                                                                             \
    }                                                                                                      \
    extern "C" __global__ void silu_##S(T* o, const T* x, long long n) { silu(o, x, n); }                 \
    extern "C" __global__ void silu_bwd_##S(T* o, const T* x, const T* dy, long long n) {                 \
        silu_bwd(o, x, dy, n);                                                                             \
    }                                                                                                      \
    extern "C" __global__ void sigmoid_##S(T* o, const T* x, long long n) { sigmoid(o, x, n); }               \
    extern "C" __global__ void sigmoid_bwd_##S(T* o, const T* y, const T* dy, long long n) {                 \
        sigmoid_bwd(o, y, dy, n);                                                                          \
    }                                                                                                      \
    extern "C" __global__ void swiglu_##S(T* o, const T* g, const T* u, long long n) { swiglu(o, g, u, n); }

INSTANTIATE(float, f32)
INSTANTIATE(bf16_t, bf16)

extern "C" __global__ void cast_f32_bf16(bf16_t* o, const float* x, long long n) {
    GRID_STRIDE(i, n) st(o, i, x[i]);
}
extern "C" __global__ void cast_bf16_f32(float* o, const bf16_t* x, long long n) {
    GRID_STRIDE(i, n) o[i] = ld(x, i);
}
