//! AdamW against an independent scalar transcription of `torch.optim.AdamW`, on every device;
//! clipping, schedules, accumulation, and resume-from-state equivalence.

use optim::{AdamW, AdamWConfig, Schedule, clip_grad_norm, grad_norm};
use proptest::prelude::*;
use tensor::{DType, Device, Param, Tensor};

/// Set each parameter's gradient to `grads[i]` and take one step.
fn step_with(opt: &mut AdamW, params: &mut [Param], grads: &[Tensor], lr: f64) {
    for (p, g) in params.iter_mut().zip(grads) {
        p.zero_grad();
        p.accumulate_grad(g).unwrap();
    }
    let mut refs: Vec<&mut Param> = params.iter_mut().collect();
    opt.step(&mut refs, lr).unwrap();
}

/// torch.optim.AdamW for one scalar, in f64.
fn torch_adamw(p0: f64, grads: &[f64], lr: f64, b1: f64, b2: f64, eps: f64, wd: f64) -> f64 {
    let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
    for (t, &g) in grads.iter().enumerate() {
        let t = (t + 1) as i32;
        p *= 1.0 - lr * wd;
        m = b1 * m + (1.0 - b1) * g;
        v = b2 * v + (1.0 - b2) * g * g;
        let step_size = lr / (1.0 - b1.powi(t));
        let denom = v.sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
        p -= step_size * m / denom;
    }
    p
}

#[test]
fn adamw_matches_torch_formula_on_every_device() {
    for dev in Device::all_available() {
        let n = 300;
        let p0 = Tensor::randn(&[n], 1.0, 1, DType::F32, &dev).unwrap();
        let names = ["layers.0.w", "layers.0.input_layernorm.weight"];
        let mut params = vec![Param::new(p0.clone()), Param::new(p0.clone())];
        let cfg = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
        let mut opt = AdamW::new(cfg.clone(), &names);
        let steps = 5;
        let gs: Vec<Tensor> = (0..steps).map(|s| Tensor::randn(&[n], 0.5, 10 + s, DType::F32, &dev).unwrap()).collect();
        for g in &gs {
            step_with(&mut opt, &mut params, &[g.clone(), g.clone()], 1e-2);
        }
        let p0v = p0.to_vec_f64().unwrap();
        let gv: Vec<Vec<f64>> = gs.iter().map(|g| g.to_vec_f64().unwrap()).collect();
        for (k, (name, wd)) in [("layers.0.w", 0.1), ("layers.0.input_layernorm.weight", 0.0)].into_iter().enumerate() {
            let got = params[k].value.to_vec_f64().unwrap();
            for i in 0..n {
                let hist: Vec<f64> = gv.iter().map(|g| g[i]).collect();
                let want = torch_adamw(p0v[i], &hist, 1e-2, 0.9, 0.999, 1e-8, wd);
                assert!((got[i] - want).abs() < 2e-6, "{dev:?} {name}[{i}]: {} vs {want}", got[i]);
            }
        }
    }
}

/// On a GPU all parameters are updated by one fused launch per parameter / gradient dtype pair
/// (chunked over every tensor): after three steps each parameter equals the CPU update of the
/// same values — for an empty tensor, one element, tensors spanning several chunks, and every
/// dtype pair (bf16 parameters within one bf16 rounding step, f32 within f32 rounding).
#[test]
fn adamw_fused_gpu_matches_cpu() {
    use DType::{BF16, F32};
    let specs =
        [(0, F32, F32), (1, BF16, F32), (40_000, F32, BF16), (33_000, BF16, BF16), (777, F32, F32), (5, BF16, F32)];
    for dev in Device::all_available().into_iter().filter(|d| !d.is_cpu()) {
        let cfg = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
        let names: Vec<String> = (0..specs.len()).map(|i| format!("layers.{i}.w")).collect();
        let (mut on_cpu, mut on_gpu) = (Vec::new(), Vec::new());
        for (i, &(n, pd, _)) in specs.iter().enumerate() {
            let p = Tensor::randn(&[n], 1.0, 40 + i as u64, DType::F32, &Device::Cpu).unwrap().to_dtype(pd).unwrap();
            on_cpu.push(Param::new(p.clone()));
            on_gpu.push(Param::new(p.to_device(&dev).unwrap()));
        }
        let (mut o_cpu, mut o_gpu) = (AdamW::new(cfg.clone(), &names), AdamW::new(cfg.clone(), &names));
        for step in 0..3u64 {
            let (mut g_cpu, mut g_gpu) = (Vec::new(), Vec::new());
            for (i, &(n, _, gd)) in specs.iter().enumerate() {
                let g = Tensor::randn(&[n], 0.5, 100 * step + i as u64, DType::F32, &Device::Cpu)
                    .unwrap()
                    .to_dtype(gd)
                    .unwrap();
                g_gpu.push(g.to_device(&dev).unwrap());
                g_cpu.push(g);
            }
            step_with(&mut o_cpu, &mut on_cpu, &g_cpu, 1e-2);
            step_with(&mut o_gpu, &mut on_gpu, &g_gpu, 1e-2);
        }
        for (i, &(n, pd, gd)) in specs.iter().enumerate() {
            let name = &names[i];
            let (want, got) = (&on_cpu[i].value, &on_gpu[i].value);
            assert_eq!((got.dtype(), got.shape()), (pd, &vec![n]), "{name} keeps dtype and shape");
            let (w, g) = (want.to_vec_f64().unwrap(), got.to_vec_f64().unwrap());
            // One step of the stored dtype's rounding (a bf16 ulp is at most 2^-7 of the value; f32
            // a few ulps) plus 1e-7 for the update's own rounding (steps of ~lr = 1e-2 whose
            // arithmetic may be contracted differently on the two devices). A skipped or
            // misplaced element would be off by ~lr.
            let rel = if pd == BF16 { 1.0 / 128.0 } else { 1e-6 };
            for j in 0..n {
                assert!(
                    (w[j] - g[j]).abs() <= rel * w[j].abs() + 1e-7,
                    "{dev:?} {name} ({pd:?}/{gd:?})[{j}]: {} vs {}",
                    g[j],
                    w[j]
                );
            }
        }
    }
}

