//! Copying shape ops: permute (transpose), narrow (slice), concatenate — with backward passes.

use super::strided::{broadcast_strides, contiguous_strides, gather};
use super::{host, out, same_device, same_dtype, sl, with_float};
use crate::error::shape_err;
use crate::{Result, Tensor};

/// Reorder dimensions: output dim `i` is input dim `perm[i]` (materialised, row-major).
pub fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let mut seen = vec![false; x.rank()];
    if perm.len() != x.rank() || perm.iter().any(|&p| p >= x.rank() || std::mem::replace(&mut seen[p], true)) {
        return Err(shape_err("permute", format!("{perm:?} is not a permutation of the dims"), &[x.shape()]));
    }
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let cs = contiguous_strides(x.shape());
    let strides: Vec<usize> = perm.iter().map(|&p| cs[p]).collect();
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = x.device()
        && x.rank() <= crate::cuda::MAX_RANK
    {
        return be.gather_strided(x, &shape, &strides);
    }
    let hx = host(x)?;
    with_float!(x.dtype(), T, {
        let v: Vec<T> = gather(sl::<T>(&hx), &shape, &strides);
        out(v, &shape, x.dtype(), x.device())
    })
}

/// Backward of [`permute`]: the inverse permutation.
pub fn permute_backward(dy: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        if p < inv.len() {
            inv[p] = i;
        }
    }
    permute(dy, &inv)
}

/// Repeat `x` along broadcast dimensions to `shape` (NumPy rules; e.g. the one shared RoPE
/// key `[B, S, 1, D]` to every head `[B, S, H, D]`).
pub fn broadcast_to(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let bs = super::elementwise::broadcast_shape("broadcast_to", shape, x.shape())?;
    if bs != shape {
        return Err(shape_err("broadcast_to", format!("cannot broadcast to {shape:?}"), &[x.shape()]));
    }
    let strides = broadcast_strides(x.shape(), shape);
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = x.device()
        && shape.len() <= crate::cuda::MAX_RANK
    {
        return be.gather_strided(x, shape, &strides);
    }
    let hx = host(x)?;
    with_float!(x.dtype(), T, {
        let v: Vec<T> = gather(sl::<T>(&hx), shape, &strides);
        out(v, shape, x.dtype(), x.device())
    })
}

/// Backward of [`broadcast_to`]: sum over the repeated dimensions.
pub fn broadcast_to_backward(dy: &Tensor, x_shape: &[usize]) -> Result<Tensor> {
    super::elementwise::reduce_to(dy, x_shape)
}

/// Swap the last two dimensions.
pub fn transpose_last2(x: &Tensor) -> Result<Tensor> {
    let r = x.rank();
    if r < 2 {
        return Err(shape_err("transpose_last2", "rank < 2", &[x.shape()]));
    }
    let mut p: Vec<usize> = (0..r).collect();
    p.swap(r - 2, r - 1);
    permute(x, &p)
}

/// Elements `start..start+len` of dimension `dim`.
pub fn narrow(x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
    if dim >= x.rank() || start + len > x.shape()[dim] {
        return Err(shape_err("narrow", format!("dim {dim} range {start}..{}", start + len), &[x.shape()]));
    }
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = x.device()
        && x.rank() <= crate::cuda::MAX_RANK
    {
        return be.narrow(x, dim, start, len);
    }
    let hx = host(x)?;
    let mut shape = x.shape().clone();
    shape[dim] = len;
    let outer: usize = x.shape()[..dim].iter().product();
    let inner: usize = x.shape()[dim + 1..].iter().product();
    let full = x.shape()[dim];
    with_float!(x.dtype(), T, {
        let src = sl::<T>(&hx);
        let mut v: Vec<T> = Vec::with_capacity(outer * len * inner);
        for o in 0..outer {
            let base = (o * full + start) * inner;
            v.extend_from_slice(&src[base..base + len * inner]);
        }
        out(v, &shape, x.dtype(), x.device())
    })
}

/// Backward of [`narrow`]: `dy` placed at `start` in zeros of the input's shape.
pub fn narrow_backward(dy: &Tensor, full: &[usize], dim: usize, start: usize) -> Result<Tensor> {
    let len = dy.shape().get(dim).copied().unwrap_or(0);
    if dim >= full.len() || start + len > full[dim] {
        return Err(shape_err("narrow_backward", "dy does not fit the input shape", &[dy.shape(), &full.to_vec()]));
    }
    let pre = full[dim] - start - len;
    let mut parts = Vec::new();
    let mk = |n: usize| -> Result<Tensor> {
        let mut s = full.to_vec();
        s[dim] = n;
        Tensor::zeros(&s, dy.dtype(), dy.device())
    };
    if start > 0 {
        parts.push(mk(start)?);
    }
    parts.push(dy.clone());
    if pre > 0 {
        parts.push(mk(pre)?);
    }
    cat(&parts, dim)
}

/// Concatenate along `dim`; all other dimensions must agree.
pub fn cat(xs: &[Tensor], dim: usize) -> Result<Tensor> {
    let first = xs.first().ok_or_else(|| crate::TensorError::Arg { op: "cat", detail: "no tensors".into() })?;
    let refs: Vec<&Tensor> = xs.iter().collect();
    let dev = same_device("cat", &refs)?;
    let dt = same_dtype("cat", &refs)?;
    let r = first.rank();
    for x in xs {
        let ok = x.rank() == r && dim < r && (0..r).all(|i| i == dim || x.shape()[i] == first.shape()[i]);
        if !ok {
            let shapes: Vec<&crate::Shape> = xs.iter().map(|t| t.shape()).collect();
            return Err(shape_err("cat", format!("shapes disagree off dim {dim}"), &shapes));
        }
    }
    let mut shape = first.shape().clone();
    shape[dim] = xs.iter().map(|x| x.shape()[dim]).sum();
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = &dev
        && r <= crate::cuda::MAX_RANK
    {
        return be.cat(xs, dim, &shape);
    }
    let outer: usize = shape[..dim].iter().product();
    let hs: Vec<Tensor> = xs.iter().map(host).collect::<Result<_>>()?;
    with_float!(dt, T, {
        let mut v = Vec::with_capacity(crate::tensor::numel(&shape));
        let inner: Vec<usize> = xs.iter().map(|x| x.shape()[dim..].iter().product()).collect();
        for o in 0..outer {
            for (h, &n) in hs.iter().zip(&inner) {
                v.extend_from_slice(&sl::<T>(h)[o * n..(o + 1) * n]);
            }
        }
        out(v, &shape, dt, &dev)
    })
}

/// Backward of [`cat`]: `dy` split back into the pieces' sizes along `dim`.
pub fn cat_backward(dy: &Tensor, sizes: &[usize], dim: usize) -> Result<Vec<Tensor>> {
    let mut start = 0;
    sizes
        .iter()
        .map(|&n| {
            let t = narrow(dy, dim, start, n);
            start += n;
            t
        })
        .collect()
}

/// Split the last dimension into pieces of the given sizes (e.g. `q_nope | q_pe`).
pub fn split_last(x: &Tensor, sizes: &[usize]) -> Result<Vec<Tensor>> {
    if sizes.iter().sum::<usize>() != x.dim(-1) {
        return Err(shape_err("split_last", format!("sizes {sizes:?} do not sum to the last dim"), &[x.shape()]));
    }
    cat_backward(x, sizes, x.rank() - 1)
}
