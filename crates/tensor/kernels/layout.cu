// Layout kernels: one strided copy for permute / broadcast_to / narrow / cat, broadcasting
// binary arithmetic with arbitrary strides, and the sum that undoes a broadcast (reduce_to).
// Shapes and strides travel by value in a `Strided` (rank ≤ 8), element offsets as i64.
#include "common.cuh"

#define MAX_RANK 8
struct Strided {
    int rank;
    long long shape[MAX_RANK];
    long long s0[MAX_RANK];  // destination (or output) strides
    long long s1[MAX_RANK];  // first source
    long long s2[MAX_RANK];  // second source
};

// Offsets of linear index `i` of `g.shape` (row-major) under the three stride sets.
__device__ __forceinline__ void offsets(const Strided& g, long long i, long long& o0, long long& o1, long long& o2) {
    o0 = o1 = o2 = 0;
    for (int d = g.rank - 1; d >= 0; --d) {
        long long c = i % g.shape[d];
        i /= g.shape[d];
        o0 += c * g.s0[d];
        o1 += c * g.s1[d];
        o2 += c * g.s2[d];
    }
}

// The same in 32-bit arithmetic (64-bit division is several times slower on the GPU), for
// tensors whose element count and offsets fit in 31 bits.
__device__ __forceinline__ void offsets32(const Strided& g, unsigned i, unsigned& o0, unsigned& o1) {
    o0 = o1 = 0;
    for (int d = g.rank - 1; d >= 0; --d) {
        unsigned s = (unsigned)g.shape[d];
        unsigned c = i % s;
        i /= s;
        o0 += c * (unsigned)g.s0[d];
        o1 += c * (unsigned)g.s1[d];
    }
}

template <typename T>
__device__ void copy_strided(T* dst, const T* src, long long n, Strided g, int small) {
    if (small) {
        for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned)n; i += blockDim.x * gridDim.x) {
            unsigned o0, o1;
            offsets32(g, i, o0, o1);
            dst[o0] = src[o1];
        }
        return;
    }
    GRID_STRIDE(i, n) {
        long long o0, o1, o2;
        offsets(g, i, o0, o1, o2);
        dst[o0] = src[o1];
    }
}

// out (contiguous over g.shape) = a ∘ b, kinds 0 add, 1 sub, 2 mul, 3 div.
template <typename T>
__device__ void binary_strided(T* out, const T* a, const T* b, long long n, Strided g, int kind) {
    GRID_STRIDE(i, n) {
        long long o0, o1, o2;
        offsets(g, i, o0, o1, o2);
        float x = ld(a, o1), y = ld(b, o2);
        st(out, o0, kind == 0 ? x + y : kind == 1 ? x - y : kind == 2 ? x * y : x / y);
    }
}

// out[j] = Σ_r src[offset(j) + offset(r)]: g.shape = kept dims (s1 their strides in src, s0 in
// out), r runs over `red` (shape in red.shape, strides in red.s1). One thread per output.
template <typename T>
__device__ void reduce_strided(T* out, const T* src, long long n, Strided g, Strided red, long long rn) {
    GRID_STRIDE(j, n) {
        long long o0, o1, o2;
        offsets(g, j, o0, o1, o2);
        float acc = 0.0f;
        for (long long r = 0; r < rn; ++r) {
            long long q0, q1, q2;
            offsets(red, r, q0, q1, q2);
            acc += ld(src, o1 + q1);
        }
        st(out, o0, acc);
    }
}

#define INSTANTIATE(T, S)                                                                                       \
    extern "C" __global__ void copy_strided_##S(T* d, const T* s, long long n, Strided g, int small) {        \
        copy_strided(d, s, n, g, small);                                                                      \
    }                                                                                                           \
    extern "C" __global__ void binary_strided_##S(T* o, const T* a, const T* b, long long n, Strided g, int k) { \
        binary_strided(o, a, b, n, g, k);                                                                       \
    }                                                                                                           \
    extern "C" __global__ void reduce_strided_##S(T* o, const T* s, long long n, Strided g, Strided r,         \
                                                  long long rn) {                                               \
        reduce_strided(o, s, n, g, r, rn);                                                                      \
    }

INSTANTIATE(float, f32)
INSTANTIATE(bf16_t, bf16)
