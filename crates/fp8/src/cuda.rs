//! Block-scaled FP8 GEMM on the GPU through cuBLASLt (feature `cuda`; Hopper, sm_90).
//!
//! `Y[M,N] = A[M,K] · B[N,K]ᵀ` with E4M3 operands: `A` (activations) carries 1×128 scales
//! `[M, K/128]`, `B` (weights) 128×128 block scales `[N/128, K/128]`, both fp32 (`scale_inv`,
//! dequantised = fp8 · scale). The products are summed per 128-wide K block and promoted into an
//! fp32 accumulator with both scales, as in the CPU reference [`gemm`](crate::gemm()); the output
//! is bf16 or f32.
//!
//! cuBLAS is column-major: a row-major `[r, c]` buffer is the column-major `c × r` matrix, so the
//! row-major product is computed as its transpose, with both operands K-contiguous (the "TN"
//! layout that FP8 tensor-core GEMMs need):
//! ```text
//! D (N × M, ld N)   = op(Ā) · op(B̄)                    D's bytes are row-major Y[M, N]
//! Ā = B's bytes as K × N (ld K), op = T    scale mode BLK128x128_32F: K-major, [N/128][L4]
//! B̄ = A's bytes as K × M (ld K), op = N    scale mode VEC128_32F:     M-major, [K/128][M]
//! ```
//! (`L4` = K/128 rounded up to a multiple of 4, the column stride cuBLAS requires.) [`GpuGemm`]
//! uploads [`BlockQuant`] operands into these layouts; a [`GemmPlan`] holds the descriptors and
//! the heuristic's candidate algorithms for one shape, so repeated products only launch.
//! [`GemmPlan::enumerate`] adds every configuration cuBLASLt accepts beyond the heuristic's
//! (algorithm ids × tiles × stages × cluster shapes × CTA swizzling, each checked by
//! `cublasLtMatmulAlgoCheck`), and [`GemmPlan::tune`] times the candidates once and keeps the
//! fastest.
//!
//! Shapes: K and N must be multiples of 128 and M a multiple of 16; anything else is an error.
//!
//! [`sm90`] holds the crate's own Hopper kernel for the same product ([`Sm90Gemm`]: TMA, wgmma,
//! fp32 promotion per K block), on the same uploaded operands.

use std::ffi::c_void;
use std::mem::size_of;
use std::sync::Arc;

use cudarc::cublaslt::result as ltr;
use cudarc::cublaslt::sys::{
    self as lt, cublasComputeType_t, cublasLtClusterShape_t as Cluster, cublasLtMatmulAlgoCapAttributes_t as Cap,
    cublasLtMatmulAlgoConfigAttributes_t as AlgoAttr, cublasLtMatmulDescAttributes_t as Attr,
    cublasLtMatmulMatrixScale_t as ScaleMode, cudaDataType_t as Dt,
};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;

use crate::{BLOCK, BlockQuant, Fp8Error, Result};

#[path = "sm90.rs"]
pub mod sm90;
pub use sm90::{Sm90Config, Sm90Gemm};

/// Default cuBLASLt workspace (NVIDIA's recommendation for Hopper: 32 MiB); see
/// [`GpuGemm::with_workspace`] for another size.
pub const WORKSPACE_BYTES: usize = 32 << 20;
/// Heuristic candidates requested per plan.
pub const MAX_ALGOS: usize = 16;

fn gpu_err(op: &str, shape: &str, detail: impl std::fmt::Debug) -> Fp8Error {
    Fp8Error::Gpu { op: op.into(), shape: shape.into(), detail: format!("{detail:?}") }
}

fn check(status: lt::cublasStatus_t, op: &str, shape: &str) -> Result<()> {
    status.result().map_err(|e| gpu_err(op, shape, e))
}

/// Which product a plan writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutLayout {
    /// `Y = A·Bᵀ`, row-major `[M, N]` (cuBLAS: Ā = B with BLK128x128 scales, B̄ = A with VEC128).
    RowMajor,
    /// `Yᵀ = B·Aᵀ`, row-major `[N, M]` (cuBLAS: Ā = A with VEC128 scales, B̄ = B with BLK128x128);
    /// the same uploaded operands, the other operand order.
    Transposed,
}

/// Output element type of a GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    /// bf16 (rounded to nearest even from the fp32 accumulator).
    Bf16,
    /// f32.
    F32,
}

impl OutType {
    fn dt(self) -> Dt {
        match self {
            OutType::Bf16 => Dt::CUDA_R_16BF,
            OutType::F32 => Dt::CUDA_R_32F,
        }
    }
}

/// An E4M3 matrix on the device with its scales in the layout cuBLASLt reads (see the module doc).
pub struct GpuFp8 {
    /// Rows (`M` for activations, `N` for weights).
    pub rows: usize,
    /// Columns (`K`).
    pub cols: usize,
    /// Block shape: `(1, 128)` activations or `(128, 128)` weights.
    pub block: (usize, usize),
    data: CudaSlice<u8>,
    scales: CudaSlice<f32>,
}

