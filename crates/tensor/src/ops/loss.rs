//! Cross-entropy over target tokens with an ignore index (the LM loss).

use rayon::prelude::*;

use super::vmath::simd;
use super::{host, out, sl, with_float};
use crate::error::shape_err;
use crate::{Float, Result, Tensor, TensorError};

/// The conventional ignore index (PyTorch / transformers `-100`).
pub const IGNORE_INDEX: i64 = -100;

fn check(op: &'static str, logits: &Tensor, targets: &[i64], ignore_index: i64) -> Result<(usize, usize)> {
    let v = logits.dim(-1);
    let n = logits.numel() / v.max(1);
    if targets.len() != n {
        return Err(shape_err(op, format!("{} targets for {n} rows", targets.len()), &[logits.shape()]));
    }
    if let Some(&t) = targets.iter().find(|&&t| t != ignore_index && (t < 0 || t as usize >= v)) {
        return Err(TensorError::Index { op, index: t.max(0) as usize, size: v });
    }
    Ok((n, v))
}

/// Mean cross-entropy `−log softmax(logits)[target]` over rows whose target is not
/// `ignore_index`. Returns `(loss, counted rows)`; with no counted rows the loss is 0 (not NaN).
pub fn cross_entropy(logits: &Tensor, targets: &[i64], ignore_index: i64) -> Result<(Tensor, usize)> {
    let (_, v) = check("cross_entropy", logits, targets, ignore_index)?;
    let count = targets.iter().filter(|&&t| t != ignore_index).count();
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = logits.device() {
        let total = be.cross_entropy_sum(logits, targets, ignore_index)?;
        let loss = if count == 0 { 0.0 } else { total / count as f64 };
        let cd = super::compute_dtype(logits.dtype());
        return Ok((Tensor::from_vec(vec![loss as f32], &[])?.to_dtype(cd)?.to_device(logits.device())?, count));
    }
    let hl = host(logits)?;
    with_float!(logits.dtype(), T, {
        let ls = sl::<T>(&hl);
        let total: f64 = ls
            .par_chunks(v)
            .zip(targets.par_iter())
            .filter(|(_, t)| **t != ignore_index)
            .map(|(r, &t)| {
                simd(|| {
                    let m = r.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
                    let lse = m + r.iter().map(|&x| (x - m).fexp()).sum::<T>().ln();
                    crate::Element::to_f64(lse - r[t as usize])
                })
            })
            .sum();
        let loss = if count == 0 { 0.0 } else { total / count as f64 };
        Ok((out(vec![T::c(loss)], &[], super::compute_dtype(logits.dtype()), logits.device())?, count))
    })
}

/// Backward of [`cross_entropy`]: `dlogits = dloss · (softmax − onehot) / count` on counted rows,
/// zero on ignored rows.
pub fn cross_entropy_backward(logits: &Tensor, targets: &[i64], ignore_index: i64, dloss: f64) -> Result<Tensor> {
    let (_, v) = check("cross_entropy_backward", logits, targets, ignore_index)?;
    let count = targets.iter().filter(|&&t| t != ignore_index).count().max(1);
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = logits.device() {
        return be.cross_entropy_backward(logits, targets, ignore_index, dloss / count as f64);
    }
    let hl = host(logits)?;
    with_float!(logits.dtype(), T, {
        let ls = sl::<T>(&hl);
        let g = T::c(dloss / count as f64);
        let mut d = vec![T::zero(); ls.len()];
        d.par_chunks_mut(v).zip(ls.par_chunks(v)).zip(targets.par_iter()).for_each(|((o, r), &t)| {
            if t == ignore_index {
                return;
            }
            simd(|| {
                let m = r.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
                for (o, &x) in o.iter_mut().zip(r) {
                    *o = (x - m).fexp();
                }
                let gs = g / o.iter().copied().sum::<T>();
                o.iter_mut().for_each(|o| *o *= gs);
                o[t as usize] -= g;
            })
        });
        out(d, logits.shape(), logits.dtype(), logits.device())
    })
}
