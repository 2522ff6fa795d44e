//! Indexing: embedding gather and its scatter-add, row index-select / index-add (expert dispatch
//! and combine), per-row gather / scatter (routing weights), and top-k.
//! Index arguments are host slices of `u32`.

use rayon::prelude::*;

use super::vmath::{dot, simd};
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

/// Checks shared by [`combine_rows`] and its backward; returns the row width.
fn combine_check(op: &'static str, srcs: &[Tensor], loc: &[(u32, u32)], k: usize, w: Option<&Tensor>) -> Result<usize> {
    let first = srcs.first().ok_or_else(|| TensorError::Arg { op, detail: "no sources".into() })?;
    let refs: Vec<&Tensor> = srcs.iter().chain(w).collect();
    super::same_device(op, &refs)?;
    super::same_dtype(op, &refs)?;
    if srcs.iter().any(|s| s.rank() == 0) || srcs.iter().any(|s| s.shape()[1..] != first.shape()[1..]) {
        return Err(shape_err(
            op,
            "sources must share their row shape",
            &srcs.iter().map(|s| s.shape()).collect::<Vec<_>>(),
        ));
    }
    if k == 0 || !loc.len().is_multiple_of(k) {
        return Err(TensorError::Arg { op, detail: format!("{} slots are not a multiple of k = {k}", loc.len()) });
    }
    check_idx(op, &loc.iter().map(|l| l.0).collect::<Vec<_>>(), srcs.len())?;
    for &(e, r) in loc {
        check_idx(op, &[r], srcs[e as usize].dim(0))?;
    }
    if let Some(w) = w
        && w.numel() != loc.len()
    {
        return Err(shape_err(op, format!("weights must hold the {} slots", loc.len()), &[w.shape()]));
    }
    Ok(first.shape()[1..].iter().product())
}

/// Slot order within each output row: by source, then row (the order expert dispatch sums in).
fn combine_order(loc: &[(u32, u32)], k: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..loc.len() as u32).collect();
    order.par_chunks_mut(k).for_each(|o| o.sort_by_key(|&s| loc[s as usize]));
    order
}

/// The combine step of expert dispatch: a weighted sum of rows gathered from several sources,
/// `out[i] = Σ_j w[i, j] · srcs[e][r]` with `(e, r) = loc[i·k + j]`, for `i < loc.len() / k`.
/// `w` has the sources' dtype and device and `loc.len()` entries (`None`: weight 1). On the CPU
/// one pass over the sources in the compute dtype (f32 for bf16, rounded once at the end), the
/// `k` terms of a row added in increasing `(e, r)` order, each product rounded first — for f32 /
/// f64 the same result as `index_add` of `mul` over the rows in dispatch order. Elsewhere `cat`,
/// `index_select`, `mul` and `index_add` (on CUDA an atomic scatter: summation order not fixed).
pub fn combine_rows(srcs: &[Tensor], loc: &[(u32, u32)], k: usize, w: Option<&Tensor>) -> Result<Tensor> {
    let row = combine_check("combine_rows", srcs, loc, k, w)?;
    let n = loc.len() / k;
    let first = &srcs[0];
    let mut shape = first.shape().clone();
    shape[0] = n;
    if !first.device().is_cpu() {
        let (all, rows) = cat_rows(srcs, loc, row)?;
        let mut y = index_select(&all, &rows)?;
        if let Some(w) = w {
            y = super::elementwise::mul(&y, &w.reshape(&[loc.len(), 1])?)?;
        }
        let dest: Vec<u32> = (0..loc.len() as u32).map(|s| s / k as u32).collect();
        return index_add(n, &dest, &y)?.reshape(&shape);
    }
    let hs: Vec<Tensor> = srcs.iter().map(host).collect::<Result<_>>()?;
    let hw = w.map(host).transpose()?;
    let order = combine_order(loc, k);
    with_float!(first.dtype(), T, {
        let ss: Vec<&[T]> = hs.iter().map(sl::<T>).collect();
        let ws = hw.as_ref().map(sl::<T>);
        let mut v = vec![T::zero(); n * row];
        if row > 0 {
            v.par_chunks_mut(row).with_min_len((PAR_MIN / row).max(1)).enumerate().for_each(|(i, dst)| {
                simd(|| {
                    for &s in &order[i * k..(i + 1) * k] {
                        let (e, r) = loc[s as usize];
                        let src = &ss[e as usize][r as usize * row..(r as usize + 1) * row];
                        match ws {
                            Some(ws) => {
                                let c = ws[s as usize];
                                dst.iter_mut().zip(src).for_each(|(d, &x)| *d += x * c);
                            }
                            None => dst.iter_mut().zip(src).for_each(|(d, &x)| *d += x),
                        }
                    }
                })
            });
        }
        out(v, &shape, first.dtype(), first.device())
    })
}

