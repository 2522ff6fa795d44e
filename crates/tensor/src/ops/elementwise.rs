//! Elementwise arithmetic with NumPy broadcasting, and the reduction that undoes broadcasting in
//! the backward pass.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::strided::{broadcast_strides, for_each_row};
use super::vmath::simd;
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
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = &dev
        && shape.len() <= crate::cuda::MAX_RANK
    {
        return be.binary_strided(kind as u32, a, b, &shape);
    }
    let (ha, hb) = (host(a)?, host(b)?);
    with_float!(dt, T, {
        let (xa, xb) = (sl::<T>(&ha), sl::<T>(&hb));
        let v: Vec<T> = if a.shape() == b.shape() {
            par_fill(xa.len(), |i0, o| bin_run(kind, o, &xa[i0..], 1, &xb[i0..], 1))
        } else {
            // One output row per odometer step; rows are filled in parallel, each by a loop
            // specialised to its operands' innermost strides (1, or 0 when broadcast).
            let (sa, sb) = (broadcast_strides(a.shape(), &shape), broadcast_strides(b.shape(), &shape));
            let (la, lb) = (sa.last().copied().unwrap_or(0), sb.last().copied().unwrap_or(0));
            let mut rows = Vec::new();
            let mut inner = 1;
            for_each_row(&shape, [&sa, &sb], |[oa, ob], len| {
                rows.push((oa, ob));
                inner = len;
            });
            let mut v = Vec::with_capacity(rows.len() * inner);
            v.spare_capacity_mut()[..rows.len() * inner]
                .par_chunks_mut(inner.max(1) * (PAR_MIN / inner.max(1)).max(1))
                .zip(rows.par_chunks((PAR_MIN / inner.max(1)).max(1)))
                .for_each(|(o, rs)| {
                    simd(|| {
                        for (o, &(oa, ob)) in o.chunks_mut(inner).zip(rs) {
                            bin_run(kind, o, &xa[oa..], la, &xb[ob..], lb);
                        }
                    })
                });
            // SAFETY: the chunks cover all `rows · inner` slots and `bin_run` writes every slot.
            unsafe { v.set_len(rows.len() * inner) };
            v
        };
        out(v, &shape, dt, &dev)
    })
}

/// `o[i] = a[i·la] ∘ b[i·lb]` for every slot of `o` (strides 0 or 1), one loop per case so each
/// vectorises.
#[inline(always)]
fn bin_run<T: Float>(kind: Bin, o: &mut [MaybeUninit<T>], a: &[T], la: usize, b: &[T], lb: usize) {
    #[inline(always)]
    fn run<T: Float>(o: &mut [MaybeUninit<T>], a: &[T], la: usize, b: &[T], lb: usize, f: impl Fn(T, T) -> T) {
        let n = o.len();
        match (la, lb) {
            (1, 1) => o.iter_mut().zip(&a[..n]).zip(&b[..n]).for_each(|((o, &x), &y)| {
                o.write(f(x, y));
            }),
            (1, 0) => {
                let y = b[0];
                o.iter_mut().zip(&a[..n]).for_each(|(o, &x)| {
                    o.write(f(x, y));
                })
            }
            (0, 1) => {
                let x = a[0];
                o.iter_mut().zip(&b[..n]).for_each(|(o, &y)| {
                    o.write(f(x, y));
                })
            }
            _ => o.iter_mut().enumerate().for_each(|(i, o)| {
                o.write(f(a[i * la], b[i * lb]));
            }),
        }
    }
    match kind {
        Bin::Add => run(o, a, la, b, lb, |x, y| x + y),
        Bin::Sub => run(o, a, la, b, lb, |x, y| x - y),
        Bin::Mul => run(o, a, la, b, lb, |x, y| x * y),
        Bin::Div => run(o, a, la, b, lb, |x, y| x / y),
    }
}

/// A vector of `n` elements filled in parallel chunks: `fill(start, slots)` must write every slot
/// of `slots`, which are elements `start..start + slots.len()`. The loops run under
/// [`simd`] (AVX2 + FMA where the CPU has them) and no zero-fill precedes them.
pub(crate) fn par_fill<T: Float>(n: usize, fill: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n].par_chunks_mut(PAR_MIN).enumerate().for_each(|(i, o)| simd(|| fill(i * PAR_MIN, o)));
    // SAFETY: the chunks cover all n slots and `fill` writes every slot it is given.
    unsafe { v.set_len(n) };
    v
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
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = &dev
        && g.rank() <= crate::cuda::MAX_RANK
    {
        return be.reduce_to(g, target);
    }
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
#[inline(always)]
pub(crate) fn map_par<T: Float>(x: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    par_fill(x.len(), |i0, o| {
        o.iter_mut().zip(&x[i0..]).for_each(|(o, &a)| {
            o.write(f(a));
        })
    })
}

/// Apply `f` to every pair of elements, in parallel for large buffers.
#[inline(always)]
pub(crate) fn zip_par<T: Float>(x: &[T], y: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    assert_eq!(x.len(), y.len(), "zip_par: operand lengths differ");
    par_fill(x.len(), |i0, o| {
        o.iter_mut().zip(&x[i0..]).zip(&y[i0..]).for_each(|((o, &a), &b)| {
            o.write(f(a, b));
        })
    })
}
