//! Matrix products: `C = op(A) · op(B)` with optional transposes, batched over leading
//! dimensions, `B` optionally shared by every batch (a weight). CPU: the `gemm` crate on rayon;
//! CUDA: cuBLAS (f32, and bf16 with f32 accumulation).

use rayon::prelude::*;

use super::{host, out, same_device, same_dtype, sl, with_float};
use crate::error::shape_err;
use crate::{Float, Result, Shape, Tensor};

/// Dimensions of one product: `batch` products of `[m,k]·[k,n]`; `b_shared` when B is 2-D.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MmDims {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub b_shared: bool,
}

pub(crate) fn mm_dims(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<(MmDims, Shape)> {
    let bad = |d: &str| shape_err("matmul", d, &[a.shape(), b.shape()]);
    if a.rank() < 2 || b.rank() < 2 {
        return Err(bad("operands need rank >= 2"));
    }
    let (ar, ac) = (a.dim(-2), a.dim(-1));
    let (br, bc) = (b.dim(-2), b.dim(-1));
    let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if tb { (bc, br) } else { (br, bc) };
    if k != kb {
        return Err(bad(&format!("inner dimensions differ ({k} vs {kb}; ta={ta}, tb={tb})")));
    }
    let batch_dims = &a.shape()[..a.rank() - 2];
    let b_shared = b.rank() == 2;
    if !b_shared && &b.shape()[..b.rank() - 2] != batch_dims {
        return Err(bad("batch dimensions differ (B must be 2-D or share A's batch dims)"));
    }
    let mut shape = batch_dims.to_vec();
    shape.extend([m, n]);
    Ok((MmDims { batch: batch_dims.iter().product(), m, n, k, b_shared }, shape))
}

/// One `[m,k]·[k,n]` product into `c` (overwritten), strides from the transpose flags.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_one<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    ta: bool,
    b: &[T],
    tb: bool,
    c: &mut [T],
    par: gemm::Parallelism,
) {
    let (lda, ldb) = (if ta { m } else { k }, if tb { k } else { n });
    gemm_ld(m, n, k, (a, lda, ta), (b, ldb, tb), (c, n), false, par);
}

/// `C (+)= op(A)·op(B)` on sub-matrices of row-major buffers: each operand is `(buffer, leading
/// dimension, transposed)`, `C` is `(buffer, leading dimension)`; `accumulate` adds into `C`
/// instead of overwriting it. `op(A)` is `m × k` (stored `k × m` when transposed), `op(B)` `k × n`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_ld<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    (a, lda, ta): (&[T], usize, bool),
    (b, ldb, tb): (&[T], usize, bool),
    (c, ldc): (&mut [T], usize),
    accumulate: bool,
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            (0..m).for_each(|i| c[i * ldc..i * ldc + n].iter_mut().for_each(|v| *v = T::zero()));
        }
        return;
    }
    let (a_cs, a_rs) = if ta { (lda as isize, 1) } else { (1, lda as isize) };
    let (b_cs, b_rs) = if tb { (ldb as isize, 1) } else { (1, ldb as isize) };
    let need = |rows: usize, cols: usize, ld: usize| (rows - 1) * ld + cols;
    assert!(
        a.len() >= if ta { need(k, m, lda) } else { need(m, k, lda) }
            && b.len() >= if tb { need(n, k, ldb) } else { need(k, n, ldb) }
            && c.len() >= need(m, n, ldc),
        "gemm_ld: operand buffers too short for the product"
    );
    let t0 = gemm_profile_on().then(std::time::Instant::now);
    // SAFETY: the assertion above shows every addressed element lies inside its slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            if accumulate { T::one() } else { T::zero() },
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
    if let Some(t0) = t0 {
        let mut g = GEMM_PROFILE.lock().unwrap_or_else(|e| e.into_inner());
        let e = g.entry((m, n, k, ta, tb, !matches!(par, gemm::Parallelism::None))).or_default();
        e.0 += 1;
        e.1 += t0.elapsed().as_secs_f64();
    }
}

/// Per-shape CPU GEMM times, kept when `R1_GEMM_PROFILE` is set: `(m, n, k, ta, tb, threaded)` →
/// (calls, seconds on the calling thread).
type GemmProfile = std::collections::BTreeMap<(usize, usize, usize, bool, bool, bool), (usize, f64)>;
static GEMM_PROFILE: std::sync::Mutex<GemmProfile> = std::sync::Mutex::new(std::collections::BTreeMap::new());

fn gemm_profile_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("R1_GEMM_PROFILE").is_some())
}

