//! Scaled dot-product attention with causal, key-padding and packed-sequence (segment) masks,
//! softmax in the compute dtype (f32 or f64), and its backward pass.
//!
//! Shapes: `q [B, H, S, Dk]`, `k [B, H, T, Dk]`, `v [B, H, T, Dv]` → `o [B, H, S, Dv]`.
//! With `S < T` (decoding) query `i` sits at key position `i + T − S`. Without a causal mask S may
//! exceed T (e.g. absorbed MLA decoding, where the heads of one token are the query rows).

use rayon::prelude::*;

use super::matmul::gemm_ld;
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
fn softmax_row<T: Float>(row: &mut [T], lim: usize, scale: T, visible: Option<&dyn Fn(usize) -> bool>) -> bool {
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
    if let crate::Device::Cuda(be) = q.device() {
        return be.attention(q, k, v, scale, mask);
    }
    let (hq, hk, hv) = (host(q)?, host(k)?, host(v)?);
    let extra = mask.key_padding.is_some() || mask.segment_ids.is_some();
    with_float!(q.dtype(), T, {
        let (qs, ks, vs) = (sl::<T>(&hq), sl::<T>(&hk), sl::<T>(&hv));
        let mut p = vec![T::zero(); b * h * s * t];
        let mut o = vec![T::zero(); b * h * s * dv];
        let none = gemm::Parallelism::None;
        p.par_chunks_mut(s * t).zip(o.par_chunks_mut(s * dv)).enumerate().for_each(|(bh, (pb, ob))| {
            let bi = bh / h;
            let qb = &qs[bh * s * dk..(bh + 1) * s * dk];
            let kb = &ks[bh * t * dk..(bh + 1) * t * dk];
            let vb = &vs[bh * t * dv..(bh + 1) * t * dv];
            simd(|| {
                for i0 in (0..s).step_by(ROW_BLOCK) {
                    let i1 = (i0 + ROW_BLOCK).min(s);
                    let end = mask.row(s, t, i1 - 1).1;
                    gemm_ld(
                        i1 - i0,
                        end,
                        dk,
                        (&qb[i0 * dk..], dk, false),
                        (kb, dk, true),
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
                        (vb, dv, false),
                        (&mut ob[i0 * dv..], dv),
                        false,
                        none,
                    );
                }
            });
        });
        let cd = super::compute_dtype(q.dtype());
        Ok((out(o, &[b, h, s, dv], q.dtype(), q.device())?, out(p, &[b, h, s, t], cd, q.device())?))
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
    if let crate::Device::Cuda(be) = q.device() {
        return be.attention_backward(q, k, v, p, scale, d_o);
    }
    let (hq, hk, hv, hp, hd) =
        (host(q)?, host(k)?, host(v)?, host(&p.to_dtype(super::compute_dtype(q.dtype()))?)?, host(d_o)?);
    with_float!(q.dtype(), T, {
        let (qs, ks, vs, ps, ds) = (sl::<T>(&hq), sl::<T>(&hk), sl::<T>(&hv), sl::<T>(&hp), sl::<T>(&hd));
        let mut dq = vec![T::zero(); b * h * s * dk];
        let mut dkk = vec![T::zero(); b * h * t * dk];
        let mut dvv = vec![T::zero(); b * h * t * dv];
        let none = gemm::Parallelism::None;
        dq.par_chunks_mut(s * dk).zip(dkk.par_chunks_mut(t * dk)).zip(dvv.par_chunks_mut(t * dv)).enumerate().for_each(
            |(bh, ((dqb, dkb), dvb))| {
                let qb = &qs[bh * s * dk..(bh + 1) * s * dk];
                let kb = &ks[bh * t * dk..(bh + 1) * t * dk];
                let vb = &vs[bh * t * dv..(bh + 1) * t * dv];
                let pb = &ps[bh * s * t..(bh + 1) * s * t];
                let db = &ds[bh * s * dv..(bh + 1) * s * dv];
                let mut dp = vec![T::zero(); ROW_BLOCK * t];
                simd(|| {
                    for i0 in (0..s).step_by(ROW_BLOCK) {
                        let (i1, rows) = ((i0 + ROW_BLOCK).min(s), (ROW_BLOCK).min(s - i0));
                        let end = (i0..i1)
                            .map(|i| pb[i * t..(i + 1) * t].iter().rposition(|&x| x != T::zero()).map_or(0, |j| j + 1))
                            .max()
                            .unwrap_or(0);
                        let (pblk, dblk) = (&pb[i0 * t..], &db[i0 * dv..]);
                        gemm_ld(end, dv, rows, (pblk, t, true), (dblk, dv, false), (&mut dvb[..], dv), true, none);
                        gemm_ld(rows, end, dv, (dblk, dv, false), (vb, dv, true), (&mut dp[..], t), false, none);
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
                            (kb, dk, false),
                            (&mut dqb[i0 * dk..], dk),
                            false,
                            none,
                        );
                        gemm_ld(
                            end,
                            dk,
                            rows,
                            (&dp[..], t, true),
                            (&qb[i0 * dk..], dk, false),
                            (&mut dkb[..], dk),
                            true,
                            none,
                        );
                    }
                });
            },
        );
        let dev = q.device();
        Ok((
            out(dq, q.shape(), q.dtype(), dev)?,
            out(dkk, k.shape(), k.dtype(), dev)?,
            out(dvv, v.shape(), v.dtype(), dev)?,
        ))
    })
}
