//! AdamW (Loshchilov & Hutter): decoupled weight decay and bias-corrected moments, exactly as
//! `torch.optim.AdamW`. State (`exp_avg`, `exp_avg_sq`) is f32 beside each parameter.

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
#[cfg(feature = "cuda")]
use tensor::Device;
use tensor::{DType, Param, Tensor};

use crate::io::atomic_write;
use crate::{OptimError, Result};

/// AdamW hyper-parameters (torch defaults, weight decay 0.01 as `torch.optim.AdamW`).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Parameters whose name contains one of these get no weight decay (norm weights, biases,
    /// as transformers' Trainer does).
    pub no_decay: Vec<String>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            no_decay: vec!["norm".into(), "bias".into()],
        }
    }
}

/// The optimizer and its state. Parameters are handles ([`Param`]) passed in the same order at
/// every step; the state (`exp_avg`, `exp_avg_sq`) is kept by that position, and names appear
/// only in [`AdamW::new`] (which parameters decay) and in [`AdamW::save`] / [`AdamW::load`].
#[derive(Debug)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken so far.
    pub step: u64,
    /// Parameter names, in step order (for decay and the state file).
    names: Vec<String>,
    /// Weight decay of each parameter.
    decay: Vec<f64>,
    /// `(exp_avg, exp_avg_sq)` of each parameter, from its first update on.
    state: Vec<Option<(Tensor, Tensor)>>,
}

impl AdamW {
    /// A fresh optimizer (no state until the first step) for the parameters named `names`, in
    /// the order [`AdamW::step`] will receive them.
    pub fn new<S: AsRef<str>>(config: AdamWConfig, names: &[S]) -> AdamW {
        let names: Vec<String> = names.iter().map(|n| n.as_ref().to_string()).collect();
        let decay = names
            .iter()
            .map(|n| if config.no_decay.iter().any(|s| n.contains(s.as_str())) { 0.0 } else { config.weight_decay })
            .collect();
        let state = vec![None; names.len()];
        AdamW { config, step: 0, names, decay, state }
    }

    /// The parameter names this optimizer was built for.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// One update, at learning rate `lr`, of every parameter of `params` that holds a gradient
    /// (the same parameters, in the same order, at every step). The new values replace
    /// [`Param::value`]; on the CPU an f32 parameter whose buffer is held nowhere else is
    /// updated in its own buffer.
    pub fn step(&mut self, params: &mut [&mut Param], lr: f64) -> Result<()> {
        if params.len() != self.names.len() {
            return Err(OptimError::Param {
                name: format!("{} parameters", params.len()),
                detail: format!("the optimizer was built for {}", self.names.len()),
            });
        }
        // Every check before anything changes: a refused step leaves parameters and state as
        // they were.
        for (i, p) in params.iter().enumerate() {
            let shape = p.value.shape();
            let bad = |what: &str, got: &[usize]| OptimError::Param {
                name: self.names[i].clone(),
                detail: format!("{what} shape {got:?} for parameter {shape:?}"),
            };
            if let Some(g) = &p.grad
                && g.shape() != shape
            {
                return Err(bad("gradient", g.shape()));
            }
            if let Some((m, _)) = &self.state[i]
                && m.shape() != shape
            {
                return Err(bad("optimizer state (parameters passed in another order?)", m.shape()));
            }
        }
        self.step += 1;
        let t = self.step as i32;
        let c = self.config.clone();
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        // CUDA parameters, per device: (index, m, v, gradient, weight decay).
        #[cfg(feature = "cuda")]
        #[allow(clippy::type_complexity)]
        let mut fused: Vec<(
            std::sync::Arc<tensor::cuda::CudaBackend>,
            Vec<(usize, Tensor, Tensor, Tensor, f32)>,
        )> = Vec::new();
        for (i, p) in params.iter_mut().enumerate() {
            let Some(g) = p.grad.clone() else { continue };
            let wd = self.decay[i];
            let dev = p.value.device().clone();
            let (m, v) = match self.state[i].take() {
                Some(mv) => mv,
                None => (
                    Tensor::zeros(p.value.shape(), DType::F32, &dev)?,
                    Tensor::zeros(p.value.shape(), DType::F32, &dev)?,
                ),
            };
            #[cfg(feature = "cuda")]
            if let (Device::Cuda(be), DType::F32 | DType::BF16) = (&dev, p.value.dtype()) {
                // Updated together after the loop (one fused launch per dtype pair).
                let g = match g.dtype() {
                    DType::F32 | DType::BF16 => g.to_device(&dev)?,
                    _ => g.to_dtype(DType::F32)?.to_device(&dev)?,
                };
                let k = fused.iter().position(|(b, _)| std::sync::Arc::ptr_eq(b, be)).unwrap_or_else(|| {
                    fused.push((be.clone(), Vec::new()));
                    fused.len() - 1
                });
                fused[k].1.push((i, m, v, g, wd as f32));
                continue;
            }
            // Gradients are read in place; the moments (held only here) and an f32 parameter
            // held nowhere else are updated in their own buffers.
            let g_copy;
            let gv = match g.cpu_slice::<f32>() {
                Some(s) => s,
                None => {
                    g_copy = g.to_vec::<f32>()?;
                    &g_copy
                }
            };
            let shape = p.value.shape().clone();
            let dtype = p.value.dtype();
            let old = std::mem::replace(&mut p.value, Tensor::zeros(&[0], DType::F32, &tensor::Device::Cpu)?);
            let mut pv = old.into_vec::<f32>()?;
            let mut mv = m.into_vec::<f32>()?;
            let mut vv = v.into_vec::<f32>()?;
            let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
            let (lr32, wd32, bc1, bc2) = (lr as f32, wd as f32, bc1 as f32, bc2 as f32);
            // Elementwise, so chunks update in parallel with the same result as one loop.
            const CHUNK: usize = 1 << 14;
            pv.par_chunks_mut(CHUNK)
                .zip(mv.par_chunks_mut(CHUNK))
                .zip(vv.par_chunks_mut(CHUNK))
                .zip(gv.par_chunks(CHUNK))
                .for_each(|(((pc, mc), vc), gc)| {
                    for i in 0..pc.len() {
                        mc[i] = b1 * mc[i] + (1.0 - b1) * gc[i];
                        vc[i] = b2 * vc[i] + (1.0 - b2) * gc[i] * gc[i];
                        let mut x = pc[i] * (1.0 - lr32 * wd32);
                        x -= lr32 * (mc[i] / bc1) / ((vc[i] / bc2).sqrt() + eps);
                        pc[i] = x;
                    }
                });
            p.value = Tensor::from_vec(pv, &shape)?.to_dtype(dtype)?.to_device(&dev)?;
            self.state[i] =
                Some((Tensor::from_vec(mv, &shape)?.to_device(&dev)?, Tensor::from_vec(vv, &shape)?.to_device(&dev)?));
        }
        // Out of place on the GPU: other holders of an old parameter tensor keep its value
        // (tensors are values); bf16 weights are updated in f32 and rounded back.
        #[cfg(feature = "cuda")]
        for (be, group) in fused {
            let newp = {
                let items: Vec<tensor::cuda::AdamWItem<'_>> = group
                    .iter()
                    .map(|(i, m, v, g, wd)| tensor::cuda::AdamWItem { p: &params[*i].value, m, v, g, wd: *wd })
                    .collect();
                let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
                be.adamw_multi_out(&items, lr as f32, (b1, b2), c.eps as f32, (bc1 as f32, bc2 as f32), 1.0)?
            };
            for ((i, m, v, _, _), p) in group.into_iter().zip(newp) {
                params[i].value = p;
                self.state[i] = Some((m, v));
            }
        }
        Ok(())
    }