/// The sources as `[rows, row]` concatenated along rows, and each slot's row in that
/// concatenation.
fn cat_rows(srcs: &[Tensor], loc: &[(u32, u32)], row: usize) -> Result<(Tensor, Vec<u32>)> {
    let mut start = vec![0u32; srcs.len()];
    for e in 1..srcs.len() {
        start[e] = start[e - 1] + srcs[e - 1].dim(0) as u32;
    }
    let rows = loc.iter().map(|&(e, r)| start[e as usize] + r).collect();
    let flat: Vec<Tensor> = srcs.iter().map(|s| s.reshape(&[s.dim(0), row])).collect::<Result<_>>()?;
    Ok((super::shape::cat(&flat, 0)?, rows))
}

/// Backward of [`combine_rows`]: each source's gradient (`w[i, j] · dy[i]` at the row slot
/// `i·k + j` names, zero rows where none does) and, with weights, theirs (`[n, k]`:
/// `⟨dy[i], srcs[e][r]⟩`). Each source row may be named by at most one slot (expert dispatch
/// sends a token to an expert once).
pub fn combine_rows_backward(
    srcs: &[Tensor],
    loc: &[(u32, u32)],
    k: usize,
    w: Option<&Tensor>,
    dy: &Tensor,
) -> Result<(Vec<Tensor>, Option<Tensor>)> {
    let op = "combine_rows_backward";
    let row = combine_check(op, srcs, loc, k, w)?;
    let n = loc.len() / k;
    let first = &srcs[0];
    if dy.rank() == 0 || dy.dim(0) != n || dy.shape()[1..] != first.shape()[1..] {
        return Err(shape_err(op, format!("dy must be [{n}, the sources' row shape]"), &[dy.shape(), first.shape()]));
    }
    super::same_device(op, &[first, dy])?;
    super::same_dtype(op, &[first, dy])?;
    // Which slot names each source row.
    let mut slot_of: Vec<Vec<u32>> = srcs.iter().map(|s| vec![u32::MAX; s.dim(0)]).collect();
    for (s, &(e, r)) in loc.iter().enumerate() {
        let at = &mut slot_of[e as usize][r as usize];
        if *at != u32::MAX {
            return Err(TensorError::Arg { op, detail: format!("row {r} of source {e} is named by two slots") });
        }
        *at = s as u32;
    }
    let dw_shape = [n, k];
    if !first.device().is_cpu() {
        let (all, rows) = cat_rows(srcs, loc, row)?;
        let tokens: Vec<u32> = (0..loc.len() as u32).map(|s| s / k as u32).collect();
        let d_sel = index_select(&dy.reshape(&[n, row])?, &tokens)?;
        let dw = match w {
            Some(_) => {
                let prod = super::elementwise::mul(&d_sel, &index_select(&all, &rows)?)?;
                let per = super::reduce::sum_dim(&prod.reshape(&[loc.len(), row])?, 1)?;
                Some(per.reshape(&dw_shape)?)
            }
            None => None,
        };
        let scaled = match w {
            Some(w) => super::elementwise::mul(&d_sel, &w.reshape(&[loc.len(), 1])?)?,
            None => d_sel,
        };
        let d_all = index_add(all.dim(0), &rows, &scaled)?;
        let mut d_srcs = Vec::with_capacity(srcs.len());
        let mut at = 0;
        for s in srcs {
            d_srcs.push(super::shape::narrow(&d_all, 0, at, s.dim(0))?.reshape(s.shape())?);
            at += s.dim(0);
        }
        return Ok((d_srcs, dw));
    }
    let hs: Vec<Tensor> = srcs.iter().map(host).collect::<Result<_>>()?;
    let (hw, hd) = (w.map(host).transpose()?, host(dy)?);
    with_float!(first.dtype(), T, {
        let ss: Vec<&[T]> = hs.iter().map(sl::<T>).collect();
        let (ws, ds) = (hw.as_ref().map(sl::<T>), sl::<T>(&hd));
        let d_srcs = srcs
            .par_iter()
            .zip(&slot_of)
            .map(|(s, slots)| {
                let mut v = vec![T::zero(); s.numel()];
                if row > 0 {
                    v.par_chunks_mut(row).zip(slots.par_iter()).with_min_len((PAR_MIN / row).max(1)).for_each(
                        |(dst, &slot)| {
                            if slot == u32::MAX {
                                return;
                            }
                            let i = slot as usize / k;
                            let src = &ds[i * row..(i + 1) * row];
                            simd(|| match ws {
                                Some(ws) => {
                                    let c = ws[slot as usize];
                                    dst.iter_mut().zip(src).for_each(|(d, &g)| *d = g * c);
                                }
                                None => dst.copy_from_slice(src),
                            })
                        },
                    );
                }
                out(v, s.shape(), s.dtype(), s.device())
            })
            .collect::<Result<Vec<_>>>()?;
        let dw = match ws {
            Some(_) => {
                let mut v = vec![T::zero(); loc.len()];
                v.par_iter_mut().with_min_len((PAR_MIN / row.max(1)).max(1)).enumerate().for_each(|(s, o)| {
                    let (e, r) = loc[s];
                    let y = &ss[e as usize][r as usize * row..(r as usize + 1) * row];
                    let g = &ds[(s / k) * row..(s / k + 1) * row];
                    *o = simd(|| dot(g, y));
                });
                Some(out(v, &dw_shape, first.dtype(), first.device())?)
            }
            None => None,
        };
        Ok((d_srcs, dw))
    })
}
