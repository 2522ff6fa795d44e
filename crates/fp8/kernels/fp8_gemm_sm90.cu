// Block-scaled FP8 GEMM for Hopper (sm_90a): TMA + mbarrier pipeline + wgmma, warp-specialised.
//
//   Y[M,N] (bf16, row-major) = sum_kb (A[M,K] . B[N,K]^T)_kb * sa[kb][m] * sb[n/128][kb]
//
// A (activations, 1x128 scales) and B (weights, 128x128 block scales) are E4M3, K-contiguous.
// DeepSeek-V3 §3.3 "increasing accumulation precision": the tensor cores sum one 128-wide K block
// (four k32 wgmma steps) into a scratch fp32 fragment; the math warpgroup then multiplies it by
// the two scales and adds it into a separate fp32 accumulator on the CUDA cores (promotion every
// N_C = 128 elements), so the limited-precision tensor-core sum never spans more than one block.
//
// Layout of one CTA (128 * (1 + consumer warpgroups) threads, persistent over BM x 128 output
// tiles; a tile's 128 columns are one weight-scale block):
//   warpgroup 0: producer; one thread issues TMA loads (128B swizzle) into a ring of STAGES
//                shared-memory stages, guarded by `full` / `empty` mbarriers, and stores the K
//                block's weight scale into the stage;
//   warpgroups 1..: consumers (two; three for BM = 192); each owns 64 rows of a 64-row wave:
//                BM = 128: one wave, BM = 192: one wave of three warpgroups, BM = 256: two waves
//                (rows cw*64 and 128 + cw*64), each a wgmma m64n128k32 chain per K block.
// Consumer schedules (MODE): 0 issues a K block, waits for it and promotes it; 2 ("pipelined",
// one wave) keeps two K blocks in flight in two scratch fragments (wait_group 1).
// With CL = 2 the two CTAs of a cluster work on horizontally adjacent tiles (same rows; each
// loads half of the shared A tile, multicast into both CTAs' shared memory).
//
// Self-contained (no headers) so that NVRTC compiles it at run time; `cargo xtask kernels`
// compiles it with nvcc for sm_90a as a check.

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

/// An opaque CUtensorMap (128 bytes, aligned as CUDA 13 declares it), passed as a __grid_constant__ parameter.
struct __align__(128) TmaMap {
    u64 v[16];
};

__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 r;
    asm("{\n.reg .u64 t;\ncvta.to.shared.u64 t, %1;\ncvt.u32.u64 %0, t;\n}\n" : "=r"(r) : "l"(p));
    return r;
}

__device__ __forceinline__ u32 cluster_rank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}

__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

/// Arrive on the barrier at the same shared-memory offset in CTA `rank` of the cluster. The
/// default (CTA-scope release) semantics suffice: it only tells the peer's producer that this
/// CTA's wgmma reads of the stage are complete; a cluster-scope release fence here would cost
/// every consumer warp a cluster-wide memory fence per K block.
__device__ __forceinline__ void mbar_arrive_cluster(u32 bar, u32 rank) {
    asm volatile(
        "{\n.reg .b32 ra;\nmapa.shared::cluster.u32 ra, %0, %1;\n"
        "mbarrier.arrive.shared::cluster.b64 _, [ra];\n}\n" ::"r"(bar),
        "r"(rank)
        : "memory");
}

__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

/// Block until the barrier's phase of parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    u32 done;
    do {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    } while (!done);
}

/// 2-D TMA load of the box at (c0 = inner, c1 = outer) into shared memory, completing on `bar`.
__device__ __forceinline__ void tma_load(u32 dst, const TmaMap* map, int c0, int c1, u32 bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
            dst),
        "l"(map), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}

/// As `tma_load`, written to the same offset in every CTA of `mask` (and signalling each one's `bar`).
__device__ __forceinline__ void tma_load_multicast(u32 dst, const TmaMap* map, int c0, int c1, u32 bar, u16 mask) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster "
        "[%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
        "l"(map), "r"(c0), "r"(c1), "r"(bar), "h"(mask)
        : "memory");
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

