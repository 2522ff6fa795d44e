//! Scaled dot-product attention with causal, key-padding and packed-sequence (segment) masks,
//! softmax in the compute dtype (f32 or f64), and its backward pass.
//!
//! Shapes: `q [B, H, S, Dk]`, `k [B, H, T, Dk]`, `v [B, H, T, Dv]` → `o [B, H, S, Dv]`.
//! With `S < T` (decoding) query `i` sits at key position `i + T − S`. Without a causal mask S may
//! exceed T (e.g. absorbed MLA decoding, where the heads of one token are the query rows).

use rayon::prelude::*;

use super::matmul::gemm_ld;
use super::shape::permute;
use super::vmath::{self, simd};
use super::{host, out, same_device, same_dtype, sl, with_float};
use crate::error::shape_err;
use crate::{Float, Result, Tensor};

/// Which keys each query may attend to.
#[derive(Clone, Debug, Default)]
pub struct AttnMask {
    /// Query at position `p` sees keys `≤ p`.
    pub causal: bool,
    /// `[B, T]`: `false` marks a padding key that no query sees.
    pub key_padding: Option<Vec<bool>>,
    /// `[B, T]`: packed sequences; a query sees only keys of its own segment.
    pub segment_ids: Option<Vec<u32>>,
}

impl AttnMask {
    /// A plain causal mask.
    pub fn causal() -> AttnMask {
        AttnMask { causal: true, ..Default::default() }
    }

    /// Query row `i`'s key position and the end (exclusive) of the keys the causal part of the
    /// mask lets it see; the end never decreases with `i`.
    fn row(&self, s: usize, t: usize, i: usize) -> (usize, usize) {
        let qp = if t >= s { i + t - s } else { i.min(t - 1) };
        (qp, if self.causal { qp + 1 } else { t })
    }

    /// The padding and segment parts of the mask (the causal part is [`AttnMask::row`]'s end).
    fn key_visible(&self, b: usize, t_len: usize, q_pos: usize, j: usize) -> bool {
        self.key_padding.as_ref().is_none_or(|m| m[b * t_len + j])
            && self.segment_ids.as_ref().is_none_or(|s| s[b * t_len + j] == s[b * t_len + q_pos])
    }
}

/// Query rows per block. A block's score and value products stop at the last key its rows may
/// see (forward) or its last non-zero probability (backward), so a causal mask skips the upper
/// triangle block by block instead of multiplying it out and masking it.
const ROW_BLOCK: usize = 32;

/// `row[..lim] ← softmax(scale · row[..lim])` over the keys `visible(j)` admits, every other
/// entry 0. Returns false (row all zeros) when no key is visible.
#[inline(always)]
pub(super) fn softmax_row<T: Float>(
    row: &mut [T],
    lim: usize,
    scale: T,
    visible: Option<&dyn Fn(usize) -> bool>,
) -> bool {
    let (head, tail) = row.split_at_mut(lim);
    tail.iter_mut().for_each(|x| *x = T::zero());
    head.iter_mut().for_each(|x| *x *= scale);
    if let Some(vis) = visible {
        head.iter_mut().enumerate().filter(|(j, _)| !vis(*j)).for_each(|(_, x)| *x = T::neg_infinity());
    }
    let m = vmath::max(head);
    if m == T::neg_infinity() {
        head.iter_mut().for_each(|x| *x = T::zero());
        return false;
    }
    head.iter_mut().for_each(|x| *x = (*x - m).fexp());
    let rz = T::one() / vmath::sum(head);
    head.iter_mut().for_each(|x| *x *= rz);
    true
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    s: usize,
    t: usize,
    dk: usize,
    dv: usize,
}

