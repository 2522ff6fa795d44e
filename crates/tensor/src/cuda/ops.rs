//! Device paths of the layout, indexing, attention, RoPE and loss ops (`kernels/layout.cu`,
//! `index.cu`, `attention.cu`, `rope.cu`, `loss.cu`), so a training step stays on the GPU: each
//! op in `ops::*` dispatches here for CUDA tensors; index arrays and masks are uploaded per call.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr};

use super::{Arg, CudaBackend, MatView, cuda_err, grid, rows_cfg, suffix};
use crate::ops::attention::AttnMask;
use crate::ops::matmul::matmul;
use crate::ops::rope::RopeTable;
use crate::ops::strided::{broadcast_strides, contiguous_strides};
use crate::{DType, Result, Tensor};

/// Most dimensions a strided kernel takes (higher ranks fall back to the host).
pub(crate) const MAX_RANK: usize = 8;

/// Shape and three stride sets by value, as `struct Strided` in `kernels/layout.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Strided {
    rank: i32,
    shape: [i64; MAX_RANK],
    s0: [i64; MAX_RANK],
    s1: [i64; MAX_RANK],
    s2: [i64; MAX_RANK],
}

const _: () = assert!(std::mem::size_of::<Strided>() == 8 + 4 * 8 * MAX_RANK, "Strided must match the C layout");

// SAFETY: a plain `repr(C)` value with the layout of the kernels' `Strided` (i32, 4 bytes of
// padding, four i64 arrays).
unsafe impl DeviceRepr for Strided {}

impl Strided {
    fn new(shape: &[usize], s0: &[usize], s1: &[usize], s2: &[usize]) -> Strided {
        let z = [0; MAX_RANK];
        let mut g = Strided { rank: shape.len() as i32, shape: [1; MAX_RANK], s0: z, s1: z, s2: z };
        for i in 0..shape.len() {
            g.shape[i] = shape[i] as i64;
            g.s0[i] = s0[i] as i64;
            g.s1[i] = s1[i] as i64;
            g.s2[i] = s2.get(i).copied().unwrap_or(0) as i64;
        }
        g
    }
}

/// Per-device f32 copies of a host f64 table pair (the RoPE cos / sin), keyed by device ordinal.
#[derive(Default)]
pub struct DeviceTables(Mutex<Vec<(usize, Arc<TablePair>)>>);

/// A cos / sin pair on one device.
type TablePair = (CudaSlice<f32>, CudaSlice<f32>);

impl std::fmt::Debug for DeviceTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|v| v.len()).unwrap_or(0);
        write!(f, "DeviceTables({n} devices)")
    }
}

impl DeviceTables {
    fn get_or_upload(&self, be: &CudaBackend, a: &[f64], b: &[f64]) -> Result<Arc<TablePair>> {
        let mut v = self.0.lock().expect("device table lock");
        if let Some((_, t)) = v.iter().find(|(o, _)| *o == be.ordinal) {
            return Ok(t.clone());
        }
        let up = |x: &[f64]| be.stream.clone_htod(&x.iter().map(|&c| c as f32).collect::<Vec<f32>>()).map_err(cuda_err);
        let t = Arc::new((up(a)?, up(b)?));
        v.push((be.ordinal, t.clone()));
        Ok(t)
    }
}

fn elem_bytes(dt: DType) -> u64 {
    if dt == DType::BF16 { 2 } else { 4 }
}

impl CudaBackend {
    fn upload_u32(&self, v: &[u32]) -> Result<CudaSlice<u32>> {
        self.stream.clone_htod(if v.is_empty() { &[0u32][..] } else { v }).map_err(cuda_err)
    }

