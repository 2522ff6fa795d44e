//! The crate's own block-scaled FP8 GEMM kernel for Hopper (`sm_90a`), next to cuBLASLt.
//!
//! `Y[M,N] = Σ_kb (A·Bᵀ)_kb · sa[m,kb] · sb[n/128,kb]` (bf16 out) on the operands
//! [`GpuGemm::upload_act`] / [`GpuGemm::upload_weight`] produce, written in CUDA
//! (`kernels/fp8_gemm_sm90.cu`) and compiled by NVRTC at run time for `sm_90a`:
//!
//! - **increasing accumulation precision** (DeepSeek-V3 §3.3.2): the tensor cores (wgmma) sum one
//!   128-wide K block, four k32 steps, into a scratch fp32 fragment; the math warpgroup multiplies
//!   it by the 1×128 activation scale of its row and the 128×128 weight-block scale, and adds it
//!   into a separate fp32 accumulator on the CUDA cores — promotion at N_C = 128;
//! - **fine-grained quantisation** (§3.3.1): the activation scales are read per row and K block
//!   from the M-major `[K/128][M]` upload (loaded by TMA with the A tile), the weight scales per
//!   128-column block;
//! - a persistent, warp-specialised pipeline: one producer thread issues TMA loads
//!   (`cp.async.bulk.tensor`, 128-byte swizzle) into a ring of shared-memory stages guarded by
//!   `full` / `empty` mbarriers (and stores each K block's weight scale into its stage), math
//!   warpgroups own 64-row slices of a `block_m` × 128 tile (`block_m` 256: two 64-row waves
//!   each); `setmaxnreg` moves registers from the producer to the math warpgroups; with
//!   [`Sm90Config::cluster`] = 2 the two CTAs of a cluster take horizontally adjacent tiles and
//!   share their A tile through TMA multicast; the pipelined schedule ([`Sm90Config::schedule`]
//!   2) keeps two K blocks in flight per math warpgroup.
//!
//! [`Sm90Config::for_shape`] picks the configuration [`Sm90Gemm::gemm`] uses.
//!
//! Shapes: those of the uploads (K and N multiples of 128, M of 16); rows and columns past a
//! tile's edge are dropped, so any such M and N work.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys::{
    self as cu, CUdevice_attribute, CUfunction_attribute, CUlaunchAttributeID, CUtensorMapDataType as TmaType,
    CUtensorMapFloatOOBfill, CUtensorMapInterleave, CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use cudarc::driver::{CudaFunction, CudaModule, DevicePtr};
use cudarc::nvrtc::Ptx;

use super::{GpuFp8, GpuGemm, GpuMatrix, check_operands, gpu_err};
use crate::{BLOCK, Fp8Error, Result};

/// The kernel source (self-contained CUDA C++; no headers).
pub const SOURCE: &str = include_str!("../kernels/fp8_gemm_sm90.cu");

/// Compiled variants: (`block_m`, `block_n`, stages, cluster size, schedule); each is an
/// `extern "C"` kernel `fp8_gemm_m{block_m}_n{block_n}_s{stages}_c{cluster}{a|b}{"", _p}` (`a`:
/// a 2-CTA cluster multicasting A, `b`: one CTA). The variants that were the fastest at none of
/// the measured shapes on the H200 (128×128 without the pipelined schedule, 128×192, 192×128 in
/// 2-CTA clusters, B multicast, weight scales loaded by the math warpgroups) were removed
/// (docs/PERF.md); 256×128 stays for the burst regime (the fastest at 8192³ timed after idle).
pub const VARIANTS: &[(u32, u32, u32, u32, u32)] = &[(128, 128, 6, 1, 2), (192, 128, 5, 1, 0), (256, 128, 4, 2, 0)];

