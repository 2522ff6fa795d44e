//! The CUDA backend (feature `cuda`): device buffers, cuBLAS GEMM (f32, and bf16 with f32
//! accumulation), and the kernels of `kernels/*.cu` — loaded from the PTX that
//! `cargo xtask kernels` builds, or compiled from the embedded source by NVRTC at start when no
//! PTX was built (or when `R1_NVRTC=1`). cudarc loads the driver libraries dynamically, so this
//! builds and runs on machines without CUDA; [`CudaBackend::try_default`] then returns `None`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, StridedBatchedConfig, sys::cublasOperation_t as Op};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};
use half::bf16;

use crate::ops::matmul::MmDims;
use crate::tensor::{CpuStorage, Storage};
use crate::{DType, Device, Result, Tensor, TensorError};

mod ops;
pub use ops::DeviceTables;
pub(crate) use ops::MAX_RANK;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// A device buffer.
pub enum CudaStorage {
    F32(CudaSlice<f32>),
    BF16(CudaSlice<bf16>),
}

impl CudaStorage {
    pub(crate) fn dtype(&self) -> DType {
        match self {
            CudaStorage::F32(_) => DType::F32,
            CudaStorage::BF16(_) => DType::BF16,
        }
    }

    /// The first `numel` elements on the host (a zero-element tensor's buffer holds one unused
    /// element, see `alloc`).
    pub(crate) fn download(&self, numel: usize) -> Result<CpuStorage> {
        fn first<T>(mut v: Vec<T>, n: usize) -> Vec<T> {
            v.truncate(n);
            v
        }
        Ok(match self {
            CudaStorage::F32(s) => CpuStorage::F32(first(s.stream().clone_dtoh(s).map_err(cuda_err)?, numel)),
            CudaStorage::BF16(s) => CpuStorage::BF16(first(s.stream().clone_dtoh(s).map_err(cuda_err)?, numel)),
        })
    }

    /// Elements in the buffer.
    fn len(&self) -> usize {
        match self {
            CudaStorage::F32(s) => s.len(),
            CudaStorage::BF16(s) => s.len(),
        }
    }

    fn ptr(&self, stream: &CudaStream) -> u64 {
        match self {
            CudaStorage::F32(s) => s.device_ptr(stream).0,
            CudaStorage::BF16(s) => s.device_ptr(stream).0,
        }
    }
}

fn cuda_err(e: impl std::fmt::Debug) -> TensorError {
    TensorError::Cuda(format!("{e:?}"))
}