    fn dptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        s.device_ptr(&self.stream).0
    }

    /// `dst[dst_off + Σ c·s_dst] = src[src_off + Σ c·s_src]` over every index `c` of `shape`.
    #[allow(clippy::too_many_arguments)]
    fn copy_strided(
        &self,
        dt: DType,
        dst: u64,
        dst_off: usize,
        src: u64,
        src_off: usize,
        shape: &[usize],
        s_dst: &[usize],
        s_src: &[usize],
    ) -> Result<()> {
        let n: usize = shape.iter().product();
        if n == 0 {
            return Ok(());
        }
        let e = elem_bytes(dt);
        // 32-bit index arithmetic when the count and every offset fit in 31 bits.
        let reach = |st: &[usize]| shape.iter().zip(st).map(|(&d, &s)| (d - 1) * s).sum::<usize>();
        let small = n.max(reach(s_dst)).max(reach(s_src)) < (1 << 31);
        let g = Strided::new(shape, s_dst, s_src, &[]);
        let args = [
            Arg::P(dst + dst_off as u64 * e),
            Arg::P(src + src_off as u64 * e),
            Arg::I64(n as i64),
            Arg::S(Box::new(g)),
            Arg::I32(small as i32),
        ];
        self.launch("layout", &format!("copy_strided_{}", suffix(dt)), grid(n), &args)
    }

    /// `n` contiguous elements `src[src_off..]` → `dst[dst_off..]` (a device memcpy on the stream).
    fn copy_contiguous(&self, dt: DType, dst: u64, dst_off: usize, src: u64, src_off: usize, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let e = elem_bytes(dt);
        self.profiled("memcpy_dtod", || {
            // SAFETY: both ranges lie inside live device buffers of this stream (callers pass
            // offsets and counts within the tensors' extents).
            unsafe {
                cudarc::driver::result::memcpy_dtod_async(
                    dst + dst_off as u64 * e,
                    src + src_off as u64 * e,
                    n * e as usize,
                    self.stream.cu_stream(),
                )
            }
            .map_err(cuda_err)
        })
    }

    /// A contiguous tensor of `shape` read from `x` with `strides` (permute, broadcast).
    pub(crate) fn gather_strided(self: &Arc<Self>, x: &Tensor, shape: &[usize], strides: &[usize]) -> Result<Tensor> {
        let o = self.alloc(x.dtype(), shape.iter().product())?;
        let op = o.ptr(&self.stream);
        self.copy_strided(x.dtype(), op, 0, self.p(x), 0, shape, &contiguous_strides(shape), strides)?;
        Ok(self.wrap(o, shape))
    }

    pub(crate) fn narrow(self: &Arc<Self>, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        let mut shape = x.shape().clone();
        shape[dim] = len;
        let cs = contiguous_strides(x.shape());
        let o = self.alloc(x.dtype(), shape.iter().product())?;
        let op = o.ptr(&self.stream);
        if x.shape()[..dim].iter().all(|&d| d == 1) {
            // One contiguous run (e.g. an expert's rows): a memcpy.
            self.copy_contiguous(x.dtype(), op, 0, self.p(x), start * cs[dim], shape.iter().product())?;
            return Ok(self.wrap(o, &shape));
        }
        self.copy_strided(x.dtype(), op, 0, self.p(x), start * cs[dim], &shape, &contiguous_strides(&shape), &cs)?;
        Ok(self.wrap(o, &shape))
    }

    pub(crate) fn cat(self: &Arc<Self>, xs: &[Tensor], dim: usize, shape: &[usize]) -> Result<Tensor> {
        let dt = xs[0].dtype();
        let o = self.alloc(dt, shape.iter().product())?;
        let (op, cs) = (o.ptr(&self.stream), contiguous_strides(shape));
        let mut at = 0;
        let contiguous = shape[..dim].iter().all(|&d| d == 1);
        for x in xs {
            if contiguous {
                self.copy_contiguous(dt, op, at * cs[dim], self.p(x), 0, x.numel())?;
            } else {
                self.copy_strided(dt, op, at * cs[dim], self.p(x), 0, x.shape(), &cs, &contiguous_strides(x.shape()))?;
            }
            at += x.shape()[dim];
        }
        Ok(self.wrap(o, shape))
    }

    /// Broadcasting `a ∘ b` (kinds: 0 add, 1 sub, 2 mul, 3 div) into `shape`.
    pub(crate) fn binary_strided(
        self: &Arc<Self>,
        kind: u32,
        a: &Tensor,
        b: &Tensor,
        shape: &[usize],
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let o = self.alloc(a.dtype(), n)?;
        let g = Strided::new(
            shape,
            &contiguous_strides(shape),
            &broadcast_strides(a.shape(), shape),
            &broadcast_strides(b.shape(), shape),
        );
        let args = [
            Arg::P(o.ptr(&self.stream)),
            Arg::P(self.p(a)),
            Arg::P(self.p(b)),
            Arg::I64(n as i64),
            Arg::S(Box::new(g)),
            Arg::I32(kind as i32),
        ];
        if n > 0 {
            self.launch("layout", &format!("binary_strided_{}", suffix(a.dtype())), grid(n), &args)?;
        }
        Ok(self.wrap(o, shape))
    }

    /// Sum `g` over the dimensions broadcasting expanded, giving `target` (right-aligned).
    pub(crate) fn reduce_to(self: &Arc<Self>, g: &Tensor, target: &[usize]) -> Result<Tensor> {
        let st = broadcast_strides(target, g.shape());
        let gs = contiguous_strides(g.shape());
        let (mut keep, mut keep_out, mut keep_src, mut red, mut red_src) = (vec![], vec![], vec![], vec![], vec![]);
        for d in 0..g.rank() {
            if st[d] == 0 && g.shape()[d] != 1 {
                red.push(g.shape()[d]);
                red_src.push(gs[d]);
            } else {
                keep.push(g.shape()[d]);
                keep_out.push(st[d]);
                keep_src.push(gs[d]);
            }
        }
        let n: usize = target.iter().product();
        let rn: usize = red.iter().product();
        let o = self.alloc(g.dtype(), n)?;
        let kept = Strided::new(&keep, &keep_out, &keep_src, &[]);
        let zeros = vec![0; red.len()];
        let reduced = Strided::new(&red, &zeros, &red_src, &[]);
        let args = [
            Arg::P(o.ptr(&self.stream)),
            Arg::P(self.p(g)),
            Arg::I64(n as i64),
            Arg::S(Box::new(kept)),
            Arg::S(Box::new(reduced)),
            Arg::I64(rn as i64),
        ];
        if n > 0 {
            self.launch("layout", &format!("reduce_strided_{}", suffix(g.dtype())), grid(n), &args)?;
        }
        Ok(self.wrap(o, target))
    }

    /// Launch `index::{kernel}_{dtype of src}(out, src, idx, n, dims...)` over `n` elements (the
    /// shared signature of the index kernels), uploading `idx`.
    fn launch_indexed(
        &self,
        kernel: &str,
        out: u64,
        src: &Tensor,
        idx: &[u32],
        n: usize,
        dims: &[usize],
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let di = self.upload_u32(idx)?;
        let mut args = vec![Arg::P(out), Arg::P(self.p(src)), Arg::P(self.dptr(&di)), Arg::I64(n as i64)];
        args.extend(dims.iter().map(|&d| Arg::I64(d as i64)));
        self.launch("index", &format!("{kernel}_{}", suffix(src.dtype())), grid(n), &args)
    }

    pub(crate) fn index_select(self: &Arc<Self>, x: &Tensor, idx: &[u32], shape: &[usize]) -> Result<Tensor> {
        let row: usize = x.shape()[1..].iter().product();
        let o = self.alloc(x.dtype(), idx.len() * row)?;
        self.launch_indexed("index_select", o.ptr(&self.stream), x, idx, idx.len() * row, &[row])?;
        Ok(self.wrap(o, shape))
    }

    /// `out = zeros([n_rows, ...]); out[idx[i]] += src[i]`, accumulated in f32.
    pub(crate) fn index_add(self: &Arc<Self>, idx: &[u32], src: &Tensor, shape: &[usize]) -> Result<Tensor> {
        let row: usize = src.shape()[1..].iter().product();
        let o = self.alloc_zeroed(DType::F32, shape.iter().product())?;
        self.launch_indexed("index_add", o.ptr(&self.stream), src, idx, idx.len() * row, &[row])?;
        self.wrap(o, shape).to_dtype(src.dtype())
    }

    pub(crate) fn gather_last(self: &Arc<Self>, x: &Tensor, idx: &[u32], k: usize, shape: &[usize]) -> Result<Tensor> {
        let o = self.alloc(x.dtype(), idx.len())?;
        self.launch_indexed("gather_last", o.ptr(&self.stream), x, idx, idx.len(), &[k, x.dim(-1)])?;
        Ok(self.wrap(o, shape))
    }

    pub(crate) fn scatter_last(
        self: &Arc<Self>,
        dy: &Tensor,
        idx: &[u32],
        e: usize,
        shape: &[usize],
    ) -> Result<Tensor> {
        let o = self.alloc_zeroed(DType::F32, shape.iter().product())?;
        self.launch_indexed("scatter_last", o.ptr(&self.stream), dy, idx, idx.len(), &[dy.dim(-1), e])?;
        self.wrap(o, shape).to_dtype(dy.dtype())
    }

    /// Attention as cuBLAS score and value products around the masked-softmax kernel; the
    /// probabilities are returned in f32 (the CPU path's compute dtype) for the backward.
    pub(crate) fn attention(
        self: &Arc<Self>,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f64,
        mask: &AttnMask,
    ) -> Result<(Tensor, Tensor)> {
        let (b, h, s, t) = (q.dim(0), q.dim(1), q.dim(2), k.dim(2));
        let scores = matmul(q, k, false, true)?;
        let p = self.masked_softmax(&scores, (b, h, s, t), scale, mask)?;
        let o = matmul(&p.to_dtype(q.dtype())?, v, false, false)?;
        Ok((o, p))
    }

    /// `p = softmax(scale · scores + mask)` over the keys of `scores [B, H, S, T]`, in f32.
    fn masked_softmax(
        self: &Arc<Self>,
        scores: &Tensor,
        (b, h, s, t): (usize, usize, usize, usize),
        scale: f64,
        mask: &AttnMask,
    ) -> Result<Tensor> {
        let p = self.alloc(DType::F32, b * h * s * t)?;
        // Padding travels as one byte per key.
        let pad_bytes: Option<CudaSlice<u8>> = mask
            .key_padding
            .as_ref()
            .map(|m| self.stream.clone_htod(&m.iter().map(|&x| u8::from(x)).collect::<Vec<u8>>()).map_err(cuda_err))
            .transpose()?;
        let seg = mask.segment_ids.as_ref().map(|sg| self.upload_u32(sg)).transpose()?;
        let args = [
            Arg::P(p.ptr(&self.stream)),
            Arg::P(self.p(scores)),
            Arg::I32(mask.causal as i32),
            Arg::P(pad_bytes.as_ref().map_or(0, |d| self.dptr(d))),
            Arg::P(seg.as_ref().map_or(0, |d| self.dptr(d))),
            Arg::I64(h as i64),
            Arg::I64(s as i64),
            Arg::I64(t as i64),
            Arg::F32(scale as f32),
        ];
        if b * h * s > 0 {
            self.launch(
                "attention",
                &format!("masked_softmax_{}", suffix(scores.dtype())),
                rows_cfg(b * h * s, t),
                &args,
            )?;
        }
        Ok(self.wrap(p, &[b, h, s, t]))
    }

    pub(crate) fn attention_backward(
        self: &Arc<Self>,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        p: &Tensor,
        scale: f64,
        d_o: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let dt = q.dtype();
        let pc = p.to_dtype(dt)?;
        let dv = matmul(&pc, d_o, true, false)?;
        let dp = matmul(d_o, v, false, true)?;
        let ds = self.softmax_backward_scaled(p, &dp, scale)?;
        let dq = matmul(&ds, k, false, false)?;
        let dk = matmul(&ds, q, true, false)?;
        Ok((dq, dk, dv))
    }

    /// `dS = scale · P ⊙ (dP − rowsum(dP ⊙ P))` over the last dimension, in `dp`'s dtype.
    fn softmax_backward_scaled(self: &Arc<Self>, p: &Tensor, dp: &Tensor, scale: f64) -> Result<Tensor> {
        let dt = dp.dtype();
        let p32 = p.to_dtype(DType::F32)?;
        let t = p.dim(-1);
        let rows = p.numel() / t.max(1);
        let ds = self.alloc(dt, p.numel())?;
        let args = [
            Arg::P(ds.ptr(&self.stream)),
            Arg::P(self.p(&p32)),
            Arg::P(self.p(dp)),
            Arg::I64(t as i64),
            Arg::F32(scale as f32),
        ];
        if rows > 0 {
            self.launch("attention", &format!("softmax_bwd_scaled_{}", suffix(dt)), rows_cfg(rows, t), &args)?;
        }
        Ok(self.wrap(ds, p.shape()))
    }

    /// [`crate::ops::attention::attention_bshd`] on the GPU: `q [B, S, H, Dk]`, `k [B, T, H, Dk]`,
    /// `v [B, T, H, Dv]` read and `o [B, S, H, Dv]` written in place — per batch element one
    /// strided-batched GEMM over the heads (a head's rows `H·D` apart, heads `D` apart) — so
    /// no permutes; scores and probabilities `[B, H, S, T]` as in [`Self::attention`].
    pub(crate) fn attention_bshd(
        self: &Arc<Self>,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f64,
        mask: &AttnMask,
    ) -> Result<(Tensor, Tensor)> {
        let (b, s, h, dk, t, dv) = (q.dim(0), q.dim(1), q.dim(2), q.dim(3), k.dim(1), v.dim(3));
        let dt = q.dtype();
        let (qv, kv, vv, sv) = bshd_views(s, h, dk, t, dv);
        let mut scores = self.alloc(dt, b * h * s * t)?;
        for i in 0..b {
            self.gemm_views((s, t, dk, h), (q, qv(i)), (k, kv(i).t()), (&mut scores, sv(i)))?;
        }
        let scores = self.wrap(scores, &[b, h, s, t]);
        let p = self.masked_softmax(&scores, (b, h, s, t), scale, mask)?;
        let pc = p.to_dtype(dt)?;
        let mut o = self.alloc(dt, b * s * h * dv)?;
        let ov = |i| MatView { off: i * s * h * dv, ld: h * dv, stride: dv, trans: false };
        for i in 0..b {
            self.gemm_views((s, dv, t, h), (&pc, sv(i)), (v, vv(i)), (&mut o, ov(i)))?;
        }
        Ok((self.wrap(o, &[b, s, h, dv]), p))
    }

    /// Backward of [`Self::attention_bshd`]: `(dq, dk, dv)` in the `[B, len, H, D]` layout, the
    /// products of [`Self::attention_backward`] on the same in-place views.
    pub(crate) fn attention_bshd_backward(
        self: &Arc<Self>,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        p: &Tensor,
        scale: f64,
        d_o: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, s, h, dk, t, dv) = (q.dim(0), q.dim(1), q.dim(2), q.dim(3), k.dim(1), v.dim(3));
        let dt = q.dtype();
        let (qv, kv, vv, sv) = bshd_views(s, h, dk, t, dv);
        let ov = |i| MatView { off: i * s * h * dv, ld: h * dv, stride: dv, trans: false };
        let pc = p.to_dtype(dt)?;
        // dV = Pᵀ·dO, dP = dO·Vᵀ.
        let (mut dvb, mut dp) = (self.alloc(dt, b * t * h * dv)?, self.alloc(dt, b * h * s * t)?);
        for i in 0..b {
            self.gemm_views((t, dv, s, h), (&pc, sv(i).t()), (d_o, ov(i)), (&mut dvb, vv(i)))?;
            self.gemm_views((s, t, dv, h), (d_o, ov(i)), (v, vv(i).t()), (&mut dp, sv(i)))?;
        }
        let dp = self.wrap(dp, &[b, h, s, t]);
        let ds = self.softmax_backward_scaled(p, &dp, scale)?;
        // dQ = dS·K, dK = dSᵀ·Q.
        let (mut dq, mut dkb) = (self.alloc(dt, b * s * h * dk)?, self.alloc(dt, b * t * h * dk)?);
        for i in 0..b {
            self.gemm_views((s, dk, t, h), (&ds, sv(i)), (k, kv(i)), (&mut dq, qv(i)))?;
            self.gemm_views((t, dk, s, h), (&ds, sv(i).t()), (q, qv(i)), (&mut dkb, kv(i)))?;
        }
        Ok((self.wrap(dq, &[b, s, h, dk]), self.wrap(dkb, &[b, t, h, dk]), self.wrap(dvb, &[b, t, h, dv])))
    }

    /// Interleaved RoPE on `x [B, S, H, D]`; `sign` −1 rotates back (the backward).
    pub(crate) fn rope(
        self: &Arc<Self>,
        x: &Tensor,
        positions: &[u32],
        table: &RopeTable,
        sign: f64,
    ) -> Result<Tensor> {
        let (h, d) = (x.dim(2), x.dim(3));
        let half = d / 2;
        let n_pairs = x.numel() / 2;
        let o = self.alloc(x.dtype(), x.numel())?;
        if n_pairs > 0 {
            let tables = table.device.get_or_upload(self, &table.cos, &table.sin)?;
            let (dc, ds) = (&tables.0, &tables.1);
            let dpos = self.upload_u32(positions)?;
            let args = [
                Arg::P(o.ptr(&self.stream)),
                Arg::P(self.p(x)),
                Arg::P(self.dptr(&dpos)),
                Arg::P(self.dptr(dc)),
                Arg::P(self.dptr(ds)),
                Arg::I64(n_pairs as i64),
                Arg::I64(h as i64),
                Arg::I64(half as i64),
                Arg::F32(sign as f32),
            ];
            self.launch("rope", &format!("rope_{}", suffix(x.dtype())), grid(n_pairs), &args)?;
        }
        Ok(self.wrap(o, x.shape()))
    }

    /// Per-row cross-entropy summed on the host in f64: `(Σ loss, counted rows)`.
    pub(crate) fn cross_entropy_sum(self: &Arc<Self>, logits: &Tensor, targets: &[i64], ignore: i64) -> Result<f64> {
        let v = logits.dim(-1);
        let rows = targets.len();
        if rows == 0 {
            return Ok(0.0);
        }
        let dt = self.stream.clone_htod(targets).map_err(cuda_err)?;
        let l = self.alloc(DType::F32, rows)?;
        let args = [
            Arg::P(l.ptr(&self.stream)),
            Arg::P(self.p(logits)),
            Arg::P(self.dptr(&dt)),
            Arg::I64(v as i64),
            Arg::I64(ignore),
        ];
        self.launch("loss", &format!("ce_rows_{}", suffix(logits.dtype())), rows_cfg(rows, v), &args)?;
        let host = self.wrap(l, &[rows]).to_vec::<f32>()?;
        Ok(host.iter().map(|&x| f64::from(x)).sum())
    }

    pub(crate) fn cross_entropy_backward(
        self: &Arc<Self>,
        logits: &Tensor,
        targets: &[i64],
        ignore: i64,
        g: f64,
    ) -> Result<Tensor> {
        let v = logits.dim(-1);
        let rows = targets.len();
        let d = self.alloc(logits.dtype(), logits.numel())?;
        if rows > 0 {
            let dt = self.stream.clone_htod(targets).map_err(cuda_err)?;
            let args = [
                Arg::P(d.ptr(&self.stream)),
                Arg::P(self.p(logits)),
                Arg::P(self.dptr(&dt)),
                Arg::I64(v as i64),
                Arg::I64(ignore),
                Arg::F32(g as f32),
            ];
            self.launch("loss", &format!("ce_bwd_{}", suffix(logits.dtype())), rows_cfg(rows, v), &args)?;
        }
        Ok(self.wrap(d, logits.shape()))
    }
}

