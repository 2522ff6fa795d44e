// Row indexing for embeddings and expert dispatch: index_select (gather rows), index_add
// (scatter-add rows, f32 atomics), and the per-row gather / scatter of the last dimension.
#include "common.cuh"

template <typename T>
__device__ void index_select(T* out, const T* x, const unsigned* idx, long long n, long long row) {
    GRID_STRIDE(i, n) {
        long long r = i / row, c = i - r * row;
        out[i] = x[(long long)idx[r] * row + c];
    }
}

// out (f32, zeroed) [idx[r], c] += src[r, c].
template <typename T>
__device__ void index_add(float* out, const T* src, const unsigned* idx, long long n, long long row) {
    GRID_STRIDE(i, n) {
        long long r = i / row, c = i - r * row;
        atomicAdd(out + (long long)idx[r] * row + c, ld(src, i));
    }
}

// out[r, j] = x[r, idx[r·k + j]]
template <typename T>
__device__ void gather_last(T* out, const T* x, const unsigned* idx, long long n, long long k, long long e) {
    GRID_STRIDE(i, n) out[i] = x[(i / k) * e + idx[i]];
}

// out (f32, zeroed) [r, idx[r·k + j]] += dy[r, j]
template <typename T>
__device__ void scatter_last(float* out, const T* dy, const unsigned* idx, long long n, long long k, long long e) {
    GRID_STRIDE(i, n) atomicAdd(out + (i / k) * e + idx[i], ld(dy, i));
}

#define INSTANTIATE(T, S)                                                                                     \
    extern "C" __global__ void index_select_##S(T* o, const T* x, const unsigned* idx, long long n,          \
                                                long long row) {                                            \
        index_select(o, x, idx, n, row);                                                                      \
    }                                                                                                         \
    extern "C" __global__ void index_add_##S(float* o, const T* s, const unsigned* idx, long long n,         \
                                             long long row) {                                               \
        index_add(o, s, idx, n, row);                                                                         \
    }                                                                                                         \
    extern "C" __global__ void gather_last_##S(T* o, const T* x, const unsigned* idx, long long n,           \
                                               long long k, long long e) {                                  \
        gather_last(o, x, idx, n, k, e);                                                                      \
    }                                                                                                         \
    extern "C" __global__ void scatter_last_##S(float* o, const T* d, const unsigned* idx, long long n,       \
                                                long long k, long long e) {                                 \
        scatter_last(o, d, idx, n, k, e);                                                                     \
    }

INSTANTIATE(float, f32)
INSTANTIATE(bf16_t, bf16)