fn dims(op: &'static str, q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask) -> Result<Dims> {
    same_device(op, &[q, k, v])?;
    same_dtype(op, &[q, k, v])?;
    let bad = |d: &str| shape_err(op, d, &[q.shape(), k.shape(), v.shape()]);
    if q.rank() != 4 || k.rank() != 4 || v.rank() != 4 {
        return Err(bad("q, k, v must be [B, H, len, dim]"));
    }
    let (b, h, s, dk) = (q.dim(0), q.dim(1), q.dim(2), q.dim(3));
    let (t, dv) = (k.dim(2), v.dim(3));
    if k.shape()[..2] != [b, h] || v.shape()[..3] != [b, h, t] || k.dim(3) != dk {
        return Err(bad("k must be [B, H, T, Dk] and v [B, H, T, Dv]"));
    }
    if mask.causal && s > t {
        return Err(bad("causal attention with more queries than keys"));
    }
    if t == 0 {
        return Err(bad("no keys"));
    }
    for m in [mask.key_padding.as_ref().map(Vec::len), mask.segment_ids.as_ref().map(Vec::len)].into_iter().flatten() {
        if m != b * t {
            return Err(bad(&format!("mask has {m} entries, expected B·T = {}", b * t)));
        }
    }
    Ok(Dims { b, h, s, t, dk, dv })
}

/// `o = softmax(scale · q·kᵀ + mask) · v`. Returns `(o, p)` with the probabilities
/// `p [B, H, S, T]` kept for the backward. A query row with no visible key yields zeros.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: &AttnMask) -> Result<(Tensor, Tensor)> {
    let Dims { b, h, s, t, dk, dv } = dims("attention", q, k, v, mask)?;
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = q.device()
        && b * h * s * dk * dv > 0
    {
        return be.attention(q, k, v, scale, mask);
    }
    attention_cpu(q, k, v, scale, mask, Layout::Bhsd, Dims { b, h, s, t, dk, dv })
}

/// Memory order of `q`, `k`, `v`, `o` and their gradients: `[B, H, len, D]` (each head's rows
/// contiguous) or `[B, len, H, D]` (the order the projections produce: a head's rows `H·D` apart).
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    Bhsd,
    Bshd,
}

impl Layout {
    /// Offset of head `h`'s first row within one batch element, and the distance between rows.
    fn head(self, h: usize, heads: usize, len: usize, d: usize) -> (usize, usize) {
        match self {
            Layout::Bhsd => (h * len * d, d),
            Layout::Bshd => (h * d, heads * d),
        }
    }
}

/// [`attention`] with `q [B, S, H, Dk]`, `k [B, T, H, Dk]`, `v [B, T, H, Dv]` → `o [B, S, H, Dv]`
/// (the layout the projections produce, so no permutes are needed around it); `p` is
/// `[B, H, S, T]` as in [`attention`]. The CPU reads and writes the heads in place, one task per
/// batch element (with fewer batch elements than threads it permutes around [`attention`]: same
/// values up to the summation order of the products); CUDA reads and writes them in place through
/// strided-batched GEMMs over the heads.
pub fn attention_bshd(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: &AttnMask) -> Result<(Tensor, Tensor)> {
    let bhsd = [0, 2, 1, 3];
    let ranks = [q, k, v].iter().all(|x| x.rank() == 4);
    // An empty problem (no heads, queries or dims) takes the in-place path on any device: zeros.
    let empty = ranks && q.numel() * v.numel() == 0;
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = q.device()
        && ranks
        && !empty
    {
        bshd_dims("attention_bshd", q, k, v, mask)?;
        return be.attention_bshd(q, k, v, scale, mask);
    }
    if !empty && (!q.device().is_cpu() || !ranks || q.dim(0) < rayon::current_num_threads()) {
        // Elsewhere, for batches too small to spread over the threads, and for inputs of the wrong
        // rank (the head-major op names them), via the head-major op.
        let (pq, pk, pv) = (permute(q, &bhsd)?, permute(k, &bhsd)?, permute(v, &bhsd)?);
        let (o, p) = attention(&pq, &pk, &pv, scale, mask)?;
        return Ok((permute(&o, &bhsd)?, p));
    }
    let d = bshd_dims("attention_bshd", q, k, v, mask)?;
    attention_cpu(q, k, v, scale, mask, Layout::Bshd, d)
}

/// The dimensions of `[B, len, H, D]` operands, checked as [`dims`] checks the head-major ones.
fn bshd_dims(op: &'static str, q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask) -> Result<Dims> {
    let bhsd = |x: &Tensor| x.reshape(&[x.dim(0), x.dim(2), x.dim(1), x.dim(3)]);
    dims(op, &bhsd(q)?, &bhsd(k)?, &bhsd(v)?, mask)
}

