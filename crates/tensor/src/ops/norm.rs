//! RMSNorm (DeepSeek-V3 `input_layernorm`, `q_a_layernorm`, `kv_a_layernorm`, …):
//! `y = x / sqrt(mean(x²) + ε) · w`, statistics in f32 or wider.

use rayon::prelude::*;

use super::{host, out, same_device, same_dtype, sl, with_float};
use crate::error::shape_err;
use crate::{Float, Result, Tensor};

fn check(op: &'static str, x: &Tensor, w: &Tensor) -> Result<usize> {
    same_device(op, &[x, w])?;
    same_dtype(op, &[x, w])?;
    let d = *x.shape().last().unwrap_or(&0);
    if w.rank() != 1 || w.dim(0) != d || d == 0 {
        return Err(shape_err(op, "weight must be [last dim of x]", &[x.shape(), w.shape()]));
    }
    Ok(d)
}

/// RMSNorm over the last dimension. Returns `(y, rstd)`; `rstd` (one per row, shape = x's
/// shape without the last dim, in the compute dtype) is what the backward needs.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let d = check("rms_norm", x, w)?;
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = x.device() {
        return be.rms_norm(x, w, eps);
    }
    let (hx, hw) = (host(x)?, host(w)?);
    let rows_shape = &x.shape()[..x.rank() - 1];
    with_float!(x.dtype(), T, {
        let (xs, ws) = (sl::<T>(&hx), sl::<T>(&hw));
        let rows = xs.len() / d;
        let mut y = vec![T::zero(); xs.len()];
        let mut rstd = vec![T::zero(); rows];
        y.par_chunks_mut(d).zip(rstd.par_iter_mut()).zip(xs.par_chunks(d)).for_each(|((yr, r), xr)| {
            let ms = xr.iter().map(|&v| v * v).sum::<T>() / T::c(d as f64);
            *r = T::one() / (ms + T::c(eps)).sqrt();
            for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(ws) {
                *o = v * *r * g;
            }
        });
        let y = out(y, x.shape(), x.dtype(), x.device())?;
        let rstd = out(rstd, rows_shape, super::compute_dtype(x.dtype()), x.device())?;
        Ok((y, rstd))
    })
}

/// Backward of [`rms_norm`]: `(dx, dw)` with x̂ = x·rstd,
/// `dx = rstd · (dy⊙w − x̂ · mean(dy⊙w⊙x̂))`, `dw = Σ_rows dy⊙x̂`.
pub fn rms_norm_backward(x: &Tensor, w: &Tensor, rstd: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let d = check("rms_norm_backward", x, w)?;
    if dy.shape() != x.shape() || rstd.numel() * d != x.numel() {
        return Err(shape_err(
            "rms_norm_backward",
            "dy must match x and rstd its rows",
            &[x.shape(), rstd.shape(), dy.shape()],
        ));
    }
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = x.device() {
        return be.rms_norm_backward(x, w, rstd, dy);
    }
    let (hx, hw, hr, hd) = (host(x)?, host(w)?, host(&rstd.to_dtype(super::compute_dtype(x.dtype()))?)?, host(dy)?);
    with_float!(x.dtype(), T, {
        let (xs, ws, rs, ds) = (sl::<T>(&hx), sl::<T>(&hw), sl::<T>(&hr), sl::<T>(&hd));
        let mut dx = vec![T::zero(); xs.len()];
        dx.par_chunks_mut(d).zip(xs.par_chunks(d)).zip(ds.par_chunks(d)).zip(rs.par_iter()).for_each(
            |(((o, xr), dr), &r)| {
                let mean = xr.iter().zip(dr).zip(ws).map(|((&a, &g), &wv)| g * wv * a * r).sum::<T>() / T::c(d as f64);
                for (((o, &a), &g), &wv) in o.iter_mut().zip(xr).zip(dr).zip(ws) {
                    *o = r * (g * wv - a * r * mean);
                }
            },
        );
        // dw: a column sum over rows, split across threads by row blocks.
        let rows = xs.len() / d;
        let chunk = rows.div_ceil(rayon::current_num_threads().max(1)).max(1);
        let dw = (0..rows)
            .into_par_iter()
            .step_by(chunk)
            .map(|r0| {
                let mut acc = vec![T::zero(); d];
                for r in r0..(r0 + chunk).min(rows) {
                    let (xr, dr) = (&xs[r * d..(r + 1) * d], &ds[r * d..(r + 1) * d]);
                    for ((a, &xv), &g) in acc.iter_mut().zip(xr).zip(dr) {
                        *a += g * xv * rs[r];
                    }
                }
                acc
            })
            .reduce(
                || vec![T::zero(); d],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(p, &q)| *p += q);
                    a
                },
            );
        Ok((out(dx, x.shape(), x.dtype(), x.device())?, out(dw, w.shape(), w.dtype(), w.device())?))
    })
}