/// Keeps the compiler from moving reads or writes of an accumulator register across this point
/// (wgmma writes its fragment asynchronously, behind the compiler's back).
__device__ __forceinline__ void fence_reg(float& r) { asm volatile("" : "+f"(r)::"memory"); }

/// wgmma shared-memory descriptor of a K-major tile with 128-byte rows in 128B-swizzle layout:
/// start address >> 4, stride between 8-row core groups 1024 B, swizzle mode 1 (128B).
__device__ __forceinline__ u64 smem_desc(u32 addr) {
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)1 << 16) | ((u64)(1024 >> 4) << 32) | ((u64)1 << 62);
}

__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ void st_global_b32(void* p, u32 v) {
    asm volatile("st.global.b32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ void st_global_v4(void* p, u32 a, u32 b, u32 c, u32 d) {
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "r"(a), "r"(b), "r"(c), "r"(d) : "memory");
}

// ---- wgmma m64nNk32 E4M3 x E4M3 -> f32 wrappers (operand lists written out per N) ----

/// `d[64] (+)= A(64×32, smem) · B(128×32, smem)ᵀ`, E4M3 in, fp32 accumulate; `acc = 0` overwrites d.
__device__ __forceinline__ void wgmma_n128(float* d, u64 da, u64 db, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
        "{"
        "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
        "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
        "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63"
        "}, %64, %65, p, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(da), "l"(db), "r"(acc));
}

constexpr int BK = 128;
/// Tile width: one 128-column weight-scale block (m64n128 wgmma).
constexpr int BN = 128;

struct Params {
    const float* sb;  // weight scales [N/128][sb_ld], K-major
    u16* y;           // output, bf16 [M][N]
    int m, n, k;
    int sb_ld;
    int group;  // output tiles are visited in column groups of this many cluster units (L2 reuse)
};

/// Unit `u` of the persistent walk over a `rows` x `cols` grid of units -> (unit row, unit
/// column): column groups of `group` units, row-major inside a group, so concurrently running
/// CTAs share A rows and B columns.
__device__ __forceinline__ void unit_of(int u, int rows, int cols, int group, int& ur, int& uc) {
    int per_group = rows * group;
    int g = u / per_group;
    int first = g * group;
    int width = min(group, cols - first);
    int in = u - g * per_group;
    ur = in / width;
    uc = first + in % width;
}

/// The tile grid: row blocks, column blocks and the cluster units over them. A cluster of CL
/// CTAs covers CL horizontally adjacent tiles (they share, and multicast, the A tile).
template <int BM, int CL>
struct Grid {
    int mb_count, nb_count, rows, cols;
    __device__ __forceinline__ Grid(const Params& p) {
        mb_count = (p.m + BM - 1) / BM;
        nb_count = (p.n + BN - 1) / BN;
        rows = mb_count;
        cols = (nb_count + CL - 1) / CL;
    }
    __device__ __forceinline__ int units() const { return rows * cols; }
    /// This CTA's (row block, column block) of unit `u`; the column block may lie one past the
    /// edge for the second CTA of a cluster (its loads are clamped, its results dropped).
    __device__ __forceinline__ void tile(int u, int group, u32 rank, int& mb, int& nb) const {
        int uc;
        unit_of(u, rows, cols, group, mb, uc);
        nb = uc * CL + (int)rank;
    }
};

/// Shared-memory addresses of the stage ring.
struct Ring {
    u32 a, b, bars;     // A stages, B stages, full[STAGES] then empty[STAGES]
    const float* sa;    // activation-scale stages (generic pointer)
    float* sb;          // the K block's weight scale per stage: [STAGES][4] (element 0 used)
};

/// Issue the four k32 wgmma steps of one 128-wide K block for the 64 A rows at byte offset
/// `a_off` of the stage into `tmp` (one commit group).
template <int BM>
__device__ __forceinline__ void issue_mma(const Ring& r, int stage, int a_off, float* tmp) {
    const u64 da = smem_desc(r.a + stage * (BM * BK) + a_off);
    const u64 db = smem_desc(r.b + stage * (BN * BK));
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) fence_reg(tmp[i]);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < BK / 32; ++k) wgmma_n128(tmp, da + 2 * k, db + 2 * k, k);
    wgmma_commit();
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) fence_reg(tmp[i]);
}