fn suffix(dt: DType) -> &'static str {
    match dt {
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

/// One CUDA device: context, stream, cuBLAS handle and the loaded kernel modules.
pub struct CudaBackend {
    ordinal: usize,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    funcs: Mutex<HashMap<String, CudaFunction>>,
    /// Whether the kernels came from prebuilt PTX (else NVRTC).
    pub prebuilt_ptx: bool,
}

impl CudaBackend {
    /// Device 0, created once per process; `None` when no driver or GPU is present.
    pub fn try_default() -> Option<Arc<CudaBackend>> {
        static DEFAULT: OnceLock<Option<Arc<CudaBackend>>> = OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                // SAFETY: only probes whether the driver library can be loaded.
                if !unsafe { cudarc::driver::sys::is_culib_present() } {
                    return None;
                }
                CudaBackend::new(0).ok()
            })
            .clone()
    }

    /// Open device `ordinal` and load every kernel module.
    pub fn new(ordinal: usize) -> Result<Arc<CudaBackend>> {
        let ctx = CudaContext::new(ordinal).map_err(cuda_err)?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(cuda_err)?;
        let force_nvrtc = std::env::var("R1_NVRTC").is_ok_and(|v| v == "1");
        let (maj, min) = ctx.compute_capability().map_err(cuda_err)?;
        let arch: &'static str = Box::leak(format!("sm_{maj}{min}").into_boxed_str());
        let mut modules = HashMap::new();
        let mut prebuilt_ptx = true;
        for &(name, src, ptx) in embedded::KERNELS {
            let ptx = match ptx {
                Some(p) if !force_nvrtc => Ptx::from_src(p),
                _ => {
                    prebuilt_ptx = false;
                    let opts = CompileOptions { arch: Some(arch), ..Default::default() };
                    compile_ptx_with_opts(src, opts)
                        .map_err(|e| TensorError::Cuda(format!("NVRTC {name}.cu: {e:?}")))?
                }
            };
            modules.insert(name, ctx.load_module(ptx).map_err(cuda_err)?);
        }
        Ok(Arc::new(CudaBackend { ordinal, stream, blas, modules, funcs: Mutex::new(HashMap::new()), prebuilt_ptx }))
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Wait for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err)
    }

    pub(crate) fn upload(&self, s: &CpuStorage) -> Result<CudaStorage> {
        Ok(match s {
            CpuStorage::F32(v) => CudaStorage::F32(self.stream.clone_htod(v).map_err(cuda_err)?),
            CpuStorage::BF16(v) => CudaStorage::BF16(self.stream.clone_htod(v).map_err(cuda_err)?),
            CpuStorage::F64(_) => {
                return Err(TensorError::DType {
                    op: "to_device",
                    got: DType::F64,
                    detail: "the CUDA backend holds f32 and bf16".into(),
                });
            }
        })
    }

    /// An output buffer that the launching kernel writes in full (not zeroed: no memset per op).
    fn alloc(&self, dt: DType, n: usize) -> Result<CudaStorage> {
        // SAFETY: every caller passes the buffer to a kernel (or cuBLAS with beta = 0 and k > 0)
        // that writes all `n` elements before anything reads them; a zero-element tensor's
        // one-element buffer is never read.
        Ok(unsafe {
            match dt {
                DType::BF16 => CudaStorage::BF16(self.stream.alloc::<bf16>(n.max(1)).map_err(cuda_err)?),
                _ => CudaStorage::F32(self.stream.alloc::<f32>(n.max(1)).map_err(cuda_err)?),
            }
        })
    }

    /// A zeroed buffer, for kernels that accumulate into their output (atomics).
    fn alloc_zeroed(&self, dt: DType, n: usize) -> Result<CudaStorage> {
        Ok(match dt {
            DType::BF16 => CudaStorage::BF16(self.stream.alloc_zeros::<bf16>(n.max(1)).map_err(cuda_err)?),
            _ => CudaStorage::F32(self.stream.alloc_zeros::<f32>(n.max(1)).map_err(cuda_err)?),
        })
    }

    fn func(&self, module: &str, name: &str) -> Result<CudaFunction> {
        let mut f = self.funcs.lock().expect("kernel cache lock");
        if let Some(k) = f.get(name) {
            return Ok(k.clone());
        }
        let m = self.modules.get(module).ok_or_else(|| TensorError::Cuda(format!("no module {module}")))?;
        let k = m.load_function(name).map_err(cuda_err)?;
        f.insert(name.to_string(), k.clone());
        Ok(k)
    }

    fn wrap(self: &Arc<Self>, st: CudaStorage, shape: &[usize]) -> Tensor {
        Tensor::from_storage(Storage::Cuda(st), shape.to_vec(), Device::Cuda(self.clone()))
    }

    fn p(&self, t: &Tensor) -> u64 {
        match t.storage() {
            Storage::Cuda(s) => s.ptr(&self.stream),
            Storage::Cpu(_) => unreachable!("operands were checked to be on this device"),
        }
    }

    /// Launch `module::name` with `args` (device pointers as u64, then scalars).
    fn launch(&self, module: &str, name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        self.profiled(name, || self.launch_now(module, name, cfg, args))
    }

    fn launch_now(&self, module: &str, name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        let f = self.func(module, name)?;
        let mut b = self.stream.launch_builder(&f);
        for a in args {
            match a {
                Arg::P(p) => b.arg(p),
                Arg::I64(v) => b.arg(v),
                Arg::I32(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
                Arg::S(v) => b.arg(v.as_ref()),
            };
        }
        // SAFETY: argument lists match the kernels' signatures in kernels/*.cu, and the buffers
        // hold the element counts passed alongside them.
        unsafe { b.launch(cfg) }.map(|_| ()).map_err(cuda_err)
    }

    /// Run `f`; with `R1_CUDA_PROFILE=1`, synchronise around it and add its wall time to `name`'s
    /// entry of [`profile_report`] (a crude per-kernel profile for machines without Nsight; the
    /// synchronisation itself slows the run).
    fn profiled<R>(&self, name: &str, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let Some(table) = profile_table() else { return f() };
        self.synchronize()?;
        let t0 = std::time::Instant::now();
        let r = f()?;
        self.synchronize()?;
        let mut t = table.lock().expect("profile lock");
        let e = t.entry(name.to_string()).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += t0.elapsed().as_secs_f64();
        Ok(r)
    }

    fn this(t: &Tensor) -> Arc<CudaBackend> {
        match t.device() {
            Device::Cuda(b) => b.clone(),
            Device::Cpu => unreachable!("dispatched on a CUDA tensor"),
        }
    }
}