#[test]
fn adamw_minimises_a_quadratic() {
    let target = Tensor::randn(&[50], 2.0, 3, DType::F32, &Device::Cpu).unwrap();
    let mut params = vec![Param::new(Tensor::zeros(&[50], DType::F32, &Device::Cpu).unwrap())];
    let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.0, ..Default::default() }, &["x"]);
    let sched = Schedule::WarmupCosine { peak: 0.1, warmup: 10, total: 400, min_ratio: 0.01 };
    let loss = |p: &[Param]| {
        let x = p[0].value.to_vec_f64().unwrap();
        let t = target.to_vec_f64().unwrap();
        x.iter().zip(&t).map(|(a, b)| (a - b) * (a - b)).sum::<f64>()
    };
    let l0 = loss(&params);
    for s in 0..400 {
        let x = &params[0].value;
        let g = tensor::ops::elementwise::scale(&tensor::ops::elementwise::sub(x, &target).unwrap(), 2.0).unwrap();
        step_with(&mut opt, &mut params, &[g], sched.lr(s));
    }
    assert!(loss(&params) < 1e-4 * l0, "loss {} from {l0}", loss(&params));
}

#[test]
fn clipping_scales_to_max_norm() {
    let param = |g: Vec<f32>| {
        let n = g.len();
        let mut p = Param::new(Tensor::zeros(&[n], DType::F32, &Device::Cpu).unwrap());
        p.accumulate_grad(&Tensor::from_vec(g, &[n]).unwrap()).unwrap();
        p
    };
    // A parameter without a gradient counts 0 and stays without one.
    let (mut a, mut b, mut c) =
        (param(vec![3.0, 0.0]), param(vec![4.0]), Param::new(Tensor::zeros(&[2], DType::F32, &Device::Cpu).unwrap()));
    let mut ps = [&mut a, &mut b, &mut c];
    let n = clip_grad_norm(&mut ps, 1.0).unwrap();
    assert!((n - 5.0).abs() < 1e-6);
    assert!((grad_norm(&ps).unwrap() - 1.0).abs() < 1e-5);
    assert_eq!(ps[0].grad.as_ref().unwrap().to_vec::<f32>().unwrap()[0], (3.0 / (5.0 + 1e-6)) as f32);
    let n2 = clip_grad_norm(&mut ps, 10.0).unwrap();
    assert!((grad_norm(&ps).unwrap() - n2).abs() < 1e-9, "no clipping under the limit");
    assert!(ps[2].grad.is_none());
}

#[test]
fn accumulation_sums_and_rejects_shape_change() {
    let mut g = Param::new(Tensor::zeros(&[2], DType::F32, &Device::Cpu).unwrap());
    g.accumulate_grad(&Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap()).unwrap();
    g.accumulate_grad(&Tensor::from_vec(vec![0.5f32, -1.0], &[2]).unwrap()).unwrap();
    assert_eq!(g.grad.as_ref().unwrap().to_vec::<f32>().unwrap(), vec![1.5, 1.0]);
    let e = g.accumulate_grad(&Tensor::from_vec(vec![1.0f32], &[1]).unwrap()).unwrap_err().to_string();
    assert!(e.contains("[1]") && e.contains("[2]"), "{e}");
    g.zero_grad();
    assert!(g.grad.is_none());
}

