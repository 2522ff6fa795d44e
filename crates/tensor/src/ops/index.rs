//! Indexing: embedding gather and its scatter-add, row index-select / index-add (expert dispatch
//! and combine), per-row gather / scatter (routing weights), and top-k.
//! Index arguments are host slices of `u32`.

use rayon::prelude::*;

use super::vmath::simd;
use super::{PAR_MIN, host, out, sl, with_float};
use crate::error::shape_err;
use crate::{Result, Tensor, TensorError};

fn check_idx(op: &'static str, idx: &[u32], size: usize) -> Result<()> {
    match idx.iter().find(|&&i| i as usize >= size) {
        Some(&i) => Err(TensorError::Index { op, index: i as usize, size }),
        None => Ok(()),
    }
}

/// Rows `idx` of `x` (`[N, ...]` → `[idx.len(), ...]`).
pub fn index_select(x: &Tensor, idx: &[u32]) -> Result<Tensor> {
    if x.rank() == 0 {
        return Err(shape_err("index_select", "needs rank >= 1", &[x.shape()]));
    }
    check_idx("index_select", idx, x.dim(0))?;
    let row: usize = x.shape()[1..].iter().product();
    let mut shape = x.shape().clone();
    shape[0] = idx.len();
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = x.device() {
        return be.index_select(x, idx, &shape);
    }
    let hx = host(x)?;
    with_float!(x.dtype(), T, {
        let xs = sl::<T>(&hx);
        let mut v: Vec<T> = Vec::with_capacity(idx.len() * row);
        if row > 0 {
            v.spare_capacity_mut()[..idx.len() * row].par_chunks_mut(row).zip(idx.par_iter()).for_each(|(o, &i)| {
                o.iter_mut().zip(&xs[i as usize * row..(i as usize + 1) * row]).for_each(|(o, &x)| {
                    o.write(x);
                })
            });
        }
        // SAFETY: every row of the `idx.len() · row` slots was written above (none when row = 0).
        unsafe { v.set_len(idx.len() * row) };
        out(v, &shape, x.dtype(), x.device())
    })
}

/// `out = zeros([n_rows, ...]); out[idx[i]] += src[i]` — the backward of [`index_select`], and
/// the combine step of expert dispatch.
pub fn index_add(n_rows: usize, idx: &[u32], src: &Tensor) -> Result<Tensor> {
    if src.rank() == 0 || src.dim(0) != idx.len() {
        return Err(shape_err("index_add", format!("src rows must equal {} indices", idx.len()), &[src.shape()]));
    }
    check_idx("index_add", idx, n_rows)?;
    let row: usize = src.shape()[1..].iter().product();
    let mut shape = src.shape().clone();
    shape[0] = n_rows;
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = src.device() {
        return be.index_add(idx, src, &shape);
    }
    let hs = host(src)?;
    with_float!(src.dtype(), T, {
        let ss = sl::<T>(&hs);
        // Sources grouped by destination (a counting sort, sources in increasing order), so each
        // destination row is summed by one task, in the same order as a serial scatter.
        let mut start = vec![0usize; n_rows + 1];
        idx.iter().for_each(|&r| start[r as usize + 1] += 1);
        (0..n_rows).for_each(|r| start[r + 1] += start[r]);
        let mut fill = start.clone();
        let mut src_of = vec![0usize; idx.len()];
        for (i, &r) in idx.iter().enumerate() {
            src_of[fill[r as usize]] = i;
            fill[r as usize] += 1;
        }
        let mut v = vec![T::zero(); n_rows * row];
        if row > 0 {
            v.par_chunks_mut(row).with_min_len((PAR_MIN / row).max(1)).enumerate().for_each(|(r, dst)| {
                simd(|| {
                    for &i in &src_of[start[r]..start[r + 1]] {
                        dst.iter_mut().zip(&ss[i * row..(i + 1) * row]).for_each(|(d, &x)| *d += x);
                    }
                })
            });
        }
        out(v, &shape, src.dtype(), src.device())
    })
}

/// Token embedding: rows `ids` of `table [vocab, d]` → `[ids.len(), d]`.
pub fn embedding(ids: &[u32], table: &Tensor) -> Result<Tensor> {
    if table.rank() != 2 {
        return Err(shape_err("embedding", "table must be [vocab, d]", &[table.shape()]));
    }
    index_select(table, ids)
}