fn attention_cpu(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: &AttnMask,
    lay: Layout,
    Dims { b, h, s, t, dk, dv }: Dims,
) -> Result<(Tensor, Tensor)> {
    let o_shape = if lay == Layout::Bhsd { [b, h, s, dv] } else { [b, s, h, dv] };
    let cd = super::compute_dtype(q.dtype());
    if b * h * s * dk * dv == 0 {
        // Nothing to attend with (t = 0 was rejected): zero outputs and probabilities.
        return Ok((Tensor::zeros(&o_shape, q.dtype(), q.device())?, Tensor::zeros(&[b, h, s, t], cd, q.device())?));
    }
    let (hq, hk, hv) = (host(q)?, host(k)?, host(v)?);
    let extra = mask.key_padding.is_some() || mask.segment_ids.is_some();
    with_float!(q.dtype(), T, {
        let (qs, ks, vs) = (sl::<T>(&hq), sl::<T>(&hk), sl::<T>(&hv));
        let mut p = vec![T::zero(); b * h * s * t];
        let mut o = vec![T::zero(); b * h * s * dv];
        let none = gemm::Parallelism::None;
        // One head: scores, softmax and values, block by block of query rows.
        let head = |bi: usize, hi: usize, pb: &mut [T], ob: &mut [T], ldo: usize| {
            let (q0, ldq) = lay.head(hi, h, s, dk);
            let (k0, ldk) = lay.head(hi, h, t, dk);
            let (v0, ldv) = lay.head(hi, h, t, dv);
            let qb = &qs[bi * h * s * dk + q0..];
            let kb = &ks[bi * h * t * dk + k0..];
            let vb = &vs[bi * h * t * dv + v0..];
            for i0 in (0..s).step_by(ROW_BLOCK) {
                let i1 = (i0 + ROW_BLOCK).min(s);
                let end = mask.row(s, t, i1 - 1).1;
                gemm_ld(
                    i1 - i0,
                    end,
                    dk,
                    (&qb[i0 * ldq..], ldq, false),
                    (kb, ldk, true),
                    (&mut pb[i0 * t..], t),
                    false,
                    none,
                );
                for i in i0..i1 {
                    let (qp, lim) = mask.row(s, t, i);
                    let vis = |j: usize| mask.key_visible(bi, t, qp, j);
                    let vis: Option<&dyn Fn(usize) -> bool> = if extra { Some(&vis) } else { None };
                    softmax_row(&mut pb[i * t..(i + 1) * t], lim, T::c(scale), vis);
                }
                gemm_ld(
                    i1 - i0,
                    dv,
                    end,
                    (&pb[i0 * t..], t, false),
                    (vb, ldv, false),
                    (&mut ob[i0 * ldo..], ldo),
                    false,
                    none,
                );
            }
        };
        match lay {
            Layout::Bhsd => p
                .par_chunks_mut(s * t)
                .zip(o.par_chunks_mut(s * dv))
                .enumerate()
                .for_each(|(bh, (pb, ob))| simd(|| head(bh / h, bh % h, pb, ob, dv))),
            // A batch element's heads interleave in `o`: one task per batch element.
            Layout::Bshd => {
                p.par_chunks_mut(h * s * t).zip(o.par_chunks_mut(h * s * dv)).enumerate().for_each(|(bi, (pb, ob))| {
                    simd(|| {
                        for (hi, pbh) in pb.chunks_mut(s * t).enumerate() {
                            head(bi, hi, pbh, &mut ob[hi * dv..], h * dv)
                        }
                    })
                })
            }
        }
        Ok((out(o, &o_shape, q.dtype(), q.device())?, out(p, &[b, h, s, t], cd, q.device())?))
    })
}