/// Hand a stage back to the producer(s): one arrival per consumer warp on every cluster CTA's
/// `empty` barrier (the stage's shared operand was multicast into all of them).
template <int STAGES, int CL>
__device__ __forceinline__ void release(const Ring& r, int stage) {
    __syncwarp();
    const u32 empty = r.bars + 8 * (STAGES + stage), lane = threadIdx.x % 32;
    if (CL == 1) {
        if (lane == 0) mbar_arrive(empty);
    } else if (lane < CL) {
        mbar_arrive_cluster(empty, lane);  // lane q signals CTA q
    }
}

/// Promotion (DeepSeek-V3 §3.3.2): acc += (A·Bᵀ)_kb · sa · sb in fp32 on the CUDA cores (`a0`,
/// `a1`: the activation scales of this thread's two rows; `b`: the tile's weight-block scale).
__device__ __forceinline__ void promote(float* acc, float* tmp, float a0, float a1, float b) {
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) fence_reg(tmp[i]);
    const float s0 = a0 * b, s1 = a1 * b;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
        acc[4 * j + 0] += s0 * tmp[4 * j + 0];
        acc[4 * j + 1] += s0 * tmp[4 * j + 1];
        acc[4 * j + 2] += s1 * tmp[4 * j + 2];
        acc[4 * j + 3] += s1 * tmp[4 * j + 3];
    }
}

__device__ __forceinline__ void advance(int& stage, u32& phase, int stages) {
    if (++stage == stages) {
        stage = 0;
        phase ^= 1;
    }
}

/// Consumer warpgroups per CTA and the 64-row waves each one runs per K block: BM = 128 and 256
/// have two warpgroups (one or two waves: rows cw*64 and 128 + cw*64), BM = 192 three.
template <int BM>
struct Shape {
    static constexpr int wgs = BM == 192 ? 3 : 2;
    static constexpr int waves = BM / (64 * wgs);
};

