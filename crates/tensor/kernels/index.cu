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

// out[r, c] = src_row[r] < 0 ? 0 : x[src_row[r], c] (padding expert groups to one length).
template <typename T>
__device__ void gather_rows(T* out, const T* x, const long long* src_row, long long n, long long row) {
    GRID_STRIDE(i, n) {
        long long r = i / row, c = i - r * row, s = src_row[r];
        out[i] = s < 0 ? (T)0 : x[s * row + c];
    }
}

// Stack equal-sized buffers given by address into one: out[i] = bufs[i / per][i % per]; `scatter`
// reverses the direction (one contiguous source into the separate buffers).
template <typename T>
__device__ void stack_bufs(T* flat, const unsigned long long* bufs, long long per, long long n, int scatter) {
    GRID_STRIDE(i, n) {
        T* b = (T*)bufs[i / per];
        if (scatter) b[i % per] = flat[i];
        else flat[i] = b[i % per];
    }
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

#define INSTANTIATE_ROWS(T, S)                                                                                \
    extern "C" __global__ void gather_rows_##S(T* o, const T* x, const long long* src, long long n, long long row) { \
        gather_rows(o, x, src, n, row);                                                                       \
    }                                                                                                         \
    extern "C" __global__ void stack_bufs_##S(T* f, const unsigned long long* b, long long per, long long n,  \
                                              int scatter) {                                                  \
        stack_bufs(f, b, per, n, scatter);                                                                    \
    }

INSTANTIATE_ROWS(float, f32)
INSTANTIATE_ROWS(bf16_t, bf16)
INSTANTIATE(float, f32)
INSTANTIATE(bf16_t, bf16)