impl CudaBackend {
    /// `out[r] = x[src[r]]` (zero where `src[r] < 0`) for rows of `cols` elements: one launch.
    fn gather_rows(self: &Arc<Self>, x: &Tensor, src: &[i64], cols: usize) -> Result<Tensor> {
        let n = src.len() * cols;
        let o = self.alloc(x.dtype(), n)?;
        if n > 0 {
            let ds = self.stream.clone_htod(src).map_err(cuda_err)?;
            let args = [
                Arg::P(o.ptr(&self.stream)),
                Arg::P(self.p(x)),
                Arg::P(self.dptr(&ds)),
                Arg::I64(n as i64),
                Arg::I64(cols as i64),
            ];
            self.launch("index", &format!("gather_rows_{}", suffix(x.dtype())), grid(n), &args)?;
        }
        Ok(self.wrap(o, &[src.len(), cols]))
    }

    /// Rows `offsets[e]..offsets[e+1]` of `x [N, cols]` into slot `e` of `[groups, m_max, cols]`,
    /// zero rows after each group's own.
    pub(crate) fn pad_groups(self: &Arc<Self>, x: &Tensor, offsets: &[usize], m_max: usize) -> Result<Tensor> {
        let groups = offsets.len() - 1;
        let src: Vec<i64> = (0..groups)
            .flat_map(|e| {
                (0..m_max).map(move |r| if offsets[e] + r < offsets[e + 1] { (offsets[e] + r) as i64 } else { -1 })
            })
            .collect();
        self.gather_rows(x, &src, x.dim(1))?.reshape(&[groups, m_max, x.dim(1)])
    }

