//! Parameter handles: a layer owns each trainable tensor together with its gradient slot.
//!
//! A backward pass adds into the slot ([`Param::accumulate_grad`]); the optimizer reads the
//! slot and replaces [`Param::value`] in place; names exist only where checkpoints are read and
//! written. A `&Param` dereferences to its value, so forward code passes it wherever a
//! `&Tensor` is expected.

use crate::error::{Result, shape_err};
use crate::ops::elementwise::add;
use crate::tensor::Tensor;

/// A trainable tensor and its accumulated gradient.
#[derive(Clone, Debug)]
pub struct Param {
    /// The current value (what forward passes read).
    pub value: Tensor,
    /// The gradient summed since the last [`Param::zero_grad`] (`None`: nothing reached it).
    pub grad: Option<Tensor>,
}

impl Param {
    /// A parameter without a gradient.
    pub fn new(value: Tensor) -> Param {
        Param { value, grad: None }
    }

    /// `grad += g` (the first gradient is stored as it is); the shape must equal the value's.
    pub fn accumulate_grad(&mut self, g: &Tensor) -> Result<()> {
        if g.shape() != self.value.shape() {
            return Err(shape_err(
                "accumulate_grad",
                "gradient and parameter differ",
                &[g.shape(), self.value.shape()],
            ));
        }
        self.grad = Some(match self.grad.take() {
            Some(old) => add(&old, g)?,
            None => g.clone(),
        });
        Ok(())
    }

    /// Drop the gradient.
    pub fn zero_grad(&mut self) {
        self.grad = None;
    }
}

impl std::ops::Deref for Param {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        &self.value
    }
}

impl From<Tensor> for Param {
    fn from(t: Tensor) -> Param {
        Param::new(t)
    }
}