/// One configuration of the kernel (a compiled variant plus the tile order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sm90Config {
    /// Output tile height: 128 (two math warpgroups of 64 rows), 192 (three) or 256 (two, each
    /// running two 64-row waves per K block).
    pub block_m: u32,
    /// Output tile width: 128 columns (one weight-scale block) in every compiled variant.
    pub block_n: u32,
    /// Shared-memory pipeline stages (each holds a `block_m`×128 A tile, a `block_n`×128 B tile
    /// and `block_m` activation scales).
    pub stages: u32,
    /// CTAs per cluster: 1, or 2 taking horizontally adjacent tiles that share (multicast) the
    /// A tile.
    pub cluster: u32,
    /// The math warpgroups' schedule per K block: 0 issues the block's wgmma, waits, promotes; 2
    /// ("pipelined", `block_m` 128 only) keeps two blocks in flight in two scratch fragments,
    /// issuing block k+1 before promoting block k.
    pub schedule: u32,
    /// The persistent CTAs walk the tiles in column groups of this many tiles (L2 reuse).
    pub group: u32,
}

/// 128×128 tiles, one CTA per cluster, the pipelined schedule (and 16-byte output stores): the
/// fastest configuration at 4096³ and 2048³ on an H200 (docs/PERF.md).
impl Default for Sm90Config {
    fn default() -> Self {
        Sm90Config { block_m: 128, block_n: 128, stages: 6, cluster: 1, schedule: 2, group: 16 }
    }
}

impl Sm90Config {
    /// Every compiled variant with column groups of `group` tiles.
    pub fn all(group: u32) -> Vec<Sm90Config> {
        VARIANTS
            .iter()
            .map(|&(block_m, block_n, stages, cluster, schedule)| Sm90Config {
                block_m,
                block_n,
                stages,
                cluster,
                schedule,
                group,
            })
            .collect()
    }

    /// The configuration for an `m`×`n` output on a GPU with `sms` multiprocessors (measured on
    /// an H200 at its power limit, docs/PERF.md): 192×128 tiles (three math warpgroups) once they
    /// make at least 12 waves of the persistent grid (8192³: the fastest), else
    /// [`Sm90Config::default`] (4096³, 2048³: the fastest; 4096×7168×7168: level with 256×128).
    pub fn for_shape(m: usize, n: usize, sms: u32) -> Sm90Config {
        if m.div_ceil(192) * n.div_ceil(128) >= 12 * sms as usize {
            Sm90Config { block_m: 192, stages: 5, schedule: 0, ..Sm90Config::default() }
        } else {
            Sm90Config::default()
        }
    }

    fn variant(&self) -> (u32, u32, u32, u32, u32) {
        (self.block_m, self.block_n, self.stages, self.cluster, self.schedule)
    }

    fn kernel_name(&self) -> String {
        format!(
            "fp8_gemm_m{}_n{}_s{}_c{}{}{}",
            self.block_m,
            self.block_n,
            self.stages,
            self.cluster,
            if self.cluster > 1 { "a" } else { "b" },
            if self.schedule == 2 { "_p" } else { "" }
        )
    }

    /// A producer warpgroup plus the math warpgroups (three for `block_m` 192, else two).
    fn threads(&self) -> u32 {
        128 * (1 + if self.block_m == 192 { 3 } else { 2 })
    }

    /// Dynamic shared memory: the stages, the barriers and 1 KiB of alignment slack.
    fn smem_bytes(&self) -> u32 {
        let b = BLOCK as u32;
        self.stages * (self.block_m * b + self.block_n * b + self.block_m * 4) + 32 * self.stages + 1024
    }
}

/// Kernel parameters after the three tensor maps (matches `struct Params` in the source).
#[repr(C)]
struct Params {
    sb: u64,
    y: u64,
    m: i32,
    n: i32,
    k: i32,
    sb_ld: i32,
    group: i32,
}

/// A compiled variant and the most CTAs of it the device runs at once (the persistent grid).
struct Variant {
    key: (u32, u32, u32, u32, u32),
    func: CudaFunction,
    max_ctas: u32,
}

/// The compiled module with one function per [`VARIANTS`] entry.
pub struct Sm90Gemm {
    _module: Arc<CudaModule>,
    funcs: Vec<Variant>,
    sms: u32,
}

impl std::fmt::Debug for Sm90Gemm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sm90Gemm").field("sms", &self.sms).field("variants", &self.funcs.len()).finish()
    }
}