type ProfileTable = Mutex<HashMap<String, (u64, f64)>>;

fn profile_table() -> Option<&'static ProfileTable> {
    static T: OnceLock<Option<ProfileTable>> = OnceLock::new();
    T.get_or_init(|| std::env::var("R1_CUDA_PROFILE").is_ok_and(|v| v == "1").then(Default::default)).as_ref()
}

/// With `R1_CUDA_PROFILE=1`: `(kernel or GEMM class, calls, seconds)` since the last call, most
/// time first; empty otherwise. Clears the table.
pub fn profile_report() -> Vec<(String, u64, f64)> {
    let Some(t) = profile_table() else { return Vec::new() };
    let mut v: Vec<(String, u64, f64)> = t.lock().expect("profile lock").drain().map(|(k, (n, s))| (k, n, s)).collect();
    v.sort_by(|a, b| b.2.total_cmp(&a.2));
    v
}

/// cuBLAS strided-batched configuration for row-major `C = op(A)·op(B)` computed as
/// column-major `Cᵀ = op(B)ᵀ·op(A)ᵀ` (B is cuBLAS's first operand).
/// One parameter of [`CudaBackend::adamw_multi_out`]: the parameter, its f32 moments (updated
/// in place), its gradient and its weight decay.
pub struct AdamWItem<'a> {
    pub p: &'a Tensor,
    pub m: &'a Tensor,
    pub v: &'a Tensor,
    pub g: &'a Tensor,
    pub wd: f32,
}

/// Where a batch of row-major matrices sits in a buffer, for [`CudaBackend::gemm_views`]: the
/// first matrix's element offset, the distance between rows (`ld`) and between matrices
/// (`stride`), and whether the stored matrix is the transpose of the operand.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatView {
    pub off: usize,
    pub ld: usize,
    pub stride: usize,
    pub trans: bool,
}

impl MatView {
    /// One past the last element that `batch` stored `rows × cols` matrices address.
    fn extent(self, batch: usize, rows: usize, cols: usize) -> usize {
        if batch == 0 || rows == 0 || cols == 0 {
            return 0;
        }
        self.off + (batch - 1) * self.stride + (rows - 1) * self.ld + cols
    }
}