/// Forget the GEMM times recorded so far (e.g. after warm-up steps).
pub fn gemm_profile_reset() {
    GEMM_PROFILE.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// The CPU GEMM profile (`R1_GEMM_PROFILE=1`): one line per shape, slowest first, with the rate
/// each call reached on its thread (a threaded call's time is wall time on both cores, so its
/// rate is for both); empty when profiling is off.
pub fn gemm_profile_report() -> String {
    let g = GEMM_PROFILE.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<_> = g.iter().collect();
    rows.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
    let mut s = String::new();
    for ((m, n, k, ta, tb, par), (calls, t)) in rows {
        let gflop = 2.0 * (m * n * k * calls) as f64 / 1e9;
        let threads = if *par { "all threads" } else { "one thread" };
        s += &format!(
            "{m:>5}x{n:<5}x{k:<5} ta={} tb={} {threads}: {calls:>6} calls {t:>8.4} s {:>6.1} GFLOP/s\n",
            *ta as u8,
            *tb as u8,
            gflop / t
        );
    }
    s
}

/// Batched product on host buffers.
pub(crate) fn gemm_batched<T: Float>(d: MmDims, a: &[T], ta: bool, b: &[T], tb: bool) -> Vec<T> {
    let MmDims { batch, m, n, k, .. } = d;
    let len = batch * m * n;
    // Zero-filled although every product overwrites it: the `gemm` crate copies the destination
    // tile into scratch before applying alpha = 0, so uninitialised memory would be read.
    let mut c = vec![T::zero(); len];
    if len > 0 && k > 0 {
        gemm_batched_into(d, a, ta, b, tb, &mut c);
    }
    c
}

fn gemm_batched_into<T: Float>(d: MmDims, a: &[T], ta: bool, b: &[T], tb: bool, c: &mut [T]) {
    let MmDims { batch, m, n, k, b_shared } = d;
    if b_shared && !ta {
        // Fold the batch into the rows: one large GEMM.
        gemm_one(batch * m, n, k, a, false, b, tb, c, par_for(batch * m, n, k));
        return;
    }
    let b_stride = if b_shared { 0 } else { k * n };
    if batch >= rayon::current_num_threads() && m * n * k < (1 << 21) {
        c.par_chunks_mut(m * n.max(1)).enumerate().for_each(|(i, ci)| {
            gemm_one(m, n, k, &a[i * m * k..], ta, &b[i * b_stride..], tb, ci, gemm::Parallelism::None)
        });
    } else {
        for i in 0..batch {
            let ci = &mut c[i * m * n..(i + 1) * m * n];
            gemm_one(m, n, k, &a[i * m * k..], ta, &b[i * b_stride..], tb, ci, par_for(m, n, k));
        }
    }
}

fn par_for(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    if m * n * k >= 1 << 15 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None }
}

/// `C = op(A)·op(B)`, `op` a transpose when its flag is set. A is `[..., r, c]`; B is 2-D (shared
/// by every batch) or has A's batch dimensions.
pub fn matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
    let dev = same_device("matmul", &[a, b])?;
    let dt = same_dtype("matmul", &[a, b])?;
    let (d, shape) = mm_dims(a, b, ta, tb)?;
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = &dev {
        return be.matmul(a, b, ta, tb, d, &shape);
    }
    let (ha, hb) = (host(a)?, host(b)?);
    with_float!(dt, T, {
        let c = gemm_batched(d, sl::<T>(&ha), ta, sl::<T>(&hb), tb);
        out(c, &shape, dt, &dev)
    })
}

/// Backward of [`matmul`]: `(dA, dB)` for the same transpose flags. For a shared (2-D) B,
/// dB sums over the batch.
pub fn matmul_backward(a: &Tensor, b: &Tensor, ta: bool, tb: bool, dc: &Tensor) -> Result<(Tensor, Tensor)> {
    let (d, shape) = mm_dims(a, b, ta, tb)?;
    if dc.shape() != &shape {
        return Err(shape_err(
            "matmul_backward",
            "dC must have the product's shape",
            &[a.shape(), b.shape(), dc.shape()],
        ));
    }
    // dA = dC·op(B)ᵀ, transposed back when A was stored transposed.
    let da = matmul(dc, b, false, !tb)?;
    let da = if ta { super::shape::transpose_last2(&da)? } else { da };
    let db = if d.b_shared {
        // Fold the batch: A as [batch·rows, cols] (rows-major) when not transposed.
        if !ta {
            let a2 = a.reshape(&[d.batch * d.m, d.k])?;
            let dc2 = dc.reshape(&[d.batch * d.m, d.n])?;
            if tb { matmul(&dc2, &a2, true, false)? } else { matmul(&a2, &dc2, true, false)? }
        } else {
            let per = if tb { matmul(dc, a, true, true)? } else { matmul(a, dc, false, false)? };
            super::reduce::sum_dim(&per.reshape(&[d.batch, b.dim(0), b.dim(1)])?, 0)?
        }
    } else if tb {
        matmul(dc, a, true, ta)?
    } else {
        matmul(a, dc, !ta, false)?
    };
    Ok((da.reshape(a.shape())?, db.reshape(b.shape())?))
}

