//! Softmax and log-softmax over the last dimension.

use rayon::prelude::*;

use super::vmath::simd;
use super::{host, out, sl, with_float};
use crate::ops::activation::check_same;
use crate::{Float, Result, Tensor};

fn rows<T: Float>(x: &[T], d: usize, log: bool) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(o, r)| {
        simd(|| {
            let m = r.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
            o.iter_mut().zip(r).for_each(|(o, &v)| *o = (v - m).fexp());
            let s: T = o.iter().copied().sum();
            if log {
                let lse = m + s.ln();
                o.iter_mut().zip(r).for_each(|(o, &v)| *o = v - lse);
            } else {
                let rs = T::one() / s;
                o.iter_mut().for_each(|o| *o *= rs);
            }
        })
    });
    y
}

/// `softmax(x)` along the last dimension (max-subtracted).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = x.device() {
        return be.softmax(x, false);
    }
    let hx = host(x)?;
    with_float!(x.dtype(), T, { out(rows(sl::<T>(&hx), x.dim(-1), false), x.shape(), x.dtype(), x.device()) })
}

/// `log_softmax(x)` along the last dimension.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = x.device() {
        return be.softmax(x, true);
    }
    let hx = host(x)?;
    with_float!(x.dtype(), T, { out(rows(sl::<T>(&hx), x.dim(-1), true), x.shape(), x.dtype(), x.device()) })
}

fn back(y: &Tensor, dy: &Tensor, log: bool) -> Result<Tensor> {
    let (hy, hd) = (host(y)?, host(dy)?);
    let d = y.dim(-1);
    with_float!(y.dtype(), T, {
        let (ys, ds) = (sl::<T>(&hy), sl::<T>(&hd));
        let mut dx = vec![T::zero(); ys.len()];
        dx.par_chunks_mut(d).zip(ys.par_chunks(d).zip(ds.par_chunks(d))).for_each(|(o, (yr, dr))| {
            if log {
                let s: T = dr.iter().copied().sum();
                for ((o, &yv), &g) in o.iter_mut().zip(yr).zip(dr) {
                    *o = g - yv.exp() * s;
                }
            } else {
                let s: T = yr.iter().zip(dr).map(|(&a, &b)| a * b).sum();
                for ((o, &yv), &g) in o.iter_mut().zip(yr).zip(dr) {
                    *o = yv * (g - s);
                }
            }
        });
        out(dx, y.shape(), y.dtype(), y.device())
    })
}

/// Backward of [`softmax`] from its output: `dx = y ⊙ (dy − Σ dy⊙y)`.
pub fn softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    check_same("softmax_backward", y, dy)?;
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = y.device() {
        return be.softmax_backward(y, dy, false);
    }
    back(y, dy, false)
}

/// Backward of [`log_softmax`] from its output: `dx = dy − exp(y) · Σ dy`.
pub fn log_softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    check_same("log_softmax_backward", y, dy)?;
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = y.device() {
        return be.softmax_backward(y, dy, true);
    }
    back(y, dy, true)
}