/// The tile's bf16 output for this thread's rows r0 and r0 + 8. In the fragment a quad of lanes
/// holds each 8-column chunk of a row, 4 bytes per lane (columns 8j + 2(lane%4) .. +1).
/// WIDE, for warps whose 16 rows and the tile's columns lie inside the matrix: a 4x4 transpose of
/// the packed words across the quad (two shuffle rounds) gives each lane whole chunks, stored 16
/// bytes at a time (a quarter of the store instructions, full 32-byte sectors). Otherwise, and for
/// edge warps, 4-byte pairs straight from the fragment (unguarded inside the matrix). On the H200
/// WIDE made the 128x128 pipelined variant 5-10 % faster and the 192x128 and 256x128 ones 4-6 %
/// slower at 8192^3 (docs/PERF.md), so only the former uses it.
template <bool WIDE>
__device__ __forceinline__ void store_tile(const Params& p, const float* acc, int r0, int n0) {
    const int lane = threadIdx.x % 32, r1 = r0 + 8, c0 = n0 + 2 * (lane % 4);
    if (!WIDE && r1 < p.m && n0 + BN <= p.n) {
        u16* y0 = p.y + (size_t)r0 * p.n + c0;
        u16* y1 = y0 + (size_t)8 * p.n;
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
            st_global_b32(y0 + 8 * j, pack_bf16(acc[4 * j], acc[4 * j + 1]));
            st_global_b32(y1 + 8 * j, pack_bf16(acc[4 * j + 2], acc[4 * j + 3]));
        }
        return;
    }
    if (WIDE && r0 - lane / 4 + 15 < p.m && n0 + BN <= p.n) {  // warp-uniform: the shuffles need all lanes
        const int q = lane % 4;
        const bool hi = q & 2, odd = q & 1;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            u16* y = p.y + (size_t)(r0 + 8 * h) * p.n + n0 + 8 * q;
#pragma unroll
            for (int t = 0; t < BN / 32; ++t) {
                // w[i]: this lane's word of chunk 4t + i; lane q ends with chunk 4t + q.
                u32 w[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) w[i] = pack_bf16(acc[4 * (4 * t + i) + 2 * h], acc[4 * (4 * t + i) + 2 * h + 1]);
                // Round 1 (lanes q, q^2): the low lanes keep chunks 0-1 and take the partner's, the
                // high lanes chunks 2-3.
                const u32 s0 = __shfl_xor_sync(0xffffffffu, hi ? w[0] : w[2], 2);
                const u32 s1 = __shfl_xor_sync(0xffffffffu, hi ? w[1] : w[3], 2);
                const u32 b0 = hi ? s0 : w[0], b1 = hi ? s1 : w[1], b2 = hi ? w[2] : s0, b3 = hi ? w[3] : s1;
                // Round 2 (lanes q, q^1): b0, b2 hold chunk 2(q/2) of lanes q&1 and (q&1)|2, b1, b3 the
                // next chunk; even lanes keep the first and take the partner's words of it.
                const u32 u0 = __shfl_xor_sync(0xffffffffu, odd ? b0 : b1, 1);
                const u32 u1 = __shfl_xor_sync(0xffffffffu, odd ? b2 : b3, 1);
                st_global_v4(y + 32 * t, odd ? u0 : b0, odd ? b1 : u0, odd ? u1 : b2, odd ? b3 : u1);
            }
        }
        return;
    }
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
        const int col = c0 + 8 * j;
        if (col < p.n) {
            if (r0 < p.m) st_global_b32(p.y + (size_t)r0 * p.n + col, pack_bf16(acc[4 * j], acc[4 * j + 1]));
            if (r1 < p.m) st_global_b32(p.y + (size_t)r1 * p.n + col, pack_bf16(acc[4 * j + 2], acc[4 * j + 3]));
        }
    }
}