/// The cuBLAS configuration of `batch` row-major products `C = op(A)·op(B)` (`op(A)` `m × k`,
/// `op(B)` `k × n`) laid out as the views say: row-major C is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ,
/// so B goes first.
fn strided_cfg<T>(
    one: T,
    zero: T,
    (m, n, k, batch): (usize, usize, usize, usize),
    av: MatView,
    bv: MatView,
    cv: MatView,
) -> StridedBatchedConfig<T> {
    let op = |t: bool| if t { Op::CUBLAS_OP_T } else { Op::CUBLAS_OP_N };
    StridedBatchedConfig {
        gemm: GemmConfig {
            transa: op(bv.trans),
            transb: op(av.trans),
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: one,
            lda: bv.ld as i32,
            ldb: av.ld as i32,
            beta: zero,
            ldc: cv.ld as i32,
        },
        batch_size: batch as i32,
        stride_a: bv.stride as i64,
        stride_b: av.stride as i64,
        stride_c: cv.stride as i64,
    }
}

/// [`strided_cfg`] for contiguous operands: `batch` products of whole matrices, B shared by all
/// of them when `b_shared`.
fn batched_cfg<T>(
    one: T,
    zero: T,
    (batch, m, n, k): (usize, usize, usize, usize),
    ta: bool,
    tb: bool,
    b_shared: bool,
) -> StridedBatchedConfig<T> {
    let av = MatView { off: 0, ld: if ta { m } else { k }, stride: m * k, trans: ta };
    let bv = MatView { off: 0, ld: if tb { k } else { n }, stride: if b_shared { 0 } else { k * n }, trans: tb };
    let cv = MatView { off: 0, ld: n, stride: m * n, trans: false };
    strided_cfg(one, zero, (m, n, k, batch), av, bv, cv)
}

enum Arg {
    P(u64),
    I64(i64),
    I32(i32),
    F32(f32),
    S(Box<ops::Strided>),
}