/// Backward of [`attention`]: `(dq, dk, dv)` from the saved probabilities `p`:
/// `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dQ = scale·dS·K`, `dK = scale·dSᵀ·Q`.
/// Per block of query rows the products stop at the last non-zero probability (masked keys
/// contribute exactly nothing).
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: &Tensor,
    scale: f64,
    d_o: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let Dims { b, h, s, t, dk, dv } = dims("attention_backward", q, k, v, &AttnMask::default())?;
    if p.shape() != &[b, h, s, t] || d_o.shape() != &[b, h, s, dv] {
        return Err(shape_err(
            "attention_backward",
            "p must be [B,H,S,T] and dO [B,H,S,Dv]",
            &[p.shape(), d_o.shape()],
        ));
    }
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = q.device()
        && b * h * s * dk * dv > 0
    {
        return be.attention_backward(q, k, v, p, scale, d_o);
    }
    attention_backward_cpu(q, k, v, p, scale, d_o, Layout::Bhsd, Dims { b, h, s, t, dk, dv })
}

/// Backward of [`attention_bshd`]: `(dq, dk, dv)` in the `[B, len, H, D]` layout.
pub fn attention_bshd_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: &Tensor,
    scale: f64,
    d_o: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let bhsd = [0, 2, 1, 3];
    let ranks = [q, k, v, d_o].iter().all(|x| x.rank() == 4);
    let empty = ranks && q.numel() * v.numel() == 0;
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = q.device()
        && ranks
        && !empty
    {
        bshd_backward_dims(q, k, v, p, d_o)?;
        same_device("attention_bshd_backward", &[q, p, d_o])?;
        return be.attention_bshd_backward(q, k, v, p, scale, d_o);
    }
    if !empty && (!q.device().is_cpu() || !ranks || q.dim(0) < rayon::current_num_threads()) {
        let (pq, pk, pv, pd) = (permute(q, &bhsd)?, permute(k, &bhsd)?, permute(v, &bhsd)?, permute(d_o, &bhsd)?);
        let (dq, dk, dv) = attention_backward(&pq, &pk, &pv, p, scale, &pd)?;
        return Ok((permute(&dq, &bhsd)?, permute(&dk, &bhsd)?, permute(&dv, &bhsd)?));
    }
    let d = bshd_backward_dims(q, k, v, p, d_o)?;
    attention_backward_cpu(q, k, v, p, scale, d_o, Layout::Bshd, d)
}

/// [`bshd_dims`] for the backward, which also needs `p` as `[B, H, S, T]` and `dO` as `[B, S, H, Dv]`.
fn bshd_backward_dims(q: &Tensor, k: &Tensor, v: &Tensor, p: &Tensor, d_o: &Tensor) -> Result<Dims> {
    let d = bshd_dims("attention_bshd_backward", q, k, v, &AttnMask::default())?;
    if p.shape() != &[d.b, d.h, d.s, d.t] || d_o.shape() != &[d.b, d.s, d.h, d.dv] {
        return Err(shape_err(
            "attention_bshd_backward",
            "p must be [B,H,S,T] and dO [B,S,H,Dv]",
            &[p.shape(), d_o.shape()],
        ));
    }
    Ok(d)
}