/// One consumer warpgroup's work on one tile: all K blocks, promotion, bf16 epilogue.
///
/// MODE 0: per K block and wave, issue the block's wgmma into `tmp`, wait for it, promote; the
/// other consumer warpgroup(s) keep the tensor cores busy meanwhile.
/// MODE 2 (one wave): two scratch fragments; block kb+1 is issued before block kb is promoted
/// (`wgmma.wait_group 1`), so this warpgroup's own work stays queued on the tensor cores while it
/// promotes. The weight scale of each K block comes from the stage (written by the producer).
template <int BM, int STAGES, int CL, int MODE, bool WIDE>
__device__ __forceinline__ void consume_tile(const Params& p, const Ring& r, int mb, int nb, bool keep, int cw,
                                             int& stage, u32& phase) {
    constexpr int R = BN / 2;  // fragment registers per thread (m64 x BN over 128 threads)
    constexpr int WAVES = Shape<BM>::waves, WROWS = 64 * Shape<BM>::wgs;
    const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int row = cw * 64 + warp * 16 + lane / 4;  // this thread's first row in the wave (and row + 8)
    const int kbs = p.k / BK;

    float acc[WAVES * R];
#pragma unroll
    for (int i = 0; i < WAVES * R; ++i) acc[i] = 0.f;

    if constexpr (MODE == 0) {
        float tmp[R];
        for (int kb = 0; kb < kbs; ++kb) {
            mbar_wait(r.bars + 8 * stage, phase);
            const float b = r.sb[stage * 4];
#pragma unroll
            for (int w = 0; w < WAVES; ++w) {
                // Scales are read before the stage can be released.
                const float a0 = r.sa[stage * BM + w * WROWS + row], a1 = r.sa[stage * BM + w * WROWS + row + 8];
                issue_mma<BM>(r, stage, (w * WROWS + cw * 64) * BK, tmp);
                wgmma_wait<0>();
                if (w == WAVES - 1) release<STAGES, CL>(r, stage);
                promote(acc + w * R, tmp, a0, a1, b);
            }
            advance(stage, phase, STAGES);
        }
    } else {
        static_assert(MODE == 2 && WAVES == 1, "the pipelined consumer runs one wave");
        float t0[R], t1[R];
        // Every path keeps the same blocks in flight at each merge point (ptxas tracks the
        // wgmma pipeline per register set, not per path): block kb in t0 at the loop head.
        int st = stage, prev;
        u32 ph = phase;
        float a0, a1, b0, c0, c1, d0;
        auto issue = [&](float* t, float& x0, float& x1, float& y) {
            mbar_wait(r.bars + 8 * st, ph);
            y = r.sb[st * 4];
            x0 = r.sa[st * BM + row];
            x1 = r.sa[st * BM + row + 8];
            issue_mma<BM>(r, st, cw * 64 * BK, t);
            prev = st;
            advance(st, ph, STAGES);
        };
        int rel0 = st;
        issue(t0, a0, a1, b0);
        int kb = 0;
        for (; kb + 2 < kbs; kb += 2) {
            issue(t1, c0, c1, d0);
            const int rel1 = prev;
            wgmma_wait<1>();
            release<STAGES, CL>(r, rel0);
            promote(acc, t0, a0, a1, b0);
            issue(t0, a0, a1, b0);
            rel0 = prev;
            wgmma_wait<1>();
            release<STAGES, CL>(r, rel1);
            promote(acc, t1, c0, c1, d0);
        }
        if (kb + 1 < kbs) {
            issue(t1, c0, c1, d0);
            wgmma_wait<1>();
            release<STAGES, CL>(r, rel0);
            promote(acc, t0, a0, a1, b0);
            wgmma_wait<0>();
            release<STAGES, CL>(r, prev);
            promote(acc, t1, c0, c1, d0);
        } else {
            wgmma_wait<0>();
            release<STAGES, CL>(r, rel0);
            promote(acc, t0, a0, a1, b0);
        }
        stage = st;
        phase = ph;
    }

    if (!keep) return;
#pragma unroll
    for (int w = 0; w < WAVES; ++w) store_tile<WIDE>(p, acc + w * R, mb * BM + w * WROWS + row, nb * BN);
}

/// Registers per thread after `setmaxnreg`: the producer warpgroup gives its share to the
/// consumer warpgroups (65536 per SM in all, multiples of 8).
template <int BM>
struct Regs {
    static constexpr int producer = 40, consumer = Shape<BM>::wgs == 2 ? 232 : 152;
};

