//! Reductions (sum, mean) over one dimension or all elements, with their backward passes.

use ndarray::{ArrayViewD, Axis, IxDyn};

use super::{host, out, sl, with_float};
use crate::error::shape_err;
use crate::{Float, Result, Tensor};

/// Sum over dimension `dim` (removed from the shape).
pub fn sum_dim(x: &Tensor, dim: usize) -> Result<Tensor> {
    if dim >= x.rank() {
        return Err(shape_err("sum_dim", format!("dim {dim} out of range"), &[x.shape()]));
    }
    let mut shape = x.shape().clone();
    shape.remove(dim);
    #[cfg(feature = "cuda")]
    if !x.device().is_cpu() {
        let mut keep = x.shape().clone();
        keep[dim] = 1;
        return super::elementwise::reduce_to(x, &keep)?.reshape(&shape);
    }
    let hx = host(x)?;
    with_float!(x.dtype(), T, {
        let a = ArrayViewD::from_shape(IxDyn(x.shape()), sl::<T>(&hx)).expect("contiguous");
        let s = a.sum_axis(Axis(dim));
        let v: Vec<T> = s.iter().copied().collect();
        out(v, &shape, x.dtype(), x.device())
    })
}

/// Backward of [`sum_dim`]: `dy` repeated along the summed dimension of size `size`.
pub fn sum_dim_backward(dy: &Tensor, dim: usize, size: usize) -> Result<Tensor> {
    if dim > dy.rank() {
        return Err(shape_err("sum_dim_backward", format!("dim {dim} out of range"), &[dy.shape()]));
    }
    let mut shape = dy.shape().clone();
    shape.insert(dim, size);
    #[cfg(feature = "cuda")]
    if !dy.device().is_cpu() {
        let mut kshape = dy.shape().clone();
        kshape.insert(dim, 1);
        return super::shape::broadcast_to(&dy.reshape(&kshape)?, &shape);
    }
    let hd = host(dy)?;
    with_float!(dy.dtype(), T, {
        let mut kshape = dy.shape().clone();
        kshape.insert(dim, 1);
        let a = ArrayViewD::from_shape(IxDyn(&kshape), sl::<T>(&hd)).expect("contiguous");
        let b = a.broadcast(IxDyn(&shape)).expect("size-1 axis broadcasts");
        let v: Vec<T> = b.iter().copied().collect();
        out(v, &shape, dy.dtype(), dy.device())
    })
}

/// Mean over dimension `dim`.
pub fn mean_dim(x: &Tensor, dim: usize) -> Result<Tensor> {
    let n = x.shape().get(dim).copied().unwrap_or(1).max(1);
    super::elementwise::scale(&sum_dim(x, dim)?, 1.0 / n as f64)
}

/// Backward of [`mean_dim`].
pub fn mean_dim_backward(dy: &Tensor, dim: usize, size: usize) -> Result<Tensor> {
    super::elementwise::scale(&sum_dim_backward(dy, dim, size)?, 1.0 / size.max(1) as f64)
}

/// Sum of all elements, as a scalar tensor (accumulated in f64).
pub fn sum_all(x: &Tensor) -> Result<Tensor> {
    let hx = host(x)?;
    with_float!(x.dtype(), T, {
        let s: f64 = sl::<T>(&hx).iter().map(|&v| crate::Element::to_f64(v)).sum();
        out(vec![T::c(s)], &[], x.dtype(), x.device())
    })
}

/// Backward of [`sum_all`]: the scalar gradient broadcast to `shape`.
pub fn sum_all_backward(dy: f64, shape: &[usize], like: &Tensor) -> Result<Tensor> {
    Tensor::full(shape, dy, like.dtype(), like.device())
}

/// Mean of all elements.
pub fn mean_all(x: &Tensor) -> Result<Tensor> {
    super::elementwise::scale(&sum_all(x)?, 1.0 / x.numel().max(1) as f64)
}

/// Maximum over the last dimension (values only; no backward — used for statistics).
pub fn max_last(x: &Tensor) -> Result<Tensor> {
    let d = x.dim(-1);
    let hx = host(x)?;
    with_float!(x.dtype(), T, {
        let v: Vec<T> =
            sl::<T>(&hx).chunks(d.max(1)).map(|r| r.iter().fold(T::neg_infinity(), |a, &b| a.max(b))).collect();
        out(v, &x.shape()[..x.rank() - 1], x.dtype(), x.device())
    })
}
