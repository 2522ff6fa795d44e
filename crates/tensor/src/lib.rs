//! # tensor — r1's tensor engine
//!
//! A [`Tensor`] over a [`Device`] (CPU, CUDA), f32 / bf16 / f64, and the op set the DeepSeek-V3
//! model needs, each op with its backward beside it ([`ops`]). Model code calls these ops only,
//! never a backend, so one model runs on every device. [`gradcheck`] proves backward passes by
//! finite differences in f64 and is reused by every crate.
//!
//! ```
//! use tensor::{Device, DType, Tensor, ops};
//! let x = Tensor::randn(&[4, 8], 1.0, 0, DType::F32, &Device::Cpu)?;
//! let w = Tensor::randn(&[16, 8], 0.1, 1, DType::F32, &Device::Cpu)?;
//! let y = ops::matmul::linear(&x, &w)?; // x·Wᵀ → [4, 16]
//! let (dx, dw) = ops::matmul::linear_backward(&x, &w, &y)?;
//! assert_eq!(dx.shape(), x.shape());
//! assert_eq!(dw.shape(), w.shape());
//! # Ok::<(), tensor::TensorError>(())
//! ```

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dtype;
pub mod error;
pub mod gradcheck;
pub mod ops;
pub mod param;
pub mod tensor;

pub use dtype::{DType, Element, Float};
pub use error::{Result, TensorError};
pub use param::Param;
pub use tensor::{CpuStorage, Device, Shape, Tensor, numel};

/// Runs `f` on a worker of the CPU thread pool (rayon's global pool) and returns its result.
///
/// Every CPU op forks into that pool. Called from outside it (a program's main thread), each op
/// hands its work to the pool and sleeps until the pool wakes it again — a futex round trip per
/// op, about 3,400 context switches per `cpu-small` training step. Run a training or
/// inference loop through `on_pool` and the ops fork and join inside the pool instead
/// (`cargo xtask bench cpu-small`: ≈ 7 % faster). Already on a worker (of any pool), `f` simply
/// runs there. A panic in `f` reaches the caller. `f` occupies one worker for its whole run: it
/// must not block waiting on another OS thread that itself needs the pool (with one thread that
/// would deadlock).
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    // The workers get a main thread's stack size (they now run the whole program); ignored when
    // the global pool was already started (then its own stack size stays).
    let _ = rayon::ThreadPoolBuilder::new().stack_size(8 << 20).build_global();
    rayon::scope(|_| f())
}