    /// The inverse of [`CudaBackend::pad_groups`]: `[groups, m_max, cols]` → `[N, cols]`.
    pub(crate) fn unpad_groups(self: &Arc<Self>, y: &Tensor, offsets: &[usize]) -> Result<Tensor> {
        let (groups, m_max, cols) = (y.dim(0), y.dim(1), y.dim(2));
        let src: Vec<i64> =
            (0..groups).flat_map(|e| (0..offsets[e + 1] - offsets[e]).map(move |r| (e * m_max + r) as i64)).collect();
        self.gather_rows(&y.reshape(&[groups * m_max, cols])?, &src, cols)
    }

    /// Copy between one contiguous `[k, per]` buffer and `k` separate buffers of `per` elements
    /// (given by address): gather when `scatter` is false, else scatter. One launch.
    fn stack_bufs(&self, dt: DType, flat: u64, bufs: &[u64], per: usize, scatter: bool) -> Result<()> {
        let n = bufs.len() * per;
        if n == 0 {
            return Ok(());
        }
        let db = self.stream.clone_htod(bufs).map_err(cuda_err)?;
        let args =
            [Arg::P(flat), Arg::P(self.dptr(&db)), Arg::I64(per as i64), Arg::I64(n as i64), Arg::I32(scatter as i32)];
        self.launch("index", &format!("stack_bufs_{}", suffix(dt)), grid(n), &args)
    }