impl Sm90Gemm {
    /// Compile the kernel (NVRTC, `sm_90a`) on `g`'s device; an error on any GPU but compute
    /// capability 9.0 (wgmma and the TMA multicast are Hopper-only).
    pub fn new(g: &GpuGemm) -> Result<Sm90Gemm> {
        let ctx = g.stream.context();
        let (maj, min) = ctx.compute_capability().map_err(|e| gpu_err("compute capability", "", e))?;
        if (maj, min) != (9, 0) {
            return Err(Fp8Error::Arg {
                field: "Sm90Gemm device".into(),
                value: format!("sm_{maj}{min}"),
                detail: "the own FP8 kernel needs a Hopper GPU (sm_90a: wgmma, TMA multicast)".into(),
            });
        }
        // NVRTC straight to sm_90a machine code (no PTX JIT in the driver at load time).
        let ptx = Ptx::from_binary(compile_cubin(SOURCE, &["-std=c++17".to_string()])?);
        let module = ctx.load_module(ptx).map_err(|e| gpu_err("load_module", "fp8_gemm_sm90", e))?;
        let sms = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| gpu_err("multiprocessor count", "", e))? as u32;
        let mut funcs = Vec::new();
        for cfg in Sm90Config::all(1) {
            let name = cfg.kernel_name();
            let f = module.load_function(&name).map_err(|e| gpu_err("load_function", &name, e))?;
            // SAFETY: a valid function handle; the size is within Hopper's 227 KiB opt-in limit.
            unsafe {
                cu::cuFuncSetAttribute(
                    f.cu_function(),
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    cfg.smem_bytes() as i32,
                )
            }
            .result()
            .map_err(|e| gpu_err("cuFuncSetAttribute", &name, e))?;
            // Clusters must fit in one GPC: not every SM can hold one, so a persistent grid of
            // `sms` CTAs would leave some clusters for a second wave. Ask the driver.
            let max_ctas = if cfg.cluster == 1 {
                sms
            } else {
                let mut attr = cluster_attr(cfg.cluster);
                let config = launch_config(&cfg, sms, g.stream.cu_stream(), &mut attr);
                let mut clusters = 0i32;
                // SAFETY: `config` and `attr` are live for the call; the function is valid.
                unsafe { cu::cuOccupancyMaxActiveClusters(&mut clusters, f.cu_function(), &config) }
                    .result()
                    .map_err(|e| gpu_err("cuOccupancyMaxActiveClusters", &name, e))?;
                (clusters.max(1) as u32 * cfg.cluster).min(sms - sms % cfg.cluster)
            };
            funcs.push(Variant { key: cfg.variant(), func: f, max_ctas });
        }
        Ok(Sm90Gemm { _module: module, funcs, sms })
    }

    /// Streaming multiprocessors of the device.
    pub fn sms(&self) -> u32 {
        self.sms
    }

    /// The persistent grid of a configuration: the most CTAs that run at once (all SMs without
    /// clusters; with clusters what `cuOccupancyMaxActiveClusters` allows), or `None` for a
    /// configuration that is not compiled.
    pub fn grid(&self, cfg: &Sm90Config) -> Option<u32> {
        self.funcs.iter().find(|v| v.key == cfg.variant()).map(|v| v.max_ctas)
    }

    /// `y = a·bᵀ` with [`Sm90Config::for_shape`] into a new bf16 device matrix.
    pub fn gemm(&self, g: &GpuGemm, a: &GpuFp8, b: &GpuFp8) -> Result<GpuMatrix> {
        let mut y = g.alloc_out(a.rows, b.rows, super::OutType::Bf16)?;
        self.run(g, a, b, &mut y, Sm90Config::for_shape(a.rows, b.rows, self.sms))?;
        Ok(y)
    }

    /// Enqueue `y = a·bᵀ` (bf16 `[M, N]`) on `g`'s stream with configuration `cfg`.
    pub fn run(&self, g: &GpuGemm, a: &GpuFp8, b: &GpuFp8, y: &mut GpuMatrix, cfg: Sm90Config) -> Result<()> {
        let (m, n, k) = check_operands(a, b)?;
        let shape = format!("M={m} N={n} K={k} {cfg:?}");
        let GpuMatrix::Bf16(out) = y else {
            return Err(Fp8Error::Arg {
                field: "Sm90Gemm output".into(),
                value: format!("{:?}", y.out_type()),
                detail: "the own FP8 kernel writes bf16".into(),
            });
        };
        if out.len() != m * n {
            return Err(Fp8Error::Shape {
                field: "Sm90Gemm output".into(),
                expected: vec![m, n],
                got: vec![out.len()],
            });
        }
        for (name, v) in [("M", m), ("N", n), ("K", k)] {
            if v > i32::MAX as usize / 2 {
                return Err(Fp8Error::Arg {
                    field: format!("Sm90Gemm.{name}"),
                    value: v.to_string(),
                    detail: "too large for the kernel's 32-bit indices".into(),
                });
            }
        }
        let Some(var) = self.funcs.iter().find(|v| v.key == cfg.variant()) else {
            return Err(Fp8Error::Arg {
                field: "Sm90Config".into(),
                value: format!("{cfg:?}"),
                detail: format!("compiled (block_m, block_n, stages, cluster, schedule): {VARIANTS:?}"),
            });
        };
        if cfg.group == 0 {
            return Err(Fp8Error::Arg {
                field: "Sm90Config.group".into(),
                value: "0".into(),
                detail: "at least 1".into(),
            });
        }
        let stream = &g.stream;
        stream.context().bind_to_thread().map_err(|e| gpu_err("Sm90Gemm", &shape, e))?;
        let (pa, _ga) = a.data.device_ptr(stream);
        let (pb, _gb) = b.data.device_ptr(stream);
        let (psa, _gsa) = a.scales.device_ptr(stream);
        let (psb, _gsb) = b.scales.device_ptr(stream);
        let (py, _gy) = out.device_ptr(stream);
        let kb = k / BLOCK;
        let fp8_map = |ptr: u64, rows: usize, box_rows: u32| {
            tensor_map(
                TmaType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
                ptr,
                [k, rows],
                k,
                [BLOCK as u32, box_rows],
                true,
                &shape,
            )
        };
        let bm = cfg.block_m;
        // A 2-CTA cluster multicasts the A tile: each CTA loads half of its rows.
        let ta = fp8_map(pa, m, bm / cfg.cluster)?;
        let tb = fp8_map(pb, n, cfg.block_n)?;
        let tsa = tensor_map(TmaType::CU_TENSOR_MAP_DATA_TYPE_FLOAT32, psa, [m, kb], m * 4, [bm, 1], false, &shape)?;
        let params = Params {
            sb: psb,
            y: py,
            m: m as i32,
            n: n as i32,
            k: k as i32,
            sb_ld: (b.scales.len() / n.div_ceil(BLOCK)) as i32,
            group: cfg.group as i32,
        };
        // Persistent grid: one CTA per SM (a whole number of clusters), at most one per tile.
        let tiles = m.div_ceil(bm as usize) * n.div_ceil(cfg.block_n as usize).next_multiple_of(cfg.cluster as usize);
        let grid = var.max_ctas.min(tiles as u32).max(cfg.cluster);
        let mut attr = cluster_attr(cfg.cluster);
        let config = launch_config(&cfg, grid, stream.cu_stream(), &mut attr);
        let mut args: [*mut c_void; 4] = [
            &ta as *const _ as *mut c_void,
            &tb as *const _ as *mut c_void,
            &tsa as *const _ as *mut c_void,
            &params as *const Params as *mut c_void,
        ];
        // SAFETY: the arguments match the kernel's signature (three 128-byte tensor maps and
        // `Params`), each map describes a live device buffer of the size checked above, and the
        // buffers stay borrowed (their guards alive) until the launch is enqueued.
        unsafe { cu::cuLaunchKernelEx(&config, var.func.cu_function(), args.as_mut_ptr(), std::ptr::null_mut()) }
            .result()
            .map_err(|e| gpu_err("cuLaunchKernelEx", &shape, e))
    }
}