proptest! {
    /// Property: the warmup-cosine schedule rises linearly to the peak, then never increases,
    /// and ends at peak·min_ratio.
    #[test]
    fn schedule_shape(peak in 1e-5f64..1.0, warmup in 0usize..50, extra in 1usize..500, min_ratio in 0.0f64..0.5) {
        let total = warmup + extra;
        let s = Schedule::WarmupCosine { peak, warmup, total, min_ratio };
        if warmup > 0 {
            prop_assert!((s.lr(warmup - 1) - peak).abs() < 1e-12 * peak);
        }
        for t in warmup.max(1)..total + 5 {
            prop_assert!(s.lr(t) <= s.lr(t - 1) + 1e-15);
        }
        prop_assert!((s.lr(total) - peak * min_ratio).abs() < 1e-12);
    }
}

#[test]
fn resume_from_saved_state_is_exact() {
    let dir = std::env::temp_dir().join(format!("optim-test-{}", std::process::id()));
    let path = dir.join("optimizer.safetensors");
    let grads_at = |s: u64| [Tensor::randn(&[64], 1.0, 100 + s, DType::F32, &Device::Cpu).unwrap()];
    let init = || vec![Param::new(Tensor::randn(&[64], 1.0, 7, DType::F32, &Device::Cpu).unwrap())];
    let new = || AdamW::new(AdamWConfig::default(), &["w"]);
    // Uninterrupted: 6 steps.
    let mut p1 = init();
    let mut o1 = new();
    for s in 0..6 {
        step_with(&mut o1, &mut p1, &grads_at(s), 1e-2);
    }
    // Interrupted after 3: save, load into a fresh optimizer, continue.
    let mut p2 = init();
    let mut o2 = new();
    for s in 0..3 {
        step_with(&mut o2, &mut p2, &grads_at(s), 1e-2);
    }
    o2.save(&path).unwrap();
    let mut o3 = new();
    o3.load(&path, &[&p2[0]]).unwrap();
    assert_eq!(o3.step, 3);
    for s in 3..6 {
        step_with(&mut o3, &mut p2, &grads_at(s), 1e-2);
    }
    assert_eq!(p1[0].value.to_vec::<f32>().unwrap(), p2[0].value.to_vec::<f32>().unwrap());
    // A state file for other parameters is refused with the file and tensor named.
    let other = Param::new(Tensor::zeros(&[3], DType::F32, &Device::Cpu).unwrap());
    let e = new().load(&path, &[&other]).unwrap_err().to_string();
    assert!(e.contains("optimizer.safetensors") && e.contains("exp_avg"), "{e}");
    let e = AdamW::new(AdamWConfig::default(), &["v"]).load(&path, &[&p2[0]]).unwrap_err().to_string();
    assert!(e.contains("unknown parameter \"w\""), "{e}");
    std::fs::write(&path, b"not a safetensors file").unwrap();
    let e = new().load(&path, &[&p2[0]]).unwrap_err().to_string();
    assert!(e.contains("optimizer.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// bf16 weights (f32 moments): each step updates in f32 and rounds the weight back to bf16, on
/// every device (the CUDA path runs the fused kernel on an f32 copy). Checked against the torch
/// formula with the same per-step rounding, to one bf16 rounding step.
#[test]
fn adamw_bf16_weights_on_every_device() {
    for dev in Device::all_available() {
        let n = 200;
        let p0 = Tensor::randn(&[n], 1.0, 4, DType::F32, &dev).unwrap().to_dtype(DType::BF16).unwrap();
        let mut params = vec![Param::new(p0.clone())];
        let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() }, &["layers.0.w"]);
        let gs: Vec<Tensor> = (0..4).map(|s| Tensor::randn(&[n], 0.5, 20 + s, DType::F32, &dev).unwrap()).collect();
        for g in &gs {
            step_with(&mut opt, &mut params, &[g.to_dtype(DType::BF16).unwrap()], 1e-2);
        }
        let got = &params[0].value;
        assert_eq!(got.dtype(), DType::BF16, "{dev:?}: weights stay bf16");
        let got = got.to_vec_f64().unwrap();
        let p0v = p0.to_vec_f64().unwrap();
        let gv: Vec<Vec<f64>> = gs.iter().map(|g| g.to_dtype(DType::BF16).unwrap().to_vec_f64().unwrap()).collect();
        for i in 0..n {
            let (mut p, mut m, mut v) = (p0v[i], 0.0, 0.0);
            for (t, g) in gv.iter().map(|g| g[i]).enumerate() {
                let t = t as i32 + 1;
                p *= 1.0 - 1e-2 * 0.1;
                m = 0.9 * m + 0.1 * g;
                v = 0.999 * v + 0.001 * g * g;
                p -= 1e-2 / (1.0 - 0.9f64.powi(t)) * m / (v.sqrt() / (1.0 - 0.999f64.powi(t)).sqrt() + 1e-8);
                p = half::bf16::from_f64(p).to_f64();
            }
            assert!((got[i] - p).abs() <= p.abs() / 128.0 + 1e-6, "{dev:?} w[{i}]: {} vs {p}", got[i]);
        }
    }
}