#[allow(clippy::too_many_arguments)]
fn attention_backward_cpu(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: &Tensor,
    scale: f64,
    d_o: &Tensor,
    lay: Layout,
    Dims { b, h, s, t, dk, dv }: Dims,
) -> Result<(Tensor, Tensor, Tensor)> {
    if b * h * s * dk * dv == 0 {
        // No products: every gradient is zero.
        let z = |x: &Tensor| Tensor::zeros(x.shape(), x.dtype(), x.device());
        return Ok((z(q)?, z(k)?, z(v)?));
    }
    let (hq, hk, hv, hp, hd) =
        (host(q)?, host(k)?, host(v)?, host(&p.to_dtype(super::compute_dtype(q.dtype()))?)?, host(d_o)?);
    with_float!(q.dtype(), T, {
        let (qs, ks, vs, ps, ds) = (sl::<T>(&hq), sl::<T>(&hk), sl::<T>(&hv), sl::<T>(&hp), sl::<T>(&hd));
        let mut dq = vec![T::zero(); b * h * s * dk];
        let mut dkk = vec![T::zero(); b * h * t * dk];
        let mut dvv = vec![T::zero(); b * h * t * dv];
        let none = gemm::Parallelism::None;
        // One head, block by block of query rows; `dp` is a block's scratch. The dq / dk / dv
        // chunks hold this head alone (head-major) or the whole batch element, where the head's
        // rows start at its layout offset.
        let head = |bi: usize, hi: usize, dqb: &mut [T], dkb: &mut [T], dvb: &mut [T], dp: &mut [T]| {
            let (q0, ldq) = lay.head(hi, h, s, dk);
            let (k0, ldk) = lay.head(hi, h, t, dk);
            let (v0, ldv) = lay.head(hi, h, t, dv);
            let (o0, ldo) = lay.head(hi, h, s, dv);
            let qb = &qs[bi * h * s * dk + q0..];
            let kb = &ks[bi * h * t * dk + k0..];
            let vb = &vs[bi * h * t * dv + v0..];
            let db = &ds[bi * h * s * dv + o0..];
            let pb = &ps[(bi * h + hi) * s * t..(bi * h + hi + 1) * s * t];
            let (cq, ck, cv) = if lay == Layout::Bhsd { (0, 0, 0) } else { (q0, k0, v0) };
            for i0 in (0..s).step_by(ROW_BLOCK) {
                let (i1, rows) = ((i0 + ROW_BLOCK).min(s), (ROW_BLOCK).min(s - i0));
                let end = (i0..i1)
                    .map(|i| pb[i * t..(i + 1) * t].iter().rposition(|&x| x != T::zero()).map_or(0, |j| j + 1))
                    .max()
                    .unwrap_or(0);
                let (pblk, dblk) = (&pb[i0 * t..], &db[i0 * ldo..]);
                gemm_ld(end, dv, rows, (pblk, t, true), (dblk, ldo, false), (&mut dvb[cv..], ldv), true, none);
                gemm_ld(rows, end, dv, (dblk, ldo, false), (vb, ldv, true), (&mut dp[..], t), false, none);
                for r in 0..rows {
                    let (pr, dr) = (&pb[(i0 + r) * t..(i0 + r) * t + end], &mut dp[r * t..r * t + end]);
                    let dot = vmath::dot(pr, dr);
                    for (d, &pv) in dr.iter_mut().zip(pr) {
                        *d = T::c(scale) * pv * (*d - dot);
                    }
                }
                gemm_ld(
                    rows,
                    dk,
                    end,
                    (&dp[..], t, false),
                    (kb, ldk, false),
                    (&mut dqb[cq + i0 * ldq..], ldq),
                    false,
                    none,
                );
                gemm_ld(
                    end,
                    dk,
                    rows,
                    (&dp[..], t, true),
                    (&qb[i0 * ldq..], ldq, false),
                    (&mut dkb[ck..], ldk),
                    true,
                    none,
                );
            }
        };
        match lay {
            Layout::Bhsd => dq
                .par_chunks_mut(s * dk)
                .zip(dkk.par_chunks_mut(t * dk))
                .zip(dvv.par_chunks_mut(t * dv))
                .enumerate()
                .for_each(|(bh, ((dqb, dkb), dvb))| {
                    let mut dp = vec![T::zero(); ROW_BLOCK * t];
                    simd(|| head(bh / h, bh % h, dqb, dkb, dvb, &mut dp))
                }),
            Layout::Bshd => dq
                .par_chunks_mut(h * s * dk)
                .zip(dkk.par_chunks_mut(h * t * dk))
                .zip(dvv.par_chunks_mut(h * t * dv))
                .enumerate()
                .for_each(|(bi, ((dqb, dkb), dvb))| {
                    let mut dp = vec![T::zero(); ROW_BLOCK * t];
                    simd(|| {
                        for hi in 0..h {
                            head(bi, hi, dqb, dkb, dvb, &mut dp)
                        }
                    })
                }),
        }
        let dev = q.device();
        Ok((
            out(dq, q.shape(), q.dtype(), dev)?,
            out(dkk, k.shape(), k.dtype(), dev)?,
            out(dvv, v.shape(), v.dtype(), dev)?,
        ))
    })
}