/// Backward of [`embedding`]: scatter-add of `dy [ids.len(), d]` into `[vocab, d]`.
pub fn embedding_backward(ids: &[u32], vocab: usize, dy: &Tensor) -> Result<Tensor> {
    index_add(vocab, ids, dy)
}

/// Per-row gather along the last dimension: `out[r, j] = x[r, idx[r, j]]` with `x [R, E]`,
/// `idx` of `R·k` entries → `[R, k]`.
pub fn gather_last(x: &Tensor, idx: &[u32], k: usize) -> Result<Tensor> {
    let e = x.dim(-1);
    let rows = x.numel() / e.max(1);
    if idx.len() != rows * k {
        return Err(shape_err("gather_last", format!("{} indices for {rows} rows × {k}", idx.len()), &[x.shape()]));
    }
    check_idx("gather_last", idx, e)?;
    let mut shape = x.shape().clone();
    *shape.last_mut().expect("rank >= 1") = k;
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = x.device() {
        return be.gather_last(x, idx, k, &shape);
    }
    let hx = host(x)?;
    with_float!(x.dtype(), T, {
        let xs = sl::<T>(&hx);
        let v: Vec<T> = idx.iter().enumerate().map(|(i, &j)| xs[(i / k) * e + j as usize]).collect();
        out(v, &shape, x.dtype(), x.device())
    })
}

/// Backward of [`gather_last`] (a per-row scatter): `out [R, e]` zeros with
/// `out[r, idx[r, j]] += dy[r, j]`.
pub fn scatter_last(dy: &Tensor, idx: &[u32], e: usize) -> Result<Tensor> {
    let k = dy.dim(-1);
    if idx.len() != dy.numel() {
        return Err(shape_err("scatter_last", format!("{} indices for dy", idx.len()), &[dy.shape()]));
    }
    check_idx("scatter_last", idx, e)?;
    let mut shape = dy.shape().clone();
    *shape.last_mut().expect("rank >= 1") = e;
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = dy.device() {
        return be.scatter_last(dy, idx, e, &shape);
    }
    let hd = host(dy)?;
    with_float!(dy.dtype(), T, {
        let ds = sl::<T>(&hd);
        let rows = ds.len() / k.max(1);
        let mut v = vec![T::zero(); rows * e];
        for (i, &j) in idx.iter().enumerate() {
            v[(i / k) * e + j as usize] += ds[i];
        }
        out(v, &shape, dy.dtype(), dy.device())
    })
}

/// The `k` largest entries of each row (last dimension), in descending order; ties go to the
/// lower index. Returns `(values [.., k], indices)`. NaN sorts below every number.
pub fn topk(x: &Tensor, k: usize) -> Result<(Tensor, Vec<u32>)> {
    let e = x.dim(-1);
    if k > e {
        return Err(shape_err("topk", format!("k = {k} exceeds the last dim"), &[x.shape()]));
    }
    let hx = host(x)?;
    let rows = x.numel() / e.max(1);
    let xs_idx: Vec<u32> = with_float!(x.dtype(), T, {
        let xs = sl::<T>(&hx);
        let mut idx = vec![0u32; rows * k];
        if k > 0 {
            idx.par_chunks_mut(k).enumerate().for_each(|(r, o)| {
                let row = &xs[r * e..(r + 1) * e];
                let mut order: Vec<u32> = (0..e as u32).collect();
                let key = |i: &u32| {
                    let v = row[*i as usize];
                    if v.is_nan() { T::neg_infinity() } else { v }
                };
                order.sort_by(|a, b| key(b).partial_cmp(&key(a)).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(b)));
                o.copy_from_slice(&order[..k]);
            });
        }
        idx
    });
    let vals = gather_last(x, &xs_idx, k)?;
    Ok((vals, xs_idx))
}

/// Backward of [`topk`] for the values: scatter into the input's last dimension `e`.
pub fn topk_backward(dvalues: &Tensor, idx: &[u32], e: usize) -> Result<Tensor> {
    scatter_last(dvalues, idx, e)
}