/// A linear layer without bias, `y = x·Wᵀ`, with `W` stored `[out, in]` as in HF checkpoints.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    matmul(x, w, false, true)
}

/// Backward of [`linear`]: `(dx, dW)`.
pub fn linear_backward(x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    matmul_backward(x, w, false, true, dy)
}

fn check_groups(op: &'static str, x: &Tensor, ws: &[Tensor], offsets: &[usize], cols: usize) -> Result<()> {
    let bad = |d: String| shape_err(op, d, &[x.shape()]);
    if x.rank() != 2 {
        return Err(bad("x must be [rows, features]".into()));
    }
    if offsets.len() != ws.len() + 1 || offsets.first() != Some(&0) || offsets.last() != Some(&x.dim(0)) {
        return Err(bad(format!(
            "offsets {offsets:?} must run from 0 to the {} rows, one more than the weights",
            x.dim(0)
        )));
    }
    if offsets.windows(2).any(|w| w[1] < w[0]) {
        return Err(bad(format!("offsets {offsets:?} decrease")));
    }
    if let Some((e, w)) =
        ws.iter().enumerate().find(|(_, w)| w.rank() != 2 || w.dim(1) != cols || w.dim(0) != ws[0].dim(0))
    {
        return Err(shape_err(op, format!("weight {e} must be [{}, {cols}]", ws[0].dim(0)), &[w.shape()]));
    }
    same_device(op, &[x, &ws[0]])?;
    same_dtype(op, &[x, &ws[0]])?;
    Ok(())
}

/// Grouped linear (the routed experts' projections, DeepSeekMoE): rows
/// `offsets[e]..offsets[e+1]` of `x [N, in]` go through `ws[e] [out, in]`, giving `[N, out]`.
/// On CUDA one strided-batched GEMM over the groups padded to the largest replaces a product
/// per expert; on the CPU the groups run concurrently, each as [`linear`] would compute it.
pub fn grouped_linear(x: &Tensor, ws: &[Tensor], offsets: &[usize]) -> Result<Tensor> {
    if ws.is_empty() {
        return Err(shape_err("grouped_linear", "no weights", &[x.shape()]));
    }
    check_groups("grouped_linear", x, ws, offsets, x.dim(-1))?;
    let out_f = ws[0].dim(0);
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = x.device() {
        return be.grouped_linear(x, ws, offsets);
    }
    let parts: Vec<Tensor> = (0..ws.len())
        .into_par_iter()
        .filter(|&e| offsets[e + 1] > offsets[e])
        .map(|e| linear(&super::shape::narrow(x, 0, offsets[e], offsets[e + 1] - offsets[e])?, &ws[e]))
        .collect::<Result<_>>()?;
    if parts.is_empty() {
        return Tensor::zeros(&[0, out_f], x.dtype(), x.device());
    }
    super::shape::cat(&parts, 0)
}

/// Backward of [`grouped_linear`]: `dx [N, in]` and each group's `dW [out, in]` (`None` for a
/// group without rows).
pub fn grouped_linear_backward(
    x: &Tensor,
    ws: &[Tensor],
    offsets: &[usize],
    dy: &Tensor,
) -> Result<(Tensor, Vec<Option<Tensor>>)> {
    if ws.is_empty() {
        return Err(shape_err("grouped_linear_backward", "no weights", &[x.shape()]));
    }
    check_groups("grouped_linear_backward", x, ws, offsets, x.dim(-1))?;
    if dy.shape() != &[x.dim(0), ws[0].dim(0)] {
        return Err(shape_err("grouped_linear_backward", "dy must be [N, out]", &[x.shape(), dy.shape()]));
    }
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = x.device() {
        return be.grouped_linear_backward(x, ws, offsets, dy);
    }
    let res: Vec<Option<(Tensor, Tensor)>> = (0..ws.len())
        .into_par_iter()
        .map(|e| {
            let n = offsets[e + 1] - offsets[e];
            if n == 0 {
                return Ok(None);
            }
            let xe = super::shape::narrow(x, 0, offsets[e], n)?;
            let de = super::shape::narrow(dy, 0, offsets[e], n)?;
            Ok(Some(linear_backward(&xe, &ws[e], &de)?))
        })
        .collect::<Result<_>>()?;
    let (mut dxs, mut dws) = (Vec::new(), Vec::new());
    for r in res {
        match r {
            Some((dx, dw)) => {
                dxs.push(dx);
                dws.push(Some(dw));
            }
            None => dws.push(None),
        }
    }
    let dx =
        if dxs.is_empty() { Tensor::zeros(x.shape(), x.dtype(), x.device())? } else { super::shape::cat(&dxs, 0)? };
    Ok((dx, dws))
}

