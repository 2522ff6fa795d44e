//! Elementwise arithmetic with NumPy broadcasting, and the reduction that undoes broadcasting in
//! the backward pass.

use rayon::prelude::*;

use super::strided::{broadcast_strides, for_each_row};
use super::{PAR_MIN, host, out, same_device, same_dtype, sl, with_float};
use crate::error::shape_err;
use crate::{Float, Result, Shape, Tensor};

/// The broadcast shape of `a` and `b` (dimensions aligned from the right; equal or 1).
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Shape> {
    let r = a.len().max(b.len());
    let mut s = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
        let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
        s[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(shape_err(op, "shapes do not broadcast", &[&a.to_vec(), &b.to_vec()]));
        };
    }
    Ok(s)
}

#[derive(Clone, Copy)]
enum Bin {
    Add,
    Sub,
    Mul,
    Div,
}

fn binary(op: &'static str, kind: Bin, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dev = same_device(op, &[a, b])?;
    let dt = same_dtype(op, &[a, b])?;
    let shape = broadcast_shape(op, a.shape(), b.shape())?;
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = &dev
        && !matches!(kind, Bin::Div)
        && (a.shape() == b.shape() || (b.rank() == 1 && a.shape() == &shape))
    {
        return be.binary(kind as u32, a, b);
    }
    let (ha, hb) = (host(a)?, host(b)?);
    with_float!(dt, T, {
        let f = |x: T, y: T| match kind {
            Bin::Add => x + y,
            Bin::Sub => x - y,
            Bin::Mul => x * y,
            Bin::Div => x / y,
        };
        let (xa, xb) = (sl::<T>(&ha), sl::<T>(&hb));
        let v: Vec<T> = if a.shape() == b.shape() {
            let mut v = vec![T::zero(); xa.len()];
            v.par_iter_mut()
                .with_min_len(PAR_MIN)
                .zip(xa.par_iter().zip(xb.par_iter()))
                .for_each(|(o, (&x, &y))| *o = f(x, y));
            v
        } else {
            let (sa, sb) = (broadcast_strides(a.shape(), &shape), broadcast_strides(b.shape(), &shape));
            let (la, lb) = (sa.last().copied().unwrap_or(0), sb.last().copied().unwrap_or(0));
            let mut v = Vec::with_capacity(shape.iter().product());
            for_each_row(&shape, [&sa, &sb], |[oa, ob], len| {
                v.extend((0..len).map(|i| f(xa[oa + i * la], xb[ob + i * lb])));
            });
            v
        };
        out(v, &shape, dt, &dev)
    })
}

/// `a + b` (broadcasting).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add", Bin::Add, a, b)
}

/// `a - b` (broadcasting).
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("sub", Bin::Sub, a, b)
}

/// `a ⊙ b` (broadcasting).
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("mul", Bin::Mul, a, b)
}

/// `a / b` (broadcasting).
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("div", Bin::Div, a, b)
}

/// Backward of [`div`]: `(dy / b, −Σ dy·a / b²)`, each reduced to its operand's shape.
pub fn div_backward(a: &Tensor, b: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let da = div(dy, b)?;
    let db = scale(&div(&mul(&da, a)?, b)?, -1.0)?;
    Ok((reduce_to(&da, a.shape())?, reduce_to(&db, b.shape())?))
}

/// Backward of [`add`]: `(dA, dB)`, each summed over its broadcast dimensions.
pub fn add_backward(a_shape: &[usize], b_shape: &[usize], dy: &Tensor) -> Result<(Tensor, Tensor)> {
    Ok((reduce_to(dy, a_shape)?, reduce_to(dy, b_shape)?))
}

/// Backward of [`sub`].
pub fn sub_backward(a_shape: &[usize], b_shape: &[usize], dy: &Tensor) -> Result<(Tensor, Tensor)> {
    Ok((reduce_to(dy, a_shape)?, scale(&reduce_to(dy, b_shape)?, -1.0)?))
}

/// Backward of [`mul`]: `(dy ⊙ b, dy ⊙ a)`, each reduced to its operand's shape.
pub fn mul_backward(a: &Tensor, b: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    Ok((reduce_to(&mul(dy, b)?, a.shape())?, reduce_to(&mul(dy, a)?, b.shape())?))
}

/// Sum `g` over the dimensions that broadcasting expanded, giving shape `target`.
pub fn reduce_to(g: &Tensor, target: &[usize]) -> Result<Tensor> {
    if g.shape().as_slice() == target {
        return Ok(g.clone());
    }
    let bs = broadcast_shape("reduce_to", target, g.shape())?;
    if &bs != g.shape() {
        return Err(shape_err(
            "reduce_to",
            "gradient is not a broadcast of the target",
            &[g.shape(), &target.to_vec()],
        ));
    }
    let dev = g.device().clone();
    let hg = host(g)?;
    // Each gradient element adds into the target element it was broadcast from.
    let st = broadcast_strides(target, g.shape());
    let last = st.last().copied().unwrap_or(0);
    with_float!(g.dtype(), T, {
        let src = sl::<T>(&hg);
        let mut acc = vec![T::zero(); target.iter().product()];
        let mut i = 0;
        for_each_row(g.shape(), [&st], |[o], len| {
            for (j, &x) in src[i..i + len].iter().enumerate() {
                acc[o + j * last] += x;
            }
            i += len;
        });
        out(acc, target, g.dtype(), &dev)
    })
}

/// `s · x`.
pub fn scale(x: &Tensor, s: f64) -> Result<Tensor> {
    affine(x, s, 0.0)
}

/// Backward of [`scale`]: `s · dy`.
pub fn scale_backward(dy: &Tensor, s: f64) -> Result<Tensor> {
    scale(dy, s)
}

/// `s · x + b` elementwise (scalars `s`, `b`).
pub fn affine(x: &Tensor, s: f64, b: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = x.device() {
        return be.affine(x, s, b);
    }
    let hx = host(x)?;
    with_float!(x.dtype(), T, {
        let (s, b) = (T::c(s), T::c(b));
        let v: Vec<T> = map_par(sl::<T>(&hx), |v| s * v + b);
        out(v, x.shape(), x.dtype(), x.device())
    })
}

/// Apply `f` to every element, in parallel for large buffers.
pub(crate) fn map_par<T: Float>(x: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    let mut v = vec![T::zero(); x.len()];
    v.par_iter_mut().with_min_len(PAR_MIN).zip(x.par_iter()).for_each(|(o, &a)| *o = f(a));
    v
}

/// Apply `f` to every pair of elements, in parallel for large buffers.
pub(crate) fn zip_par<T: Float>(x: &[T], y: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    let mut v = vec![T::zero(); x.len()];
    v.par_iter_mut().with_min_len(PAR_MIN).zip(x.par_iter().zip(y.par_iter())).for_each(|(o, (&a, &b))| *o = f(a, b));
    v
}