impl std::fmt::Debug for GpuFp8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuFp8")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("block", &self.block)
            .finish()
    }
}

/// A device matrix in the output type of a GEMM, row-major `[rows, cols]`.
pub enum GpuMatrix {
    /// bf16 elements.
    Bf16(CudaSlice<bf16>),
    /// f32 elements.
    F32(CudaSlice<f32>),
}

impl GpuMatrix {
    /// The element type.
    pub fn out_type(&self) -> OutType {
        match self {
            GpuMatrix::Bf16(_) => OutType::Bf16,
            GpuMatrix::F32(_) => OutType::F32,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            GpuMatrix::Bf16(s) => s.len(),
            GpuMatrix::F32(s) => s.len(),
        }
    }

    /// Whether the matrix holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copy to the host as f32 (bf16 widens exactly); waits for the copy.
    pub fn to_host_f32(&self, stream: &Arc<CudaStream>) -> Result<Vec<f32>> {
        let shape = format!("[{}]", self.len());
        Ok(match self {
            GpuMatrix::Bf16(s) => {
                stream.clone_dtoh(s).map_err(|e| gpu_err("download", &shape, e))?.into_iter().map(f32::from).collect()
            }
            GpuMatrix::F32(s) => stream.clone_dtoh(s).map_err(|e| gpu_err("download", &shape, e))?,
        })
    }

    fn ptr_mut(&mut self, stream: &CudaStream) -> u64 {
        match self {
            GpuMatrix::Bf16(s) => s.device_ptr_mut(stream).0,
            GpuMatrix::F32(s) => s.device_ptr_mut(stream).0,
        }
    }
}

struct Handle(lt::cublasLtHandle_t);
impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtCreate and destroyed once.
        let _ = unsafe { ltr::destroy_handle(self.0) };
    }
}

struct Desc(lt::cublasLtMatmulDesc_t);
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulDescCreate and destroyed once.
        let _ = unsafe { ltr::destroy_matmul_desc(self.0) };
    }
}

impl Desc {
    fn set<T>(&self, attr: Attr, v: &T, op: &str, shape: &str) -> Result<()> {
        // SAFETY: `v` is a live value of the size the attribute reads.
        let st =
            unsafe { lt::cublasLtMatmulDescSetAttribute(self.0, attr, v as *const T as *const c_void, size_of::<T>()) };
        check(st, op, shape)
    }
}

struct Layout(lt::cublasLtMatrixLayout_t);
impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatrixLayoutCreate and destroyed once.
        let _ = unsafe { ltr::destroy_matrix_layout(self.0) };
    }
}

struct Pref(lt::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulPreferenceCreate and destroyed once.
        let _ = unsafe { ltr::destroy_matmul_pref(self.0) };
    }
}

/// A cuBLASLt handle, its stream and workspace on one GPU.
pub struct GpuGemm {
    stream: Arc<CudaStream>,
    handle: Handle,
    workspace: CudaSlice<u8>,
}

impl GpuGemm {
    /// Device 0, or `None` when no CUDA driver, cuBLASLt or GPU is present (tests skip then).
    pub fn try_default() -> Option<GpuGemm> {
        // SAFETY: only probe whether the libraries can be loaded.
        if !unsafe { cudarc::driver::sys::is_culib_present() && lt::is_culib_present() } {
            return None;
        }
        GpuGemm::new(0).ok()
    }

    /// Open device `ordinal`: a stream, a cuBLASLt handle and a [`WORKSPACE_BYTES`] workspace.
    pub fn new(ordinal: usize) -> Result<GpuGemm> {
        GpuGemm::with_workspace(ordinal, WORKSPACE_BYTES)
    }

    /// [`GpuGemm::new`] with a workspace of `bytes` (plans offer cuBLASLt at most this much).
    pub fn with_workspace(ordinal: usize, bytes: usize) -> Result<GpuGemm> {
        let shape = format!("device {ordinal}");
        let ctx = CudaContext::new(ordinal).map_err(|e| gpu_err("CudaContext::new", &shape, e))?;
        let stream = ctx.new_stream().map_err(|e| gpu_err("new_stream", &shape, e))?;
        let handle = Handle(ltr::create_handle().map_err(|e| gpu_err("cublasLtCreate", &shape, e))?);
        let workspace = stream.alloc_zeros::<u8>(bytes.max(1)).map_err(|e| gpu_err("workspace", &shape, e))?;
        Ok(GpuGemm { stream, handle, workspace })
    }

    /// The device's name and the cuBLASLt version, for reports.
    pub fn describe(&self) -> Result<String> {
        let ctx = self.stream.context();
        let name = ctx.name().map_err(|e| gpu_err("device name", "", e))?;
        let (maj, min) = ctx.compute_capability().map_err(|e| gpu_err("compute capability", "", e))?;
        // SAFETY: a plain query of the loaded library.
        let v = unsafe { lt::cublasLtGetVersion() };
        Ok(format!("{name} (sm_{maj}{min}), cuBLASLt {v}"))
    }