/// Compile `src` with NVRTC straight to `sm_90a` machine code (a CUBIN; NVRTC's own assembler
/// rather than the driver's PTX JIT) with the options `extra` besides the architecture.
fn compile_cubin(src: &str, extra: &[String]) -> Result<Vec<u8>> {
    use cudarc::nvrtc::sys as rtc;
    use std::ffi::{CStr, CString, c_char};
    let err = |what: &str, r: rtc::nvrtcResult| gpu_err("NVRTC", what, format!("{r:?}"));
    let csrc = CString::new(src).map_err(|e| gpu_err("NVRTC", "source", e))?;
    let name = CString::new("fp8_gemm_sm90.cu").map_err(|e| gpu_err("NVRTC", "name", e))?;
    let mut opts: Vec<CString> =
        vec![CString::new("--gpu-architecture=sm_90a").map_err(|e| gpu_err("NVRTC", "option", e))?];
    for o in extra {
        opts.push(CString::new(o.as_str()).map_err(|e| gpu_err("NVRTC", "option", e))?);
    }
    let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut prog: rtc::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: the strings outlive the program; the program is destroyed on every path below.
    unsafe {
        let r = rtc::nvrtcCreateProgram(&mut prog, csrc.as_ptr(), name.as_ptr(), 0, std::ptr::null(), std::ptr::null());
        if r != rtc::nvrtcResult::NVRTC_SUCCESS {
            return Err(err("create program", r));
        }
        let out = (|| {
            let r = rtc::nvrtcCompileProgram(prog, ptrs.len() as i32, ptrs.as_ptr());
            if r != rtc::nvrtcResult::NVRTC_SUCCESS {
                let mut n = 0usize;
                rtc::nvrtcGetProgramLogSize(prog, &mut n);
                let mut log = vec![0 as c_char; n.max(1)];
                rtc::nvrtcGetProgramLog(prog, log.as_mut_ptr());
                let log = CStr::from_ptr(log.as_ptr()).to_string_lossy().into_owned();
                return Err(gpu_err("NVRTC", "fp8_gemm_sm90.cu", format!("{r:?}: {log}")));
            }
            let mut n = 0usize;
            let r = rtc::nvrtcGetCUBINSize(prog, &mut n);
            if r != rtc::nvrtcResult::NVRTC_SUCCESS {
                return Err(err("CUBIN size", r));
            }
            let mut bin = vec![0u8; n];
            let r = rtc::nvrtcGetCUBIN(prog, bin.as_mut_ptr() as *mut c_char);
            if r != rtc::nvrtcResult::NVRTC_SUCCESS {
                return Err(err("CUBIN", r));
            }
            Ok(bin)
        })();
        rtc::nvrtcDestroyProgram(&mut prog);
        out
    }
}