    /// `ws` (each `[out, in]`) stacked into `[groups, out, in]`.
    pub(crate) fn stack(self: &Arc<Self>, ws: &[Tensor]) -> Result<Tensor> {
        let (out, inf, dt) = (ws[0].dim(0), ws[0].dim(1), ws[0].dtype());
        let o = self.alloc(dt, ws.len() * out * inf)?;
        let ptrs: Vec<u64> = ws.iter().map(|w| self.p(w)).collect();
        self.stack_bufs(dt, o.ptr(&self.stream), &ptrs, out * inf, false)?;
        Ok(self.wrap(o, &[ws.len(), out, inf]))
    }

    /// `[k, rows, cols]` → the kept matrices as separate tensors, in one launch.
    pub(crate) fn unstack(self: &Arc<Self>, w: &Tensor, keep: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let (k, rows, cols, dt) = (w.dim(0), w.dim(1), w.dim(2), w.dtype());
        let per = rows * cols;
        let mut outs: Vec<Option<Tensor>> = Vec::with_capacity(k);
        let (mut ptrs, mut kept) = (Vec::new(), Vec::new());
        for (g, &on) in keep.iter().enumerate() {
            if !on {
                outs.push(None);
                continue;
            }
            let st = self.alloc(dt, per)?;
            ptrs.push(st.ptr(&self.stream));
            kept.push(g as i64);
            outs.push(Some(self.wrap(st, &[rows, cols])));
        }
        // The kept matrices are not contiguous in `w` when some are dropped: gather them first.
        let src = if kept.len() == k { w.clone() } else { self.gather_rows(&w.reshape(&[k, per])?, &kept, per)? };
        self.stack_bufs(dt, self.p(&src), &ptrs, per, true)?;
        Ok(outs)
    }