    /// The workspace size in bytes.
    pub fn workspace_bytes(&self) -> usize {
        self.workspace.len()
    }

    /// Replace the workspace by one of `bytes` (plans made before keep their algorithms; one
    /// that needs more than the new size fails at launch).
    pub fn resize_workspace(&mut self, bytes: usize) -> Result<()> {
        self.synchronize()?;
        let shape = format!("{bytes} bytes");
        self.workspace = self.stream.alloc_zeros::<u8>(bytes.max(1)).map_err(|e| gpu_err("workspace", &shape, e))?;
        Ok(())
    }

    /// The stream every upload and GEMM runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Wait for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| gpu_err("synchronize", "", e))
    }

    /// Upload a 1×128-tile activation `[M, K]` (M a multiple of 16, K of 128); its scales are
    /// stored M-major `[K/128][M]`.
    pub fn upload_act(&self, q: &BlockQuant) -> Result<GpuFp8> {
        let (m, k) = (q.rows, q.cols);
        check_block("upload_act", q, (1, BLOCK))?;
        check_dims("upload_act", &[("M", m, 16), ("K", k, BLOCK)])?;
        let lk = k / BLOCK;
        let mut s = vec![0f32; lk * m];
        for i in 0..m {
            for kb in 0..lk {
                s[kb * m + i] = q.scale_inv[i * lk + kb];
            }
        }
        self.upload(q, &s, "upload_act")
    }

    /// Upload a 128×128-block weight `[N, K]` (N and K multiples of 128); its scales are stored
    /// K-major `[N/128][L4]`, zero-padded to a column stride `L4` that is a multiple of 4.
    pub fn upload_weight(&self, q: &BlockQuant) -> Result<GpuFp8> {
        let (n, k) = (q.rows, q.cols);
        check_block("upload_weight", q, (BLOCK, BLOCK))?;
        check_dims("upload_weight", &[("N", n, BLOCK), ("K", k, BLOCK)])?;
        let (ln, lk) = (n / BLOCK, k / BLOCK);
        let l4 = lk.next_multiple_of(4);
        let mut s = vec![0f32; ln * l4];
        for nb in 0..ln {
            s[nb * l4..nb * l4 + lk].copy_from_slice(&q.scale_inv[nb * lk..(nb + 1) * lk]);
        }
        self.upload(q, &s, "upload_weight")
    }

    fn upload(&self, q: &BlockQuant, scales: &[f32], op: &str) -> Result<GpuFp8> {
        let shape = format!("[{}, {}]", q.rows, q.cols);
        let bytes: Vec<u8> = q.data.iter().map(|v| v.to_bits()).collect();
        let data = self.stream.clone_htod(&bytes).map_err(|e| gpu_err(op, &shape, e))?;
        let scales = self.stream.clone_htod(scales).map_err(|e| gpu_err(op, &shape, e))?;
        Ok(GpuFp8 { rows: q.rows, cols: q.cols, block: q.block, data, scales })
    }

    /// An uninitialised-free (zeroed) output `[m, n]` of type `out`.
    pub fn alloc_out(&self, m: usize, n: usize, out: OutType) -> Result<GpuMatrix> {
        let shape = format!("[{m}, {n}]");
        Ok(match out {
            OutType::Bf16 => {
                GpuMatrix::Bf16(self.stream.alloc_zeros(m * n).map_err(|e| gpu_err("alloc_out", &shape, e))?)
            }
            OutType::F32 => {
                GpuMatrix::F32(self.stream.alloc_zeros(m * n).map_err(|e| gpu_err("alloc_out", &shape, e))?)
            }
        })
    }

    /// A plan for `Y[M,N] = A·Bᵀ` on these operands' shapes with output `out`: descriptors plus the
    /// heuristic's candidate algorithms (up to [`MAX_ALGOS`], best first; the first is selected).
    pub fn plan(&self, a: &GpuFp8, b: &GpuFp8, out: OutType) -> Result<GemmPlan> {
        self.plan_with(a, b, out, OutLayout::RowMajor)
    }

    /// [`GpuGemm::plan`] with a choice of output layout.
    pub fn plan_with(&self, a: &GpuFp8, b: &GpuFp8, out: OutType, layout: OutLayout) -> Result<GemmPlan> {
        let (m, n, k) = check_operands(a, b)?;
        GemmPlan::new(self, Operands::Fp8Block, (m, n, k), out, layout, Some((a, b)))
    }

    /// A plan for the bf16 product `Y[M,N] = A[M,K]·B[N,K]ᵀ` (bf16 output, fp32 accumulation):
    /// the baseline the FP8 GEMM is measured against.
    pub fn plan_bf16(&self, m: usize, n: usize, k: usize) -> Result<GemmPlan> {
        check_dims("plan_bf16", &[("M", m, 8), ("N", n, 8), ("K", k, 8)])?;
        GemmPlan::new(self, Operands::Bf16, (m, n, k), OutType::Bf16, OutLayout::RowMajor, None)
    }

    /// `Y = A·Bᵀ` into a new device matrix (plans with the heuristic's first choice).
    pub fn gemm(&self, a: &GpuFp8, b: &GpuFp8, out: OutType) -> Result<GpuMatrix> {
        let plan = self.plan(a, b, out)?;
        let mut y = self.alloc_out(a.rows, b.rows, out)?;
        plan.run(self, a, b, &mut y)?;
        Ok(y)
    }

    /// Upload, multiply and download: `Y = A·Bᵀ` as row-major f32 `[a.rows, b.rows]`.
    pub fn gemm_host(&self, a: &BlockQuant, b: &BlockQuant, out: OutType) -> Result<Vec<f32>> {
        let (ga, gb) = (self.upload_act(a)?, self.upload_weight(b)?);
        self.gemm(&ga, &gb, out)?.to_host_f32(&self.stream)
    }
}

