//! Ordered, named parameter and gradient containers.

use std::collections::HashMap;

use tensor::ops::{elementwise, reduce};
use tensor::{DType, Param, Tensor};

use crate::{OptimError, Result};

/// Named tensors in insertion order, looked up by name.
#[derive(Clone, Debug, Default)]
pub struct Named {
    names: Vec<String>,
    tensors: Vec<Tensor>,
    index: HashMap<String, usize>,
}

impl Named {
    /// Add a new entry; a duplicate name is an error.
    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) -> Result<()> {
        let name = name.into();
        if self.index.contains_key(&name) {
            return Err(OptimError::Param { name, detail: "inserted twice".into() });
        }
        self.index.insert(name.clone(), self.names.len());
        self.names.push(name);
        self.tensors.push(t);
        Ok(())
    }

    /// The tensor named `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// Replace the tensor named `name` (same shape required).
    pub fn set(&mut self, name: &str, t: Tensor) -> Result<()> {
        let i = *self
            .index
            .get(name)
            .ok_or_else(|| OptimError::Param { name: name.into(), detail: "no such entry".into() })?;
        if t.shape() != self.tensors[i].shape() {
            return Err(OptimError::Param {
                name: name.into(),
                detail: format!("shape {:?} replaces {:?}", t.shape(), self.tensors[i].shape()),
            });
        }
        self.tensors[i] = t;
        Ok(())
    }

    /// Names in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// `(name, tensor)` in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.names.iter().map(String::as_str).zip(&self.tensors)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// No entries?
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Total element count.
    pub fn numel(&self) -> usize {
        self.tensors.iter().map(Tensor::numel).sum()
    }
}

/// Model parameters by HF checkpoint name.
pub type Params = Named;

/// `sqrt(Σ ‖g‖²)` over the gradients of `params` (those without one count 0), accumulated in
/// f64.
pub fn grad_norm(params: &[&mut Param]) -> Result<f64> {
    let mut ss = 0.0;
    for g in params.iter().filter_map(|p| p.grad.as_ref()) {
        let g32 = g.to_dtype(DType::F32)?;
        ss += reduce::sum_all(&elementwise::mul(&g32, &g32)?)?.item()?;
    }
    Ok(ss.sqrt())
}

/// Clip the gradients of `params` to global L2 norm `max_norm` (as
/// `torch.nn.utils.clip_grad_norm_`: scale by `max_norm / (norm + 1e-6)` when that is below 1).
/// Returns the norm before clipping.
pub fn clip_grad_norm(params: &mut [&mut Param], max_norm: f64) -> Result<f64> {
    let norm = grad_norm(params)?;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for p in params.iter_mut() {
            if let Some(g) = p.grad.take() {
                p.grad = Some(elementwise::scale(&g, coef)?);
            }
        }
    }
    Ok(norm)
}

/// Drop every gradient of `params`.
pub fn zero_grad(params: &mut [&mut Param]) {
    params.iter_mut().for_each(|p| p.zero_grad());
}