/// Rows `offsets[g]..offsets[g+1]` of `x [N, cols]` into slot `g` of `[groups, m_max, cols]`,
/// zero rows after each group's own (`m_max` ≥ the largest group): the padded layout in which a
/// grouped product is one batched GEMM.
pub fn pad_groups(x: &Tensor, offsets: &[usize], m_max: usize) -> Result<Tensor> {
    let groups = offsets.len().saturating_sub(1);
    if x.rank() != 2
        || offsets.first() != Some(&0)
        || offsets.last() != Some(&x.dim(0))
        || offsets.windows(2).any(|w| w[1] < w[0] || w[1] - w[0] > m_max)
    {
        return Err(shape_err("pad_groups", format!("offsets {offsets:?} / m_max {m_max} do not fit"), &[x.shape()]));
    }
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = x.device() {
        return be.pad_groups(x, offsets, m_max);
    }
    let cols = x.dim(1);
    let hx = host(x)?;
    with_float!(x.dtype(), T, {
        let xs = sl::<T>(&hx);
        let mut v = vec![T::zero(); groups * m_max * cols];
        for g in 0..groups {
            let n = offsets[g + 1] - offsets[g];
            v[g * m_max * cols..(g * m_max + n) * cols].copy_from_slice(&xs[offsets[g] * cols..offsets[g + 1] * cols]);
        }
        out(v, &[groups, m_max, cols], x.dtype(), x.device())
    })
}

/// The inverse of [`pad_groups`]: `[groups, m_max, cols]` → `[N, cols]` (each group's first rows).
pub fn unpad_groups(y: &Tensor, offsets: &[usize]) -> Result<Tensor> {
    if y.rank() != 3
        || offsets.len() != y.dim(0) + 1
        || offsets.first() != Some(&0)
        || offsets.windows(2).any(|w| w[1] < w[0] || w[1] - w[0] > y.dim(1))
    {
        return Err(shape_err("unpad_groups", format!("offsets {offsets:?} do not fit"), &[y.shape()]));
    }
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = y.device() {
        return be.unpad_groups(y, offsets);
    }
    let (m_max, cols) = (y.dim(1), y.dim(2));
    let hy = host(y)?;
    with_float!(y.dtype(), T, {
        let ys = sl::<T>(&hy);
        let mut v = Vec::with_capacity(offsets[offsets.len() - 1] * cols);
        for g in 0..y.dim(0) {
            let n = offsets[g + 1] - offsets[g];
            v.extend_from_slice(&ys[g * m_max * cols..(g * m_max + n) * cols]);
        }
        out(v, &[offsets[offsets.len() - 1], cols], y.dtype(), y.device())
    })
}

/// Equal-shaped matrices stacked into `[k, rows, cols]` (the experts' weights for a batched GEMM).
pub fn stack(ws: &[Tensor]) -> Result<Tensor> {
    let first = ws.first().ok_or_else(|| crate::TensorError::Arg { op: "stack", detail: "no tensors".into() })?;
    if let Some(w) = ws.iter().find(|w| w.shape() != first.shape() || w.rank() != 2) {
        return Err(shape_err("stack", "matrices must share one 2-D shape", &[first.shape(), w.shape()]));
    }
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = first.device() {
        return be.stack(ws);
    }
    let parts: Vec<Tensor> = ws.iter().map(|w| w.reshape(&[1, first.dim(0), first.dim(1)])).collect::<Result<_>>()?;
    super::shape::cat(&parts, 0)
}

/// The inverse of [`stack`]: `[k, rows, cols]` → `k` matrices `[rows, cols]` (only those `keep`
/// selects; the others are `None`).
pub fn unstack(w: &Tensor, keep: &[bool]) -> Result<Vec<Option<Tensor>>> {
    if w.rank() != 3 || keep.len() != w.dim(0) {
        return Err(shape_err("unstack", format!("{} flags for a stack of {}", keep.len(), w.dim(0)), &[w.shape()]));
    }
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = w.device() {
        return be.unstack(w, keep);
    }
    (0..w.dim(0))
        .map(|g| {
            if !keep[g] {
                return Ok(None);
            }
            Ok(Some(super::shape::narrow(w, 0, g, 1)?.reshape(&[w.dim(1), w.dim(2)])?))
        })
        .collect()
}