fn check_block(op: &str, q: &BlockQuant, want: (usize, usize)) -> Result<()> {
    if q.block != want {
        return Err(Fp8Error::Arg {
            field: format!("{op}.block"),
            value: format!("{:?}", q.block),
            detail: format!("expected {want:?} blocks"),
        });
    }
    Ok(())
}

fn check_dims(op: &str, dims: &[(&str, usize, usize)]) -> Result<()> {
    for &(name, v, mult) in dims {
        if v == 0 || v % mult != 0 {
            return Err(Fp8Error::Arg {
                field: format!("{op}.{name}"),
                value: v.to_string(),
                detail: format!("the GPU FP8 GEMM needs a positive multiple of {mult}"),
            });
        }
    }
    Ok(())
}

fn check_operands(a: &GpuFp8, b: &GpuFp8) -> Result<(usize, usize, usize)> {
    if a.block != (1, BLOCK) || b.block != (BLOCK, BLOCK) {
        return Err(Fp8Error::Arg {
            field: "gpu gemm operands".into(),
            value: format!("a.block {:?}, b.block {:?}", a.block, b.block),
            detail: "a must be a 1×128 activation and b a 128×128 weight".into(),
        });
    }
    if a.cols != b.cols {
        return Err(Fp8Error::Shape {
            field: "gpu gemm b (inner dimension K)".into(),
            expected: vec![b.rows, a.cols],
            got: vec![b.rows, b.cols],
        });
    }
    Ok((a.rows, b.rows, a.cols))
}

/// Cluster shapes [`GemmPlan::enumerate`] tries (cuBLASLt lists none per algorithm): auto and the
/// shapes of up to 4 CTAs.
pub const CLUSTER_SHAPES: &[Cluster] = &[
    Cluster::CUBLASLT_CLUSTER_SHAPE_AUTO,
    Cluster::CUBLASLT_CLUSTER_SHAPE_1x1x1,
    Cluster::CUBLASLT_CLUSTER_SHAPE_2x1x1,
    Cluster::CUBLASLT_CLUSTER_SHAPE_1x2x1,
    Cluster::CUBLASLT_CLUSTER_SHAPE_2x2x1,
    Cluster::CUBLASLT_CLUSTER_SHAPE_4x1x1,
    Cluster::CUBLASLT_CLUSTER_SHAPE_1x4x1,
];

/// An algorithm capability that is an array of u32 (tile ids, stage ids) or a single u32 flag:
/// the size is queried first, then read with exactly that size (cuBLASLt rejects any other).
fn cap_u32s(algo: &lt::cublasLtMatmulAlgo_t, cap: Cap) -> Vec<u32> {
    let mut size = 0usize;
    // SAFETY: a size query (null buffer, 0 bytes) that writes only `size`.
    let st = unsafe { lt::cublasLtMatmulAlgoCapGetAttribute(algo, cap, std::ptr::null_mut(), 0, &mut size) };
    if st != lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS || size == 0 || !size.is_multiple_of(4) {
        return Vec::new();
    }
    let mut buf = vec![0u32; size / 4];
    let mut written = 0usize;
    // SAFETY: `buf` holds exactly `size` bytes.
    let st = unsafe {
        lt::cublasLtMatmulAlgoCapGetAttribute(algo, cap, buf.as_mut_ptr() as *mut c_void, size, &mut written)
    };
    if st != lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Vec::new();
    }
    buf.truncate(written / 4);
    buf
}

/// Median seconds of one `launch`: one warm-up, then `reps` launches enqueued back to back with a
/// CUDA event between each.
fn time_median(g: &GpuGemm, reps: usize, mut launch: impl FnMut() -> Result<()>) -> Result<f64> {
    let err = |e| gpu_err("timing", "", e);
    launch()?;
    g.synchronize()?;
    let ctx = g.stream.context();
    let events: Vec<_> = (0..=reps)
        .map(|_| ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)))
        .collect::<std::result::Result<_, _>>()
        .map_err(err)?;
    events[0].record(&g.stream).map_err(err)?;
    for e in &events[1..] {
        launch()?;
        e.record(&g.stream).map_err(err)?;
    }
    g.synchronize()?;
    let mut t: Vec<f64> = events
        .windows(2)
        .map(|w| w[0].elapsed_ms(&w[1]).map(|ms| ms as f64 / 1e3))
        .collect::<std::result::Result<_, _>>()
        .map_err(err)?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operands {
    Fp8Block,
    Bf16,
}

