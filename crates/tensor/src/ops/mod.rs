//! The op set of the DeepSeek-V3 model. Each op has a forward function and, beside it, its
//! backward (`*_backward`), which takes what the forward saved plus the output gradient and
//! returns the input gradients — the llm.c pattern, with no hidden autograd tape.
//!
//! Every op runs on every [`Device`]: CPU kernels compute in f32 (bf16 inputs are widened and the
//! result rounded back) or f64; on CUDA, ops with a native path (cuBLAS GEMM, the `.cu` kernels)
//! run there, and the others round-trip through the host so that model code runs unchanged.

pub mod activation;
pub mod attention;
pub mod cache;
pub mod elementwise;
pub mod index;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod rope;
pub mod shape;
pub mod softmax;
pub(crate) mod strided;
pub(crate) mod vmath;

use crate::{DType, Device, Result, Tensor, TensorError};

/// The device shared by all operands, or an error naming the op.
pub(crate) fn same_device(op: &'static str, ts: &[&Tensor]) -> Result<Device> {
    let d = ts[0].device().clone();
    for t in &ts[1..] {
        if !t.device().same(&d) {
            return Err(TensorError::Device { op, a: format!("{d:?}"), b: format!("{:?}", t.device()) });
        }
    }
    Ok(d)
}

/// The dtype shared by all operands, or an error naming the op.
pub(crate) fn same_dtype(op: &'static str, ts: &[&Tensor]) -> Result<DType> {
    let d = ts[0].dtype();
    for t in &ts[1..] {
        if t.dtype() != d {
            return Err(TensorError::DType {
                op,
                got: t.dtype(),
                detail: format!("operands must share one dtype, first is {d:?}"),
            });
        }
    }
    Ok(d)
}

/// The dtype CPU kernels compute in for a tensor of dtype `d`.
pub(crate) fn compute_dtype(d: DType) -> DType {
    match d {
        DType::BF16 => DType::F32,
        d => d,
    }
}

/// A host tensor in the compute dtype (bf16 widened to f32).
pub(crate) fn host(t: &Tensor) -> Result<Tensor> {
    t.to_cpu()?.to_dtype(compute_dtype(t.dtype()))
}

/// Run `$body` with `$T` bound to the Rust float type of compute dtype `$dt` (f32 or f64).
macro_rules! with_float {
    ($dt:expr, $T:ident, $body:block) => {
        match $crate::ops::compute_dtype($dt) {
            $crate::DType::F64 => {
                #[allow(unused_imports)]
                use num_traits::{Float as _, One as _, Zero as _};
                type $T = f64;
                $body
            }
            _ => {
                #[allow(unused_imports)]
                use num_traits::{Float as _, One as _, Zero as _};
                type $T = f32;
                $body
            }
        }
    };
}
pub(crate) use with_float;

/// Borrow a host tensor's buffer as `T` (the caller made it with [`host`]).
pub(crate) fn sl<T: crate::Element>(t: &Tensor) -> &[T] {
    t.cpu_slice::<T>().expect("host() yields a CPU tensor in the compute dtype")
}

/// Build an output tensor from a compute buffer, rounding back to `dt` and moving to `dev`.
pub(crate) fn out<T: crate::Element>(v: Vec<T>, shape: &[usize], dt: DType, dev: &Device) -> Result<Tensor> {
    Tensor::from_vec(v, shape)?.to_dtype(dt)?.to_device(dev)
}

/// Rows of at least this many elements are processed in parallel.
pub(crate) const PAR_MIN: usize = 1 << 14;