    /// Grouped linear as one strided-batched GEMM over the groups padded to the largest group
    /// (zero rows; the routed experts' loads are near balanced, so little work is wasted).
    /// cuBLAS's own grouped GEMM (`cublasGemmGroupedBatchedEx`) was slower on the gpu-medium
    /// expert shapes (docs/PERF.md, gpu-medium training step).
    pub(crate) fn grouped_linear(self: &Arc<Self>, x: &Tensor, ws: &[Tensor], offsets: &[usize]) -> Result<Tensor> {
        let m_max = offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        if m_max == 0 {
            return Tensor::zeros(&[0, ws[0].dim(0)], x.dtype(), x.device());
        }
        let y = matmul(&self.pad_groups(x, offsets, m_max)?, &self.stack(ws)?, false, true)?;
        self.unpad_groups(&y, offsets)
    }

    pub(crate) fn grouped_linear_backward(
        self: &Arc<Self>,
        x: &Tensor,
        ws: &[Tensor],
        offsets: &[usize],
        dy: &Tensor,
    ) -> Result<(Tensor, Vec<Option<Tensor>>)> {
        let m_max = offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        if m_max == 0 {
            return Ok((Tensor::zeros(x.shape(), x.dtype(), x.device())?, vec![None; ws.len()]));
        }
        let (x_pad, dy_pad, w) =
            (self.pad_groups(x, offsets, m_max)?, self.pad_groups(dy, offsets, m_max)?, self.stack(ws)?);
        let dx = self.unpad_groups(&matmul(&dy_pad, &w, false, false)?, offsets)?;
        let dw = matmul(&dy_pad, &x_pad, true, false)?;
        let keep: Vec<bool> = offsets.windows(2).map(|w| w[1] > w[0]).collect();
        Ok((dx, self.unstack(&dw, &keep)?))
    }
}