    /// Write the state (step and both moments of every updated parameter, under its name) to
    /// `path` as safetensors, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (n, st) in self.names.iter().zip(&self.state) {
            let Some((m, v)) = st else { continue };
            for (prefix, t) in [("exp_avg", m), ("exp_avg_sq", v)] {
                let bytes: Vec<u8> = t.to_vec::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect();
                bufs.push((format!("{prefix}.{n}"), t.shape().clone(), bytes));
            }
        }
        let views: Vec<(String, TensorView<'_>)> = bufs
            .iter()
            .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b).map_err(|e| fmt_err(path, e))?)))
            .collect::<Result<_>>()?;
        let meta = HashMap::from([
            ("format".to_string(), "r1-adamw".to_string()),
            ("step".to_string(), self.step.to_string()),
            ("config".to_string(), format!("{:?}", self.config)),
        ]);
        let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| fmt_err(path, e))?;
        atomic_write(path, &bytes)
    }

    /// Load state written by [`AdamW::save`] for `params` (the same parameters, in the same
    /// order, as [`AdamW::new`]'s names); moments go to each parameter's device. A moment for an
    /// unknown name, of the wrong shape, or without its pair is an error.
    pub fn load(&mut self, path: &Path, params: &[&Param]) -> Result<()> {
        let err = |detail: String| OptimError::Format { path: path.display().to_string(), detail };
        if params.len() != self.names.len() {
            return Err(err(format!("{} parameters for an optimizer of {}", params.len(), self.names.len())));
        }
        let bytes =
            std::fs::read(path).map_err(|source| OptimError::Io { path: path.display().to_string(), source })?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| fmt_err(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| fmt_err(path, e))?;
        let m = meta.metadata().as_ref();
        let step = m
            .and_then(|m| m.get("step"))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| err("metadata field \"step\" missing or not an integer".into()))?;
        let index: HashMap<&str, usize> = self.names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let (mut ea, mut eas): (Vec<Option<Tensor>>, Vec<Option<Tensor>>) =
            (vec![None; params.len()], vec![None; params.len()]);
        for (full, view) in st.tensors() {
            let (slot, name) = if let Some(n) = full.strip_prefix("exp_avg_sq.") {
                (&mut eas, n)
            } else if let Some(n) = full.strip_prefix("exp_avg.") {
                (&mut ea, n)
            } else {
                return Err(err(format!("unexpected tensor {full:?}")));
            };
            let &i = index.get(name).ok_or_else(|| err(format!("state for unknown parameter {name:?}")))?;
            let p = &params[i].value;
            if view.dtype() != Dtype::F32 || view.shape() != p.shape().as_slice() {
                return Err(err(format!(
                    "tensor {full:?}: {:?} {:?}, expected F32 {:?}",
                    view.dtype(),
                    view.shape(),
                    p.shape()
                )));
            }
            let v: Vec<f32> =
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            slot[i] = Some(Tensor::from_vec(v, p.shape())?.to_device(p.device())?);
        }
        let mut state = Vec::with_capacity(params.len());
        for (i, (m, v)) in ea.into_iter().zip(eas).enumerate() {
            state.push(match (m, v) {
                (Some(m), Some(v)) => Some((m, v)),
                (None, None) => None,
                _ => return Err(err(format!("exp_avg / exp_avg_sq unpaired for {:?}", self.names[i]))),
            });
        }
        self.step = step;
        self.state = state;
        Ok(())
    }
}

fn fmt_err(path: &Path, e: impl std::fmt::Display) -> OptimError {
    OptimError::Format { path: path.display().to_string(), detail: e.to_string() }
}
