//! SiLU, SwiGLU and sigmoid with their backward passes.

use rayon::prelude::*;

use super::elementwise::{map_par, zip_par};
use super::vmath::simd;
use super::{PAR_MIN, host, out, same_device, same_dtype, sl, with_float};
use crate::error::shape_err;
use crate::{DType, Float, Result, Tensor};

#[inline(always)]
fn sigm<T: Float>(x: T) -> T {
    T::one() / (T::one() + (-x).fexp())
}

/// `silu(x) = x · σ(x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = x.device() {
        return be.silu(x);
    }
    let hx = host(x)?;
    with_float!(x.dtype(), T, { out(map_par(sl::<T>(&hx), |v| v * sigm(v)), x.shape(), x.dtype(), x.device()) })
}

/// Backward of [`silu`]: `dy · σ(x)(1 + x(1 − σ(x)))`.
pub fn silu_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    check_same("silu_backward", x, dy)?;
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = x.device() {
        return be.silu_backward(x, dy);
    }
    let (hx, hd) = (host(x)?, host(dy)?);
    with_float!(x.dtype(), T, {
        let v = zip_par(sl::<T>(&hx), sl::<T>(&hd), |v, d| {
            let s = sigm(v);
            d * s * (T::one() + v * (T::one() - s))
        });
        out(v, x.shape(), x.dtype(), x.device())
    })
}

/// SwiGLU: `silu(gate) ⊙ up` (the DeepSeek MLP and expert activation).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    check_same("swiglu", gate, up)?;
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = gate.device() {
        return be.swiglu(gate, up);
    }
    let (hg, hu) = (host(gate)?, host(up)?);
    with_float!(gate.dtype(), T, {
        let v = zip_par(sl::<T>(&hg), sl::<T>(&hu), |g, u| g * sigm(g) * u);
        out(v, gate.shape(), gate.dtype(), gate.device())
    })
}

/// Backward of [`swiglu`]: `(d gate, d up)`.
pub fn swiglu_backward(gate: &Tensor, up: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    check_same("swiglu_backward", gate, up)?;
    check_same("swiglu_backward", gate, dy)?;
    if !gate.device().is_cpu() || gate.dtype() == DType::BF16 {
        // The composition (bf16 rounds silu(g) and dy·u to bf16 between the ops, as on CUDA).
        let d_up = super::elementwise::mul(dy, &silu(gate)?)?;
        let d_gate = silu_backward(gate, &super::elementwise::mul(dy, up)?)?;
        return Ok((d_gate, d_up));
    }
    // One pass on the CPU in f32 / f64: d up = dy · silu(g), d gate = (dy · u) · σ(g)(1 +
    // g(1 − σ(g))) — the same roundings as `silu`, `mul` and `silu_backward` in turn.
    let (hg, hu, hd) = (host(gate)?, host(up)?, host(dy)?);
    with_float!(gate.dtype(), T, {
        let (g, u, d) = (sl::<T>(&hg), sl::<T>(&hu), sl::<T>(&hd));
        let n = g.len();
        let (mut dg, mut du): (Vec<T>, Vec<T>) = (Vec::with_capacity(n), Vec::with_capacity(n));
        dg.spare_capacity_mut()[..n]
            .par_chunks_mut(PAR_MIN)
            .zip(du.spare_capacity_mut()[..n].par_chunks_mut(PAR_MIN))
            .enumerate()
            .for_each(|(c, (og, ou))| {
                let i0 = c * PAR_MIN;
                simd(|| {
                    let ins = g[i0..].iter().zip(&u[i0..]).zip(&d[i0..]);
                    for ((og, ou), ((&gv, &uv), &dv)) in og.iter_mut().zip(ou.iter_mut()).zip(ins) {
                        let s = sigm(gv);
                        ou.write(dv * (gv * s));
                        og.write(dv * uv * s * (T::one() + gv * (T::one() - s)));
                    }
                })
            });
        // SAFETY: the chunks cover all n slots of both buffers and each slot is written once.
        unsafe {
            dg.set_len(n);
            du.set_len(n);
        }
        Ok((out(dg, gate.shape(), gate.dtype(), gate.device())?, out(du, gate.shape(), gate.dtype(), gate.device())?))
    })
}

/// `σ(x) = 1 / (1 + e^{−x})`.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = x.device() {
        return be.sigmoid(x);
    }
    let hx = host(x)?;
    with_float!(x.dtype(), T, { out(map_par(sl::<T>(&hx), sigm), x.shape(), x.dtype(), x.device()) })
}

/// Backward of [`sigmoid`] from its output `y`: `dy · y(1 − y)`.
pub fn sigmoid_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    check_same("sigmoid_backward", y, dy)?;
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = y.device() {
        return be.sigmoid_backward(y, dy);
    }
    let (hy, hd) = (host(y)?, host(dy)?);
    with_float!(y.dtype(), T, {
        let v = zip_par(sl::<T>(&hy), sl::<T>(&hd), |s, d| d * s * (T::one() - s));
        out(v, y.shape(), y.dtype(), y.device())
    })
}

pub(crate) fn check_same(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    same_device(op, &[a, b])?;
    same_dtype(op, &[a, b])?;
    if a.shape() != b.shape() {
        return Err(shape_err(op, "operands must have equal shapes", &[a.shape(), b.shape()]));
    }
    Ok(())
}