impl MatView {
    /// The same matrices read as their transposes.
    fn t(self) -> MatView {
        MatView { trans: !self.trans, ..self }
    }
}

/// The per-batch-element views of [`CudaBackend::attention_bshd`]: `q`/`dq` (`[B, S, H, Dk]`),
/// `k`/`dk` (`[B, T, H, Dk]`), `v`/`dv` (`[B, T, H, Dv]`) — one matrix per head, rows `H·D`
/// apart, heads `D` apart — and the scores / probabilities `[B, H, S, T]` (one `S × T` matrix
/// per head).
#[allow(clippy::type_complexity)]
fn bshd_views(
    s: usize,
    h: usize,
    dk: usize,
    t: usize,
    dv: usize,
) -> (impl Fn(usize) -> MatView, impl Fn(usize) -> MatView, impl Fn(usize) -> MatView, impl Fn(usize) -> MatView) {
    (
        move |i| MatView { off: i * s * h * dk, ld: h * dk, stride: dk, trans: false },
        move |i| MatView { off: i * t * h * dk, ld: h * dk, stride: dk, trans: false },
        move |i| MatView { off: i * t * h * dv, ld: h * dv, stride: dv, trans: false },
        move |i| MatView { off: i * h * s * t, ld: t, stride: s * t, trans: false },
    )
}