fn grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 132 * 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// One block per row of `d` elements, with at most 256 threads (longer rows loop): several blocks
/// stay resident per SM, so one block's reductions overlap another's loads.
fn rows_cfg(rows: usize, d: usize) -> LaunchConfig {
    let threads = (d.next_power_of_two()).clamp(32, 256) as u32;
    LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// dtype cast on the device (f32 ↔ bf16).
pub(crate) fn cast(t: &Tensor, dt: DType) -> Result<Tensor> {
    let be = CudaBackend::this(t);
    let n = t.numel();
    let name = match (t.dtype(), dt) {
        (DType::F32, DType::BF16) => "cast_f32_bf16",
        (DType::BF16, DType::F32) => "cast_bf16_f32",
        _ => return t.to_cpu()?.to_dtype(dt)?.to_device(t.device()),
    };
    let o = be.alloc(dt, n)?;
    be.launch("elementwise", name, grid(n), &[Arg::P(o.ptr(&be.stream)), Arg::P(be.p(t)), Arg::I64(n as i64)])?;
    Ok(be.wrap(o, t.shape()))
}

impl CudaBackend {
    fn unary(self: &Arc<Self>, kernel: &str, ins: &[&Tensor], extra: &[Arg]) -> Result<Tensor> {
        let (x, n) = (ins[0], ins[0].numel());
        let o = self.alloc(x.dtype(), n)?;
        let mut args = vec![Arg::P(o.ptr(&self.stream))];
        args.extend(ins.iter().map(|t| Arg::P(self.p(t))));
        args.push(Arg::I64(n as i64));
        args.extend(extra.iter().map(|a| match a {
            Arg::P(p) => Arg::P(*p),
            Arg::I64(v) => Arg::I64(*v),
            Arg::I32(v) => Arg::I32(*v),
            Arg::F32(v) => Arg::F32(*v),
            Arg::S(v) => Arg::S(v.clone()),
        }));
        self.launch("elementwise", &format!("{kernel}_{}", suffix(x.dtype())), grid(n), &args)?;
        Ok(self.wrap(o, x.shape()))
    }

    pub(crate) fn binary(self: &Arc<Self>, kind: u32, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let n = a.numel();
        let o = self.alloc(a.dtype(), n)?;
        let args = [
            Arg::P(o.ptr(&self.stream)),
            Arg::P(self.p(a)),
            Arg::P(self.p(b)),
            Arg::I64(n as i64),
            Arg::I64(b.numel().max(1) as i64),
            Arg::I32(kind as i32),
        ];
        self.launch("elementwise", &format!("binary_{}", suffix(a.dtype())), grid(n), &args)?;
        Ok(self.wrap(o, a.shape()))
    }

    pub(crate) fn affine(self: &Arc<Self>, x: &Tensor, s: f64, b: f64) -> Result<Tensor> {
        self.unary("affine", &[x], &[Arg::F32(s as f32), Arg::F32(b as f32)])
    }

    pub(crate) fn silu(self: &Arc<Self>, x: &Tensor) -> Result<Tensor> {
        self.unary("silu", &[x], &[])
    }

    pub(crate) fn silu_backward(self: &Arc<Self>, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        self.unary("silu_bwd", &[x, dy], &[])
    }

    pub(crate) fn sigmoid(self: &Arc<Self>, x: &Tensor) -> Result<Tensor> {
        self.unary("sigmoid", &[x], &[])
    }

    pub(crate) fn sigmoid_backward(self: &Arc<Self>, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        self.unary("sigmoid_bwd", &[y, dy], &[])
    }

    pub(crate) fn swiglu(self: &Arc<Self>, g: &Tensor, u: &Tensor) -> Result<Tensor> {
        self.unary("swiglu", &[g, u], &[])
    }

    pub(crate) fn rms_norm(self: &Arc<Self>, x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        let d = x.dim(-1);
        let rows = x.numel() / d;
        let y = self.alloc(x.dtype(), x.numel())?;
        let rstd = self.alloc(DType::F32, rows)?;
        let args = [
            Arg::P(y.ptr(&self.stream)),
            Arg::P(rstd.ptr(&self.stream)),
            Arg::P(self.p(x)),
            Arg::P(self.p(w)),
            Arg::I32(d as i32),
            Arg::F32(eps as f32),
        ];
        self.launch("norm", &format!("rms_norm_{}", suffix(x.dtype())), rows_cfg(rows, d), &args)?;
        Ok((self.wrap(y, x.shape()), self.wrap(rstd, &x.shape()[..x.rank() - 1])))
    }

    pub(crate) fn rms_norm_backward(
        self: &Arc<Self>,
        x: &Tensor,
        w: &Tensor,
        rstd: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let d = x.dim(-1);
        let rows = x.numel() / d;
        let rstd = rstd.to_dtype(DType::F32)?;
        let dx = self.alloc(x.dtype(), x.numel())?;
        let dw = self.alloc_zeroed(DType::F32, d)?;
        let args = [
            Arg::P(dx.ptr(&self.stream)),
            Arg::P(dw.ptr(&self.stream)),
            Arg::P(self.p(x)),
            Arg::P(self.p(w)),
            Arg::P(self.p(&rstd)),
            Arg::P(self.p(dy)),
            Arg::I32(d as i32),
        ];
        self.launch("norm", &format!("rms_norm_bwd_{}", suffix(x.dtype())), rows_cfg(rows, d), &args)?;
        let dw = self.wrap(dw, w.shape()).to_dtype(w.dtype())?;
        Ok((self.wrap(dx, x.shape()), dw))
    }

    pub(crate) fn softmax(self: &Arc<Self>, x: &Tensor, log: bool) -> Result<Tensor> {
        let d = x.dim(-1);
        let rows = x.numel() / d.max(1);
        let y = self.alloc(x.dtype(), x.numel())?;
        let args = [Arg::P(y.ptr(&self.stream)), Arg::P(self.p(x)), Arg::I32(d as i32), Arg::I32(log as i32)];
        self.launch("softmax", &format!("softmax_{}", suffix(x.dtype())), rows_cfg(rows, d), &args)?;
        Ok(self.wrap(y, x.shape()))
    }

    pub(crate) fn softmax_backward(self: &Arc<Self>, y: &Tensor, dy: &Tensor, log: bool) -> Result<Tensor> {
        let d = y.dim(-1);
        let rows = y.numel() / d.max(1);
        let dx = self.alloc(y.dtype(), y.numel())?;
        let args = [
            Arg::P(dx.ptr(&self.stream)),
            Arg::P(self.p(y)),
            Arg::P(self.p(dy)),
            Arg::I32(d as i32),
            Arg::I32(log as i32),
        ];
        self.launch("softmax", &format!("softmax_bwd_{}", suffix(y.dtype())), rows_cfg(rows, d), &args)?;
        Ok(self.wrap(dx, y.shape()))
    }

    /// Row-major `C = op(A)·op(B)` through column-major cuBLAS: computes `Cᵀ = op(B)ᵀ·op(A)ᵀ`.
    pub(crate) fn matmul(
        self: &Arc<Self>,
        a: &Tensor,
        b: &Tensor,
        ta: bool,
        tb: bool,
        d: MmDims,
        shape: &[usize],
    ) -> Result<Tensor> {
        let flops = 2.0 * (d.batch * d.m * d.n * d.k) as f64;
        let size = if flops < 1e9 {
            "< 1 GFLOP"
        } else if flops < 1e11 {
            "< 100 GFLOP"
        } else {
            ">= 100 GFLOP"
        };
        let class =
            format!("gemm {:?} {} {size}", a.dtype(), if d.batch > 1 && !d.b_shared { "batched" } else { "2d" });
        self.profiled(&class, || self.matmul_now(a, b, ta, tb, d, shape))
    }

    fn matmul_now(
        self: &Arc<Self>,
        a: &Tensor,
        b: &Tensor,
        ta: bool,
        tb: bool,
        d: MmDims,
        shape: &[usize],
    ) -> Result<Tensor> {
        let MmDims { batch, m, n, k, b_shared } = d;
        let (batch, m) = if b_shared && !ta { (1, batch * m) } else { (batch, m) };
        // cuBLAS with beta = 0 writes all of C when k > 0; with k = 0 the product is zeros.
        let c =
            if k > 0 { self.alloc(a.dtype(), batch * m * n)? } else { self.alloc_zeroed(a.dtype(), batch * m * n)? };
        let dims = (batch, m, n, k);
        match (a.storage(), b.storage(), c) {
            (Storage::Cuda(CudaStorage::F32(sa)), Storage::Cuda(CudaStorage::F32(sb)), CudaStorage::F32(mut sc)) => {
                let cfg = batched_cfg(1.0f32, 0.0f32, dims, ta, tb, b_shared);
                // SAFETY: dimensions and leading dimensions describe the buffers' extents. One
                // product goes to the plain GEMM (cuBLAS picks its kernels for batch 1 there).
                unsafe {
                    if batch == 1 {
                        self.blas.gemm(cfg.gemm, sb, sa, &mut sc)
                    } else {
                        self.blas.gemm_strided_batched(cfg, sb, sa, &mut sc)
                    }
                }
                .map_err(cuda_err)?;
                Ok(self.wrap(CudaStorage::F32(sc), shape))
            }
            (Storage::Cuda(CudaStorage::BF16(sa)), Storage::Cuda(CudaStorage::BF16(sb)), CudaStorage::BF16(mut sc)) => {
                let cfg = batched_cfg(bf16::ONE, bf16::ZERO, dims, ta, tb, b_shared);
                // SAFETY: as above; cudarc's bf16 GEMM accumulates in f32 (CUBLAS_COMPUTE_32F).
                unsafe {
                    if batch == 1 {
                        self.blas.gemm(cfg.gemm, sb, sa, &mut sc)
                    } else {
                        self.blas.gemm_strided_batched(cfg, sb, sa, &mut sc)
                    }
                }
                .map_err(cuda_err)?;
                Ok(self.wrap(CudaStorage::BF16(sc), shape))
            }
            _ => Err(TensorError::DType {
                op: "matmul",
                got: a.dtype(),
                detail: "CUDA matmul takes f32 or bf16 operands".into(),
            }),
        }
    }

    /// `C[i] = op(A[i])·op(B[i])` for `batch` row-major products (`op(A)` is `m × k`, `op(B)`
    /// `k × n`) whose matrices sit inside larger buffers: each [`MatView`] gives the element
    /// offset of the first matrix, the distance between rows and between consecutive matrices,
    /// and (for A and B) whether the stored matrix is the transpose. C is overwritten (k > 0).
    /// One strided-batched cuBLAS call; A, B and C share one dtype (f32 or bf16).
    pub(crate) fn gemm_views(
        &self,
        (m, n, k, batch): (usize, usize, usize, usize),
        (a, av): (&Tensor, MatView),
        (b, bv): (&Tensor, MatView),
        (c, cv): (&mut CudaStorage, MatView),
    ) -> Result<()> {
        let dims = (m, n, k, batch);
        let (ext_a, ext_b) = (
            av.extent(batch, if av.trans { k } else { m }, if av.trans { m } else { k }),
            bv.extent(batch, if bv.trans { n } else { k }, if bv.trans { k } else { n }),
        );
        let ext_c = cv.extent(batch, m, n);
        let fits = |len: usize, ext: usize| ext <= len;
        if !(fits(a.numel(), ext_a) && fits(b.numel(), ext_b) && fits(c.len(), ext_c)) {
            return Err(TensorError::Shape {
                op: "gemm_views",
                detail: format!(
                    "a view reaches past its buffer (A {ext_a}/{}, B {ext_b}/{}, C {ext_c}/{})",
                    a.numel(),
                    b.numel(),
                    c.len()
                ),
                shapes: vec![a.shape().to_vec(), b.shape().to_vec()],
            });
        }
        match (a.storage(), b.storage(), c) {
            (Storage::Cuda(CudaStorage::F32(sa)), Storage::Cuda(CudaStorage::F32(sb)), CudaStorage::F32(sc)) => {
                // SAFETY: the extents checked above keep every addressed element inside the
                // buffers.
                unsafe {
                    self.blas.gemm_strided_batched(
                        strided_cfg(1.0f32, 0.0f32, dims, av, bv, cv),
                        &sb.slice(bv.off..),
                        &sa.slice(av.off..),
                        &mut sc.slice_mut(cv.off..),
                    )
                }
                .map_err(cuda_err)
            }
            (Storage::Cuda(CudaStorage::BF16(sa)), Storage::Cuda(CudaStorage::BF16(sb)), CudaStorage::BF16(sc)) => {
                // SAFETY: as above; bf16 accumulates in f32.
                unsafe {
                    self.blas.gemm_strided_batched(
                        strided_cfg(bf16::ONE, bf16::ZERO, dims, av, bv, cv),
                        &sb.slice(bv.off..),
                        &sa.slice(av.off..),
                        &mut sc.slice_mut(cv.off..),
                    )
                }
                .map_err(cuda_err)
            }
            _ => Err(TensorError::DType {
                op: "gemm_views",
                got: a.dtype(),
                detail: "operands and output must all be f32 or all bf16 CUDA buffers".into(),
            }),
        }
    }

    /// One fused AdamW step for many parameters at once, out of place: returns the updated
    /// parameters (in `items`' order and each parameter's dtype, f32 or bf16; bf16 is updated
    /// in f32 and rounded back) and updates the f32 moments in place; gradients are f32 or bf16.
    /// One kernel launch per combination of parameter and gradient dtype over every tensor's
    /// elements (the multi-tensor form of torch's fused AdamW), not one per parameter.
    /// `(bc1, bc2)` are the bias corrections `(1 − β1^t, 1 − β2^t)`, computed by the caller (in f64: in f32
    /// the second loses ~1e-5 of its value to cancellation early in training).
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_multi_out(
        self: &Arc<Self>,
        items: &[AdamWItem<'_>],
        lr: f32,
        betas: (f32, f32),
        eps: f32,
        (bc1, bc2): (f32, f32),
        gscale: f32,
    ) -> Result<Vec<Tensor>> {
        /// Elements per chunk (one thread block's share of a tensor).
        const CHUNK: usize = 1 << 14;
        let on_me = |t: &Tensor| matches!(t.device(), Device::Cuda(be) if Arc::ptr_eq(be, self));
        let float = |t: &Tensor| matches!(t.dtype(), DType::F32 | DType::BF16) && on_me(t);
        let moments = |t: &Tensor| t.dtype() == DType::F32 && on_me(t);
        for it in items {
            if !(float(it.p) && float(it.g) && moments(it.m) && moments(it.v)) {
                return Err(TensorError::DType {
                    op: "adamw_multi_out",
                    got: it.p.dtype(),
                    detail: "fused AdamW takes f32/bf16 parameters and gradients and f32 moments on this CUDA device"
                        .into(),
                });
            }
            let n = it.p.numel();
            if [it.m, it.v, it.g].iter().any(|t| t.numel() != n) {
                return Err(TensorError::Shape {
                    op: "adamw_multi_out",
                    detail: "moments and gradient must have the parameter's element count".into(),
                    shapes: [it.p, it.m, it.v, it.g].iter().map(|t| t.shape().clone()).collect(),
                });
            }
        }
        let mut outs: Vec<Option<Tensor>> = vec![None; items.len()];
        for (pd, gd) in
            [(DType::F32, DType::F32), (DType::F32, DType::BF16), (DType::BF16, DType::F32), (DType::BF16, DType::BF16)]
        {
            let group: Vec<usize> =
                (0..items.len()).filter(|&i| items[i].p.dtype() == pd && items[i].g.dtype() == gd).collect();
            if group.is_empty() {
                continue;
            }
            let (mut tab, mut chunks) = (Vec::with_capacity(8 * group.len()), Vec::new());
            for (j, &i) in group.iter().enumerate() {
                let it = &items[i];
                let n = it.p.numel();
                let o = self.alloc(pd, n)?;
                tab.extend([o.ptr(&self.stream), self.p(it.p), self.p(it.m), self.p(it.v), self.p(it.g)]);
                tab.extend([n as u64, u64::from(it.wd.to_bits()), 0]);
                chunks.extend((0..n).step_by(CHUNK).map(|start| ((j as u64) << 40) | start as u64));
                outs[i] = Some(self.wrap(o, it.p.shape()));
            }
            if chunks.is_empty() {
                continue;
            }
            let dtab = self.stream.clone_htod(&tab).map_err(cuda_err)?;
            let dchunks = self.stream.clone_htod(&chunks).map_err(cuda_err)?;
            let args = [
                Arg::P(dtab.device_ptr(&self.stream).0),
                Arg::P(dchunks.device_ptr(&self.stream).0),
                Arg::I64(chunks.len() as i64),
                Arg::I64(CHUNK as i64),
                Arg::F32(lr),
                Arg::F32(betas.0),
                Arg::F32(betas.1),
                Arg::F32(eps),
                Arg::F32(bc1),
                Arg::F32(bc2),
                Arg::F32(gscale),
            ];
            let cfg = LaunchConfig {
                grid_dim: (chunks.len().min(132 * 16) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            self.launch("adamw", &format!("adamw_multi_{}_{}", suffix(pd), suffix(gd)), cfg, &args)?;
        }
        Ok(outs.into_iter().map(|o| o.expect("every item belongs to one dtype group")).collect())
    }
}
