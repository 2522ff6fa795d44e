//! AdamW (Loshchilov & Hutter): decoupled weight decay and bias-corrected moments, exactly as
//! `torch.optim.AdamW`. State (`exp_avg`, `exp_avg_sq`) is f32 beside each parameter.

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
use tensor::{DType, Device, Tensor};

use crate::io::atomic_write;
use crate::{Grads, OptimError, Params, Result};

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

/// The optimizer and its state.
#[derive(Debug)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken so far.
    pub step: u64,
    exp_avg: HashMap<String, Tensor>,
    exp_avg_sq: HashMap<String, Tensor>,
}

impl AdamW {
    /// A fresh optimizer (no state until the first step).
    pub fn new(config: AdamWConfig) -> AdamW {
        AdamW { config, step: 0, exp_avg: HashMap::new(), exp_avg_sq: HashMap::new() }
    }

    fn decay_for(&self, name: &str) -> f64 {
        if self.config.no_decay.iter().any(|s| name.contains(s.as_str())) { 0.0 } else { self.config.weight_decay }
    }

    /// One update of every parameter that has a gradient, at learning rate `lr`.
    pub fn step(&mut self, params: &mut Params, grads: &Grads, lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let c = self.config.clone();
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        // CUDA parameters, per device: (name, parameter, m, v, gradient, weight decay).
        #[cfg(feature = "cuda")]
        #[allow(clippy::type_complexity)]
        let mut fused: Vec<(
            std::sync::Arc<tensor::cuda::CudaBackend>,
            Vec<(String, Tensor, Tensor, Tensor, Tensor, f32)>,
        )> = Vec::new();
        for name in params.names().to_vec() {
            let Some(g) = grads.get(&name) else { continue };
            let p = params.get(&name).expect("listed").clone();
            if g.shape() != p.shape() {
                return Err(OptimError::Param {
                    name,
                    detail: format!("gradient shape {:?} for parameter {:?}", g.shape(), p.shape()),
                });
            }
            let wd = self.decay_for(&name);
            let dev = p.device().clone();
            let m = match self.exp_avg.remove(&name) {
                Some(m) => m,
                None => Tensor::zeros(p.shape(), DType::F32, &dev)?,
            };
            let v = match self.exp_avg_sq.remove(&name) {
                Some(v) => v,
                None => Tensor::zeros(p.shape(), DType::F32, &dev)?,
            };
            #[cfg(feature = "cuda")]
            if let (Device::Cuda(be), DType::F32 | DType::BF16) = (&dev, p.dtype()) {
                // Updated together after the loop (one fused launch per dtype pair).
                let g = match g.dtype() {
                    DType::F32 | DType::BF16 => g.to_device(&dev)?,
                    _ => g.to_dtype(DType::F32)?.to_device(&dev)?,
                };
                let i = fused.iter().position(|(b, _)| std::sync::Arc::ptr_eq(b, be)).unwrap_or_else(|| {
                    fused.push((be.clone(), Vec::new()));
                    fused.len() - 1
                });
                fused[i].1.push((name, p, m, v, g, wd as f32));
                continue;
            }
            // f32 host parameters and gradients are read in place; the moments (held only here)
            // are updated in their own buffers; the new parameter goes to a fresh buffer.
            let (p_copy, g_copy);
            let pv = match p.cpu_slice::<f32>() {
                Some(s) => s,
                None => {
                    p_copy = p.to_vec::<f32>()?;
                    &p_copy
                }
            };
            let gv = match g.cpu_slice::<f32>() {
                Some(s) => s,
                None => {
                    g_copy = g.to_vec::<f32>()?;
                    &g_copy
                }
            };
            let mut mv = m.into_vec::<f32>()?;
            let mut vv = v.into_vec::<f32>()?;
            let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
            let (lr32, wd32, bc1, bc2) = (lr as f32, wd as f32, bc1 as f32, bc2 as f32);
            // Elementwise, so chunks update in parallel with the same result as one loop.
            const CHUNK: usize = 1 << 14;
            let mut out: Vec<f32> = Vec::with_capacity(pv.len());
            out.spare_capacity_mut()[..pv.len()]
                .par_chunks_mut(CHUNK)
                .zip(pv.par_chunks(CHUNK))
                .zip(mv.par_chunks_mut(CHUNK))
                .zip(vv.par_chunks_mut(CHUNK))
                .zip(gv.par_chunks(CHUNK))
                .for_each(|((((oc, pc), mc), vc), gc)| {
                    for i in 0..oc.len() {
                        mc[i] = b1 * mc[i] + (1.0 - b1) * gc[i];
                        vc[i] = b2 * vc[i] + (1.0 - b2) * gc[i] * gc[i];
                        let mut x = pc[i] * (1.0 - lr32 * wd32);
                        x -= lr32 * (mc[i] / bc1) / ((vc[i] / bc2).sqrt() + eps);
                        oc[i].write(x);
                    }
                });
            // SAFETY: the chunks cover all of `out`'s first pv.len() slots, each written once.
            unsafe { out.set_len(pv.len()) };
            let pv = out;
            let shape = p.shape().clone();
            let newp = Tensor::from_vec(pv, &shape)?.to_dtype(p.dtype())?.to_device(&dev)?;
            params.set(&name, newp)?;
            self.exp_avg.insert(name.clone(), Tensor::from_vec(mv, &shape)?.to_device(&dev)?);
            self.exp_avg_sq.insert(name, Tensor::from_vec(vv, &shape)?.to_device(&dev)?);
        }
        // Out of place on the GPU: other holders of an old parameter tensor keep its value
        // (tensors are values); bf16 weights are updated in f32 and rounded back.
        #[cfg(feature = "cuda")]
        for (be, group) in fused {
            let items: Vec<tensor::cuda::AdamWItem<'_>> =
                group.iter().map(|(_, p, m, v, g, wd)| tensor::cuda::AdamWItem { p, m, v, g, wd: *wd }).collect();
            let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
            let newp = be.adamw_multi_out(&items, lr as f32, (b1, b2), c.eps as f32, (bc1 as f32, bc2 as f32), 1.0)?;
            drop(items);
            for ((name, _, m, v, _, _), p) in group.into_iter().zip(newp) {
                params.set(&name, p)?;
                self.exp_avg.insert(name.clone(), m);
                self.exp_avg_sq.insert(name, v);
            }
        }
        Ok(())
    }