/// Device paths of [`crate::ops::cache`]: in-place row writes and attention over a cache prefix.
impl CudaBackend {
    /// `dst[.., offset .. offset + src.dim(dim), ..] = src` in one strided copy (checked by the
    /// caller: shapes fit, same dtype, `dst` not shared).
    pub(crate) fn write_at(
        &self,
        dst: &mut super::CudaStorage,
        dst_shape: &[usize],
        dim: usize,
        offset: usize,
        src: &Tensor,
    ) -> Result<()> {
        let cs = contiguous_strides(dst_shape);
        let dp = dst.ptr(&self.stream);
        if dst_shape[..dim].iter().all(|&d| d == 1) {
            return self.copy_contiguous(src.dtype(), dp, offset * cs[dim], self.p(src), 0, src.numel());
        }
        self.copy_strided(
            src.dtype(),
            dp,
            offset * cs[dim],
            self.p(src),
            0,
            src.shape(),
            &cs,
            &contiguous_strides(src.shape()),
        )
    }

    /// [`crate::ops::cache::attention_cached`]: two strided-batched GEMMs that address the first
    /// `len` rows of `kv [B, cap, D]` in place (keys transposed, values the first `dv` columns),
    /// with the scale, padding mask and softmax between them.
    pub(crate) fn attention_cached(
        self: &Arc<Self>,
        q: &Tensor,
        kv: &Tensor,
        len: usize,
        dv: usize,
        scale: f64,
        key_padding: Option<&[bool]>,
    ) -> Result<Tensor> {
        use crate::ops::elementwise::{add, affine};
        use crate::ops::softmax::softmax;
        let (b, s, d, cap) = (q.dim(0), q.dim(1), q.dim(2), kv.dim(1));
        let dt = q.dtype();
        let mut sc = self.alloc(dt, b * s * len)?;
        self.gemm_views(
            (s, len, d, b),
            (q, MatView { off: 0, ld: d, stride: s * d, trans: false }),
            (kv, MatView { off: 0, ld: d, stride: cap * d, trans: true }),
            (&mut sc, MatView { off: 0, ld: len, stride: s * len, trans: false }),
        )?;
        let mut scores = affine(&self.wrap(sc, &[b, s, len]), scale, 0.0)?;
        if let Some(m) = key_padding {
            let bias: Vec<f32> = m.iter().map(|&v| if v { 0.0 } else { f32::NEG_INFINITY }).collect();
            let bias = Tensor::from_vec(bias, &[b, 1, len])?.to_dtype(dt)?.to_device(q.device())?;
            scores = add(&scores, &bias)?;
        }
        let p = softmax(&scores)?;
        let mut o = self.alloc(dt, b * s * dv)?;
        self.gemm_views(
            (s, dv, len, b),
            (&p, MatView { off: 0, ld: len, stride: s * len, trans: false }),
            (kv, MatView { off: 0, ld: d, stride: cap * d, trans: false }),
            (&mut o, MatView { off: 0, ld: dv, stride: s * dv, trans: false }),
        )?;
        Ok(self.wrap(o, &[b, s, dv]))
    }
}