template <int BM, int STAGES, int CL, int MODE, bool WIDE>
__device__ __forceinline__ void gemm_body(const TmaMap* ta, const TmaMap* tb, const TmaMap* tsa, const Params& p) {
    constexpr u32 A_BYTES = BM * BK, B_BYTES = BN * BK, SA_BYTES = BM * 4;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const u32 raw = smem_addr(smem_raw);
    // Warp-uniform (the shuffle lets the compiler keep the descriptors in uniform registers).
    const u32 base = __shfl_sync(0xffffffffu, (raw + 1023) & ~1023u, 0);
    Ring r;
    r.a = base;
    r.b = r.a + STAGES * A_BYTES;
    const u32 s_sa = r.b + STAGES * B_BYTES;
    r.bars = s_sa + STAGES * SA_BYTES;
    r.sa = reinterpret_cast<const float*>(smem_raw + (s_sa - raw));
    r.sb = reinterpret_cast<float*>(smem_raw + (r.bars + 16 * STAGES - raw));

    const int wg = threadIdx.x / 128;
    const u32 rank = CL == 1 ? 0 : cluster_rank();
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(r.bars + 8 * s, 1);
            // every consumer warp of every CTA in the cluster
            mbar_init(r.bars + 8 * (STAGES + s), CL * Shape<BM>::wgs * 4);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    if (CL > 1) {
        cluster_sync();
    } else {
        __syncthreads();
    }

    const Grid<BM, CL> grid(p);
    const int units = grid.units(), kbs = p.k / BK;
    const int cid = blockIdx.x / CL, clusters = gridDim.x / CL;

    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(Regs<BM>::producer));
        if (threadIdx.x == 0) {
            int stage = 0;
            u32 phase = 0;
            for (int u = cid; u < units; u += clusters) {
                int mb, nb;
                grid.tile(u, p.group, rank, mb, nb);
                // A CTA past the last block loads the last one again; its results are dropped.
                const int m0 = min(mb, grid.mb_count - 1) * BM, n0 = min(nb, grid.nb_count - 1) * BN;
                // The weight scales of the tile's 128-column block, one K block ahead, stored into
                // the stage before the arrival that completes it (release).
                const float* sb = p.sb + (size_t)(n0 / BN) * p.sb_ld;
                float v = __ldg(sb);
                for (int kb = 0; kb < kbs; ++kb) {
                    const u32 full = r.bars + 8 * stage, empty = r.bars + 8 * (STAGES + stage);
                    const float w = kb + 1 < kbs ? __ldg(sb + kb + 1) : 0.f;
                    mbar_wait(empty, phase ^ 1);
                    r.sb[stage * 4] = v;
                    v = w;
                    mbar_expect_tx(full, A_BYTES + B_BYTES + SA_BYTES);
                    if (CL == 1) {
                        tma_load(r.a + stage * A_BYTES, ta, kb * BK, m0, full);
                    } else {
                        tma_load_multicast(r.a + stage * A_BYTES + rank * (A_BYTES / CL), ta, kb * BK,
                                           m0 + (int)rank * (BM / CL), full, (u16)((1 << CL) - 1));
                    }
                    tma_load(r.b + stage * B_BYTES, tb, kb * BK, n0, full);
                    tma_load(s_sa + stage * SA_BYTES, tsa, m0, kb, full);
                    advance(stage, phase, STAGES);
                }
            }
        }
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(Regs<BM>::consumer));
        // Warp-uniform as far as the compiler can tell (the shuffle), so that the A descriptors,
        // which depend on it, are computed in uniform registers (no per-thread 64-bit adds and
        // R2UR moves before each wgmma).
        const int cw = __shfl_sync(0xffffffffu, wg - 1, 0);
        int stage = 0;
        u32 phase = 0;
        for (int u = cid; u < units; u += clusters) {
            int mb, nb;
            grid.tile(u, p.group, rank, mb, nb);
            const bool keep = mb < grid.mb_count && nb < grid.nb_count;
            nb = min(nb, grid.nb_count - 1);
            consume_tile<BM, STAGES, CL, MODE, WIDE>(p, r, mb, nb, keep, cw, stage, phase);
        }
    }
    // No CTA may leave while its cluster peer can still write into its shared memory or barriers.
    if (CL > 1) cluster_sync();
}

// Variants: fp8_gemm_m{BM}_n128_s{STAGES}_c{CL}{a|b}{SUFFIX}: CL CTAs per cluster (a: multicasting
// the A tile along N; b: one CTA); SUFFIX _p for the pipelined consumer; WIDE: 16-byte stores
// (store_tile). 128 * (1 + consumer
// warpgroups) threads; dynamic shared memory STAGES * (BM*128 + 128*128 + BM*4) + 32 * STAGES +
// 1024 bytes (the host computes the same).
#define VARIANT(BM, STAGES, CL, AB, SUFFIX, MODE, WIDE)                                                               \
    extern "C" __global__ void __launch_bounds__(128 * (1 + Shape<BM>::wgs), 1)                                       \
        fp8_gemm_m##BM##_n128_s##STAGES##_c##CL##AB##SUFFIX(                                                          \
            const __grid_constant__ TmaMap ta, const __grid_constant__ TmaMap tb, const __grid_constant__ TmaMap tsa, \
            const Params p) {                                                                                         \
        gemm_body<BM, STAGES, CL, MODE, WIDE>(&ta, &tb, &tsa, p);                                                     \
    }

VARIANT(128, 6, 1, b, _p, 2, true)
VARIANT(192, 5, 1, b, , 0, false)
VARIANT(256, 4, 2, a, , 0, false)