    /// Write the state (step and both moments of every parameter) to `path` as safetensors,
    /// atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut names: Vec<&String> = self.exp_avg.keys().collect();
        names.sort();
        for n in names {
            for (prefix, map) in [("exp_avg", &self.exp_avg), ("exp_avg_sq", &self.exp_avg_sq)] {
                let t = &map[n];
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

    /// Load state written by [`AdamW::save`]; moments go to `device`. Every moment must match a
    /// parameter of `params` in shape.
    pub fn load(&mut self, path: &Path, params: &Params, device: &Device) -> Result<()> {
        let bytes =
            std::fs::read(path).map_err(|source| OptimError::Io { path: path.display().to_string(), source })?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| fmt_err(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| fmt_err(path, e))?;
        let m = meta.metadata().as_ref();
        let step =
            m.and_then(|m| m.get("step")).and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| OptimError::Format {
                path: path.display().to_string(),
                detail: "metadata field \"step\" missing or not an integer".into(),
            })?;
        let (mut ea, mut eas) = (HashMap::new(), HashMap::new());
        for (full, view) in st.tensors() {
            let (map, name) = if let Some(n) = full.strip_prefix("exp_avg_sq.") {
                (&mut eas, n)
            } else if let Some(n) = full.strip_prefix("exp_avg.") {
                (&mut ea, n)
            } else {
                return Err(OptimError::Format {
                    path: path.display().to_string(),
                    detail: format!("unexpected tensor {full:?}"),
                });
            };
            let p = params.get(name).ok_or_else(|| OptimError::Format {
                path: path.display().to_string(),
                detail: format!("state for unknown parameter {name:?}"),
            })?;
            if view.dtype() != Dtype::F32 || view.shape() != p.shape().as_slice() {
                return Err(OptimError::Format {
                    path: path.display().to_string(),
                    detail: format!(
                        "tensor {full:?}: {:?} {:?}, expected F32 {:?}",
                        view.dtype(),
                        view.shape(),
                        p.shape()
                    ),
                });
            }
            let v: Vec<f32> =
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            map.insert(name.to_string(), Tensor::from_vec(v, p.shape())?.to_device(device)?);
        }
        if let Some(n) = ea.keys().find(|n| !eas.contains_key(*n)) {
            return Err(OptimError::Format {
                path: path.display().to_string(),
                detail: format!("exp_avg_sq missing for {n:?}"),
            });
        }
        self.step = step;
        self.exp_avg = ea;
        self.exp_avg_sq = eas;
        Ok(())
    }
}

fn fmt_err(path: &Path, e: impl std::fmt::Display) -> OptimError {
    OptimError::Format { path: path.display().to_string(), detail: e.to_string() }
}