fn cluster_attr(cluster: u32) -> cu::CUlaunchAttribute {
    // SAFETY: an all-zero launch attribute is a valid bit pattern for this plain C struct.
    let mut attr: cu::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attr.value.clusterDim = cu::CUlaunchAttributeValue_union__bindgen_ty_1 { x: cluster, y: 1, z: 1 };
    attr
}

fn launch_config(
    cfg: &Sm90Config,
    grid: u32,
    stream: cu::CUstream,
    attr: &mut cu::CUlaunchAttribute,
) -> cu::CUlaunchConfig {
    cu::CUlaunchConfig {
        gridDimX: grid,
        gridDimY: 1,
        gridDimZ: 1,
        blockDimX: cfg.threads(),
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: cfg.smem_bytes(),
        hStream: stream,
        attrs: attr,
        numAttrs: 1,
    }
}

/// A 2-D TMA descriptor of a row-major `[dims[1]][dims[0]]` buffer with a row pitch of
/// `row_bytes`, loaded in boxes of `boxd` (128-byte swizzle for the wgmma operands).
fn tensor_map(
    dt: TmaType,
    ptr: u64,
    dims: [usize; 2],
    row_bytes: usize,
    boxd: [u32; 2],
    swizzle: bool,
    shape: &str,
) -> Result<cu::CUtensorMap> {
    // SAFETY: an all-zero tensor map is a valid bit pattern (the encoder fills it).
    let mut map: cu::CUtensorMap = unsafe { std::mem::zeroed() };
    let dims = [dims[0] as u64, dims[1] as u64];
    let strides = [row_bytes as u64];
    let elem = [1u32, 1];
    let sw = if swizzle {
        CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B
    } else {
        CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE
    };
    // SAFETY: every array holds the rank's (2, or 1 for the strides) entries; `ptr` is a device
    // address (cudaMalloc'd, 256-byte aligned); the encoder only writes `map`.
    unsafe {
        cu::cuTensorMapEncodeTiled(
            &mut map,
            dt,
            2,
            ptr as *mut c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxd.as_ptr(),
            elem.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sw,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    }
    .result()
    .map_err(|e| gpu_err("cuTensorMapEncodeTiled", shape, e))?;
    Ok(map)
}