/// Identity of one cuBLASLt algorithm (from its configuration attributes), for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AlgoInfo {
    /// `CUBLASLT_ALGO_CONFIG_ID`.
    pub id: i32,
    /// `CUBLASLT_ALGO_CONFIG_TILE_ID`.
    pub tile: u32,
    /// `CUBLASLT_ALGO_CONFIG_STAGES_ID`.
    pub stages: u32,
    /// `CUBLASLT_ALGO_CONFIG_SPLITK_NUM`.
    pub split_k: u32,
    /// `CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID`.
    pub cluster: u32,
    /// `CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING`.
    pub swizzle: u32,
    /// `CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME`.
    pub reduction: u32,
    /// Workspace bytes the algorithm needs.
    pub workspace: usize,
    /// The heuristic's estimate of waves (`wavesCount`).
    pub waves: f32,
}

impl AlgoInfo {
    /// The configuration alone (workspace and waves cleared), to compare candidates.
    pub fn config(self) -> AlgoInfo {
        AlgoInfo { workspace: 0, waves: 0.0, ..self }
    }
}

/// Descriptors and candidate algorithms for one GEMM shape (see [`GpuGemm::plan`]).
pub struct GemmPlan {
    m: usize,
    n: usize,
    k: usize,
    out: OutType,
    layout: OutLayout,
    operands: Operands,
    shape: String,
    desc: Desc,
    a_layout: Layout,
    b_layout: Layout,
    d_layout: Layout,
    algos: Vec<lt::cublasLtMatmulHeuristicResult_t>,
    chosen: usize,
}

impl GemmPlan {
    fn new(
        g: &GpuGemm,
        operands: Operands,
        (m, n, k): (usize, usize, usize),
        out: OutType,
        out_layout: OutLayout,
        scaled: Option<(&GpuFp8, &GpuFp8)>,
    ) -> Result<GemmPlan> {
        let shape = format!("M={m} N={n} K={k} {operands:?} -> {out:?} {out_layout:?}");
        let row_major = out_layout == OutLayout::RowMajor;
        let op = "cublasLt plan";
        g.stream.context().bind_to_thread().map_err(|e| gpu_err(op, &shape, e))?;
        let desc = Desc(
            ltr::create_matmul_desc(cublasComputeType_t::CUBLAS_COMPUTE_32F, Dt::CUDA_R_32F)
                .map_err(|e| gpu_err(op, &shape, e))?,
        );
        // cublasOperation_t: 1 = T, 0 = N. Ā is transposed, B̄ not ("TN").
        desc.set(Attr::CUBLASLT_MATMUL_DESC_TRANSA, &1i32, op, &shape)?;
        desc.set(Attr::CUBLASLT_MATMUL_DESC_TRANSB, &0i32, op, &shape)?;
        let in_dt = match operands {
            Operands::Fp8Block => {
                let (blk, vec) = (
                    ScaleMode::CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F,
                    ScaleMode::CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F,
                );
                let (sa, sb) = if row_major { (blk, vec) } else { (vec, blk) };
                desc.set(Attr::CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &sa, op, &shape)?;
                desc.set(Attr::CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &sb, op, &shape)?;
                Dt::CUDA_R_8F_E4M3
            }
            Operands::Bf16 => Dt::CUDA_R_16BF,
        };
        let layout = |dt: Dt, rows: usize, cols: usize, ld: usize| -> Result<Layout> {
            Ok(Layout(
                ltr::create_matrix_layout(dt, rows as u64, cols as u64, ld as i64)
                    .map_err(|e| gpu_err(op, &shape, e))?,
            ))
        };
        // Ā: K × (rows of the operand it holds), B̄ likewise, D: Ā-rows × B̄-rows.
        let (ra, rb) = if row_major { (n, m) } else { (m, n) };
        let a_layout = layout(in_dt, k, ra, k)?;
        let b_layout = layout(in_dt, k, rb, k)?;
        let d_layout = layout(out.dt(), ra, rb, ra)?;
        let mut plan = GemmPlan {
            m,
            n,
            k,
            out,
            layout: out_layout,
            operands,
            shape,
            desc,
            a_layout,
            b_layout,
            d_layout,
            algos: Vec::new(),
            chosen: 0,
        };
        if let Some((a, b)) = scaled {
            plan.set_scales(g, a, b)?;
        }
        let pref = Pref(ltr::create_matmul_pref().map_err(|e| gpu_err(op, &plan.shape, e))?);
        let ws = g.workspace_bytes() as u64;
        // SAFETY: `ws` is the u64 the attribute reads.
        let st = unsafe {
            lt::cublasLtMatmulPreferenceSetAttribute(
                pref.0,
                lt::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                size_of::<u64>(),
            )
        };
        check(st, op, &plan.shape)?;
        // SAFETY: an all-zero heuristic result is a valid bit pattern for this plain C struct.
        let mut results: Vec<lt::cublasLtMatmulHeuristicResult_t> = vec![unsafe { std::mem::zeroed() }; MAX_ALGOS];
        let mut count = 0i32;
        // SAFETY: every descriptor is live; `results` holds MAX_ALGOS entries.
        let st = unsafe {
            lt::cublasLtMatmulAlgoGetHeuristic(
                g.handle.0,
                plan.desc.0,
                plan.a_layout.0,
                plan.b_layout.0,
                plan.d_layout.0,
                plan.d_layout.0,
                pref.0,
                MAX_ALGOS as i32,
                results.as_mut_ptr(),
                &mut count,
            )
        };
        check(st, "cublasLtMatmulAlgoGetHeuristic", &plan.shape)?;
        results.truncate(count.max(0) as usize);
        results.retain(|r| r.state == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS);
        if results.is_empty() {
            return Err(gpu_err("cublasLtMatmulAlgoGetHeuristic", &plan.shape, "no algorithm supports this GEMM"));
        }
        plan.algos = results;
        Ok(plan)
    }

