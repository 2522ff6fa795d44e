//! Ops for preallocated decode caches: write rows into a buffer in place, and attend over the
//! filled prefix of a cache without copying it.
//!
//! Tensors are values everywhere else; [`write_at`] is the one exception and only touches a
//! buffer that nothing else shares (a cache owns its buffer and lends it to [`attention_cached`]
//! by reference), so no other handle can observe the write.

use rayon::prelude::*;

use super::attention::softmax_row;
use super::matmul::gemm_ld;
use super::shape::narrow;
use super::vmath::simd;
use super::{host, out, same_device, same_dtype, sl, with_float};
use crate::error::shape_err;
use crate::tensor::{CpuStorage, Storage};
use crate::{Float, Result, Tensor, TensorError};

/// Overwrite `dst`'s slots `offset .. offset + src.dim(dim)` along `dim` with `src`, in place
/// (`src` has `dst`'s shape except along `dim`). The CPU copies the rows into the owned buffer;
/// CUDA launches one strided device copy. Errors when the rows would run past the end of `dim`
/// (nothing is written then), on a dtype or device mismatch, and when `dst`'s buffer is shared
/// with another handle (a clone or reshape of it is alive): the write would be visible through it.
pub fn write_at(dst: &mut Tensor, dim: usize, offset: usize, src: &Tensor) -> Result<()> {
    same_device("write_at", &[dst, src])?;
    same_dtype("write_at", &[dst, src])?;
    let r = dst.rank();
    if src.rank() != r || dim >= r || (0..r).any(|i| i != dim && src.shape()[i] != dst.shape()[i]) {
        return Err(shape_err("write_at", format!("src must match dst off dim {dim}"), &[dst.shape(), src.shape()]));
    }
    let (full, n) = (dst.shape()[dim], src.shape()[dim]);
    if offset + n > full {
        return Err(shape_err(
            "write_at",
            format!("rows {offset}..{} along dim {dim} run past its size {full} (capacity exceeded)", offset + n),
            &[dst.shape(), src.shape()],
        ));
    }
    let outer: usize = dst.shape()[..dim].iter().product();
    let inner: usize = dst.shape()[dim + 1..].iter().product();
    #[cfg(feature = "cuda")]
    let dst_shape = dst.shape().clone();
    let Some(st) = dst.storage_mut() else {
        return Err(TensorError::Arg {
            op: "write_at",
            detail: "the destination buffer is shared with another tensor handle; writing in place would change it too"
                .into(),
        });
    };
    if n * inner * outer == 0 {
        return Ok(());
    }
    match (st, src.storage()) {
        (Storage::Cpu(d), Storage::Cpu(s)) => {
            fn rows<T: Copy>(
                d: &mut [T],
                s: &[T],
                (outer, full, n, inner, offset): (usize, usize, usize, usize, usize),
            ) {
                for o in 0..outer {
                    d[(o * full + offset) * inner..][..n * inner].copy_from_slice(&s[o * n * inner..][..n * inner]);
                }
            }
            let g = (outer, full, n, inner, offset);
            match (d, s) {
                (CpuStorage::F32(d), CpuStorage::F32(s)) => rows(d, s, g),
                (CpuStorage::F64(d), CpuStorage::F64(s)) => rows(d, s, g),
                (CpuStorage::BF16(d), CpuStorage::BF16(s)) => rows(d, s, g),
                _ => unreachable!("dtypes were checked equal"),
            }
            Ok(())
        }
        #[cfg(feature = "cuda")]
        (Storage::Cuda(d), _) => {
            let crate::Device::Cuda(be) = src.device() else { unreachable!("devices were checked equal") };
            be.write_at(d, &dst_shape, dim, offset, src)
        }
        #[cfg(feature = "cuda")]
        _ => unreachable!("devices were checked equal"),
    }
}

/// Attention of `q [B, S, D]` (S query rows per batch element, e.g. the heads of one token in
/// absorbed MLA decoding) against one key/value head that is the first `len` rows of a cache
/// `kv [B, capacity, D]`: keys are those rows, values their first `dv` columns (the latent `c_kv`
/// of an `[c_kv | k_pe]` row). `o [B, S, dv] = softmax(scale · q·Kᵀ) · V`; `key_padding`
/// (`[B·len]`, `false` = hidden) masks keys. No causal mask: every cached key precedes the query.
/// Only the filled prefix is read (no copy of the cache on f32 / f64 CPU buffers and on CUDA:
/// the products address the cache in place); a row with no visible key yields zeros on the CPU.
pub fn attention_cached(
    q: &Tensor,
    kv: &Tensor,
    len: usize,
    dv: usize,
    scale: f64,
    key_padding: Option<&[bool]>,
) -> Result<Tensor> {
    same_device("attention_cached", &[q, kv])?;
    same_dtype("attention_cached", &[q, kv])?;
    let bad = |d: String| Err(shape_err("attention_cached", d, &[q.shape(), kv.shape()]));
    if q.rank() != 3 || kv.rank() != 3 || q.dim(0) != kv.dim(0) || q.dim(2) != kv.dim(2) {
        return bad("q must be [B, S, D] and kv [B, capacity, D]".into());
    }
    let (b, s, d, cap) = (q.dim(0), q.dim(1), q.dim(2), kv.dim(1));
    if len == 0 || len > cap || dv > d {
        return bad(format!("len {len} must be in 1..={cap} and dv {dv} ≤ D {d}"));
    }
    if let Some(m) = key_padding
        && m.len() != b * len
    {
        return bad(format!("key_padding has {} entries, expected B·len = {}", m.len(), b * len));
    }
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = q.device()
        && b * s * d * dv > 0
    {
        return be.attention_cached(q, kv, len, dv, scale, key_padding);
    }
    if b * s * dv == 0 {
        return Tensor::zeros(&[b, s, dv], q.dtype(), q.device());
    }
    let hq = host(q)?;
    // A buffer already in the compute dtype on the host is read in place; otherwise only the
    // filled prefix is converted.
    let (hk, kcap) = if kv.device().is_cpu() && super::compute_dtype(kv.dtype()) == kv.dtype() {
        (kv.clone(), cap)
    } else {
        (host(&narrow(kv, 1, 0, len)?)?, len)
    };
    with_float!(q.dtype(), T, {
        let (qs, ks) = (sl::<T>(&hq), sl::<T>(&hk));
        let mut o = vec![T::zero(); b * s * dv];
        // One task per batch element: all S query rows against the prefix in one product each
        // for the scores and the values (the cache is streamed once per product, not once per
        // row); with fewer batch elements than threads the products themselves fork.
        let par = if b < rayon::current_num_threads() { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
        o.par_chunks_mut(s * dv).enumerate().for_each(|(bi, ob)| {
            simd(|| {
                let kb = &ks[bi * kcap * d..];
                let mut p = vec![T::zero(); s * len];
                gemm_ld(s, len, d, (&qs[bi * s * d..], d, false), (kb, d, true), (&mut p, len), false, par);
                let vis = |j: usize| key_padding.is_none_or(|m| m[bi * len + j]);
                let vis: Option<&dyn Fn(usize) -> bool> = if key_padding.is_some() { Some(&vis) } else { None };
                for row in p.chunks_mut(len) {
                    softmax_row(row, len, T::c(scale), vis);
                }
                gemm_ld(s, dv, len, (&p, len, false), (kb, d, false), (ob, dv), false, par);
            })
        });
        out(o, &[b, s, dv], q.dtype(), q.device())
    })
}