    fn set_scales(&self, g: &GpuGemm, a: &GpuFp8, b: &GpuFp8) -> Result<()> {
        let op = "cublasLt scales";
        let (sa, _ga) = a.scales.device_ptr(&g.stream);
        let (sb, _gb) = b.scales.device_ptr(&g.stream);
        // Row-major Y: Ā is the weight (BLK128x128), B̄ the activation (VEC128); Yᵀ: the reverse.
        let (pa, pb) = if self.layout == OutLayout::RowMajor { (sb, sa) } else { (sa, sb) };
        self.desc.set(Attr::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &pa, op, &self.shape)?;
        self.desc.set(Attr::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &pb, op, &self.shape)
    }

    /// Add every configuration cuBLASLt accepts for this plan that is not yet a candidate, at
    /// most `limit`; returns how many were added. The search: each algorithm id for the plan's
    /// types (`cublasLtMatmulAlgoGetIds`) × the tiles and stages it lists
    /// (`cublasLtMatmulAlgoCapGetAttribute`) × [`CLUSTER_SHAPES`] × CTA swizzling off/on where
    /// supported, split-K off, each validated by `cublasLtMatmulAlgoCheck` and kept when it needs
    /// no more workspace than `g` has. (The inner-shape attribute selects pre-Hopper MMA shapes
    /// and is left at its default.) The heuristic's candidates keep their indices.
    pub fn enumerate(&mut self, g: &GpuGemm, limit: usize) -> Result<usize> {
        let op = "cublasLt enumerate";
        g.stream.context().bind_to_thread().map_err(|e| gpu_err(op, &self.shape, e))?;
        let in_dt = match self.operands {
            Operands::Fp8Block => Dt::CUDA_R_8F_E4M3,
            Operands::Bf16 => Dt::CUDA_R_16BF,
        };
        let (ct, st, out) = (cublasComputeType_t::CUBLAS_COMPUTE_32F, Dt::CUDA_R_32F, self.out.dt());
        let mut ids = vec![0i32; 256];
        let mut n_ids = 0i32;
        // SAFETY: `ids` holds the 256 entries requested.
        let status = unsafe {
            lt::cublasLtMatmulAlgoGetIds(g.handle.0, ct, st, in_dt, in_dt, out, out, 256, ids.as_mut_ptr(), &mut n_ids)
        };
        check(status, "cublasLtMatmulAlgoGetIds", &self.shape)?;
        ids.truncate(n_ids.max(0) as usize);
        let mut seen: Vec<AlgoInfo> = (0..self.algos.len()).map(|i| self.algo_info(i).config()).collect();
        let mut added = 0;
        for id in ids {
            // SAFETY: an all-zero algorithm is a valid bit pattern for this plain C struct.
            let mut base: lt::cublasLtMatmulAlgo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `base` is a live algorithm struct for Init to fill.
            let status =
                unsafe { lt::cublasLtMatmulAlgoInit(g.handle.0, ct, st, in_dt, in_dt, out, out, id, &mut base) };
            if status != lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                continue;
            }
            let tiles = cap_u32s(&base, Cap::CUBLASLT_ALGO_CAP_TILE_IDS);
            let stages = cap_u32s(&base, Cap::CUBLASLT_ALGO_CAP_STAGES_IDS);
            let swizzles = if cap_u32s(&base, Cap::CUBLASLT_ALGO_CAP_CTA_SWIZZLING_SUPPORT).first() == Some(&1) {
                vec![0u32, 1]
            } else {
                vec![0]
            };
            let or_default = |v: Vec<u32>| if v.is_empty() { vec![0] } else { v };
            for &tile in &or_default(tiles) {
                for &stage in &or_default(stages.clone()) {
                    for &cluster in CLUSTER_SHAPES {
                        for &swizzle in &swizzles {
                            let mut algo = base;
                            let set = |algo: &mut lt::cublasLtMatmulAlgo_t, attr, v: &[u8]| {
                                // SAFETY: `v` holds the attribute's size (u32, or u16 for the cluster shape).
                                unsafe {
                                    lt::cublasLtMatmulAlgoConfigSetAttribute(
                                        algo,
                                        attr,
                                        v.as_ptr() as *const c_void,
                                        v.len(),
                                    )
                                }
                            };
                            let ok = [
                                set(&mut algo, AlgoAttr::CUBLASLT_ALGO_CONFIG_TILE_ID, &tile.to_ne_bytes()),
                                set(&mut algo, AlgoAttr::CUBLASLT_ALGO_CONFIG_STAGES_ID, &stage.to_ne_bytes()),
                                set(
                                    &mut algo,
                                    AlgoAttr::CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID,
                                    &(cluster as u16).to_ne_bytes(),
                                ),
                                set(&mut algo, AlgoAttr::CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swizzle.to_ne_bytes()),
                                set(&mut algo, AlgoAttr::CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &1u32.to_ne_bytes()),
                            ]
                            .iter()
                            .all(|s| *s == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS);
                            if !ok {
                                continue;
                            }
                            // SAFETY: an all-zero heuristic result is a valid bit pattern.
                            let mut r: lt::cublasLtMatmulHeuristicResult_t = unsafe { std::mem::zeroed() };
                            // SAFETY: every descriptor is live; `r` receives the check's result.
                            let status = unsafe {
                                lt::cublasLtMatmulAlgoCheck(
                                    g.handle.0,
                                    self.desc.0,
                                    self.a_layout.0,
                                    self.b_layout.0,
                                    self.d_layout.0,
                                    self.d_layout.0,
                                    &algo,
                                    &mut r,
                                )
                            };
                            if status != lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                                || r.workspaceSize > g.workspace_bytes()
                            {
                                continue;
                            }
                            r.algo = algo;
                            r.state = lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS;
                            self.algos.push(r);
                            let info = self.algo_info(self.algos.len() - 1).config();
                            if seen.contains(&info) {
                                self.algos.pop();
                                continue;
                            }
                            seen.push(info);
                            added += 1;
                            if added >= limit {
                                return Ok(added);
                            }
                        }
                    }
                }
            }
        }
        Ok(added)
    }

    /// Time every candidate with `launch` (one warm-up, then `reps` launches with a CUDA event
    /// between each; the median interval), select the fastest and return its index and seconds.
    /// A candidate whose launch fails is skipped; an error only if none runs.
    pub fn tune_with(
        &mut self,
        g: &GpuGemm,
        reps: usize,
        mut launch: impl FnMut(&GemmPlan) -> Result<()>,
    ) -> Result<(usize, f64)> {
        let mut best: Option<(usize, f64)> = None;
        for i in 0..self.algos.len() {
            self.chosen = i;
            if let Ok(t) = time_median(g, reps.max(1), || launch(self))
                && best.is_none_or(|(_, b)| t < b)
            {
                best = Some((i, t));
            }
        }
        let (i, t) = best.ok_or_else(|| gpu_err("GemmPlan::tune", &self.shape, "no candidate ran"))?;
        self.chosen = i;
        Ok((i, t))
    }

    /// [`GemmPlan::tune_with`] on these operands: times `y = a·bᵀ` for every candidate and keeps
    /// the fastest (run [`GemmPlan::enumerate`] first to search beyond the heuristic).
    pub fn tune(
        &mut self,
        g: &GpuGemm,
        a: &GpuFp8,
        b: &GpuFp8,
        y: &mut GpuMatrix,
        reps: usize,
    ) -> Result<(usize, f64)> {
        self.tune_with(g, reps, |p| p.run(g, a, b, y))
    }

    /// Number of candidate algorithms (the heuristic's, then any [`GemmPlan::enumerate`] added).
    pub fn candidates(&self) -> usize {
        self.algos.len()
    }

    /// The index of the selected candidate.
    pub fn selected(&self) -> usize {
        self.chosen
    }

    /// Select candidate `i` (0 = the heuristic's first choice).
    pub fn select(&mut self, i: usize) -> Result<()> {
        if i >= self.algos.len() {
            return Err(Fp8Error::Arg {
                field: "GemmPlan::select".into(),
                value: i.to_string(),
                detail: format!("{} candidates for {}", self.algos.len(), self.shape),
            });
        }
        self.chosen = i;
        Ok(())
    }

    /// Configuration of candidate `i`.
    pub fn algo_info(&self, i: usize) -> AlgoInfo {
        let Some(r) = self.algos.get(i) else { return AlgoInfo::default() };
        // cuBLASLt requires the attribute's exact size: 2 bytes for the cluster shape, else 4.
        let get_sized = |attr: AlgoAttr, bytes: usize| -> u32 {
            let mut v = [0u8; 4];
            let mut written = 0usize;
            // SAFETY: reads at most `bytes` ≤ 4 bytes into `v`.
            let st = unsafe {
                lt::cublasLtMatmulAlgoConfigGetAttribute(
                    &r.algo,
                    attr,
                    v.as_mut_ptr() as *mut c_void,
                    bytes,
                    &mut written,
                )
            };
            if st == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS { u32::from_ne_bytes(v) } else { u32::MAX }
        };
        let get = |attr: AlgoAttr| get_sized(attr, 4);
        AlgoInfo {
            id: get(AlgoAttr::CUBLASLT_ALGO_CONFIG_ID) as i32,
            tile: get(AlgoAttr::CUBLASLT_ALGO_CONFIG_TILE_ID),
            stages: get(AlgoAttr::CUBLASLT_ALGO_CONFIG_STAGES_ID),
            split_k: get(AlgoAttr::CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
            cluster: u32::from(get_sized(AlgoAttr::CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, 2) as u16),
            swizzle: get(AlgoAttr::CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING),
            reduction: get(AlgoAttr::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
            workspace: r.workspaceSize,
            waves: r.wavesCount,
        }
    }

    /// `(M, N, K)`.
    pub fn dims(&self) -> (usize, usize, usize) {
        (self.m, self.n, self.k)
    }

    fn check_out(&self, y: &GpuMatrix) -> Result<()> {
        if y.out_type() != self.out || y.len() != self.m * self.n {
            return Err(Fp8Error::Shape {
                field: format!("gpu gemm output ({:?})", y.out_type()),
                expected: vec![self.m, self.n],
                got: vec![y.len()],
            });
        }
        Ok(())
    }

    /// The output layout.
    pub fn layout(&self) -> OutLayout {
        self.layout
    }

    /// Enqueue `y = a·bᵀ` (or its transpose, per [`GemmPlan::layout`]) on the stream with the
    /// selected algorithm (no synchronisation).
    pub fn run(&self, g: &GpuGemm, a: &GpuFp8, b: &GpuFp8, y: &mut GpuMatrix) -> Result<()> {
        if self.operands != Operands::Fp8Block || check_operands(a, b)? != (self.m, self.n, self.k) {
            return Err(Fp8Error::Shape {
                field: format!("gpu gemm operands for plan {}", self.shape),
                expected: vec![self.m, self.n, self.k],
                got: vec![a.rows, b.rows, a.cols],
            });
        }
        self.check_out(y)?;
        self.set_scales(g, a, b)?;
        let (pa, _ga) = a.data.device_ptr(&g.stream);
        let (pb, _gb) = b.data.device_ptr(&g.stream);
        let pd = y.ptr_mut(&g.stream);
        if self.layout == OutLayout::RowMajor { self.launch(g, pb, pa, pd) } else { self.launch(g, pa, pb, pd) }
    }

    /// Enqueue the bf16 product `y = a·bᵀ` (`a` `[M,K]`, `b` `[N,K]`, `y` `[M,N]`, all row-major).
    pub fn run_bf16(&self, g: &GpuGemm, a: &CudaSlice<bf16>, b: &CudaSlice<bf16>, y: &mut GpuMatrix) -> Result<()> {
        if self.operands != Operands::Bf16 || a.len() != self.m * self.k || b.len() != self.n * self.k {
            return Err(Fp8Error::Shape {
                field: format!("bf16 gemm operands for plan {}", self.shape),
                expected: vec![self.m * self.k, self.n * self.k],
                got: vec![a.len(), b.len()],
            });
        }
        self.check_out(y)?;
        let (pa, _ga) = a.device_ptr(&g.stream);
        let (pb, _gb) = b.device_ptr(&g.stream);
        let pd = y.ptr_mut(&g.stream);
        self.launch(g, pb, pa, pd)
    }

    /// `D = op(Ā)·op(B̄)` with Ā = `pa`, B̄ = `pb`.
    fn launch(&self, g: &GpuGemm, pa: u64, pb: u64, pd: u64) -> Result<()> {
        let r = &self.algos[self.chosen];
        if r.workspaceSize > g.workspace_bytes() {
            return Err(gpu_err(
                "cublasLtMatmul",
                &self.shape,
                format!(
                    "the algorithm needs {} workspace bytes, the handle has {}",
                    r.workspaceSize,
                    g.workspace_bytes()
                ),
            ));
        }
        let (alpha, beta) = (1f32, 0f32);
        let (pw, _gw) = g.workspace.device_ptr(&g.stream);
        g.stream.context().bind_to_thread().map_err(|e| gpu_err("cublasLtMatmul", &self.shape, e))?;
        // SAFETY: the layouts describe the operand buffers' extents (checked above); D also serves
        // as C (beta = 0); the workspace is at least the algorithm's request (the plan's preference
        // or `enumerate`'s check).
        let st = unsafe {
            lt::cublasLtMatmul(
                g.handle.0,
                self.desc.0,
                &alpha as *const f32 as *const c_void,
                pa as *const c_void,
                self.a_layout.0,
                pb as *const c_void,
                self.b_layout.0,
                &beta as *const f32 as *const c_void,
                pd as *const c_void,
                self.d_layout.0,
                pd as *mut c_void,
                self.d_layout.0,
                &r.algo,
                pw as *mut c_void,
                g.workspace_bytes(),
                g.stream.cu_stream() as lt::cudaStream_t,
            )
        };
        check(st, "cublasLtMatmul", &self.shape)
    }
}
