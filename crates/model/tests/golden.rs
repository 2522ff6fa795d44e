//! Golden state in the llm.c manner against PyTorch + transformers 5.17 (float64 model; its router
//! and loss run in float32): one training step's loss and every parameter's gradient, then a
//! 10-step AdamW loss trajectory (`tests/fixtures/make_golden.py`).

use model::checkpoint::load_tensors;
use model::{DeepseekV3, DeepseekV3Config, lm_loss};
use optim::{AdamW, AdamWConfig, Params};
use safetensors::SafeTensors;
use tensor::ops::attention::AttnMask;
use tensor::{DType, Device};

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let n: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    n / b.iter().map(|y| y * y).sum::<f64>().sqrt().max(1e-30)
}

#[test]
fn golden_step_and_trajectory() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    let cfg = DeepseekV3Config::from_json(&meta["config"], "golden").unwrap();
    // Reuse the checkpoint reader on a directory holding just this file.
    let dir = std::env::temp_dir().join(format!("r1-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&path, dir.join("model.safetensors")).unwrap();
    let all = load_tensors(&dir, DType::F64, &Device::Cpu).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let get = |n: &str| all.get(n).unwrap_or_else(|| panic!("fixture lacks {n}")).clone();
    let mut params = Params::default();
    for (n, t) in all.iter() {
        if !n.starts_with("grad.") && !n.starts_with("__") {
            params.insert(n, t.clone()).unwrap();
        }
    }
    let ids_t = get("__input_ids");
    let (b, s) = (ids_t.dim(0), ids_t.dim(1));
    let ids: Vec<u32> = ids_t.to_vec_f64().unwrap().iter().map(|&v| v as u32).collect();
    // Next-token targets: position t predicts ids[t + 1]; the last position is ignored.
    let targets: Vec<i64> = (0..b * s).map(|i| if i % s == s - 1 { -100 } else { ids[i + 1] as i64 }).collect();
    let pos: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();
    let want_losses = get("__losses").to_vec_f64().unwrap();

    // Step 0: the loss and every gradient.
    let mut m = DeepseekV3::load(cfg.clone(), &params).unwrap();
    let (logits, saved) = m.forward(&ids, b, s, &pos, &AttnMask::causal()).unwrap();
    let (loss, dl) = lm_loss(&logits, &targets, -100).unwrap();
    assert!((loss - want_losses[0]).abs() <= 1e-6 * want_losses[0], "loss {loss} vs {}", want_losses[0]);
    m.backward(&saved, &dl).unwrap();
    let grads: std::collections::HashMap<String, Option<tensor::Tensor>> =
        m.params().into_iter().map(|(n, p)| (n, p.grad.clone())).collect();
    let mut worst = (0.0, String::new());
    let mut n_checked = 0;
    for (n, _) in params.iter() {
        if n.ends_with("e_score_correction_bias") {
            continue;
        }
        let want = get(&format!("grad.{n}")).to_vec_f64().unwrap();
        let got = match grads.get(n).unwrap_or_else(|| panic!("the model has no parameter {n}")) {
            Some(g) => g.to_vec_f64().unwrap(),
            None => vec![0.0; want.len()],
        };
        let e = if want.iter().all(|&w| w == 0.0) {
            got.iter().map(|g| g.abs()).fold(0.0, f64::max)
        } else {
            rel(&got, &want)
        };
        if e > worst.0 {
            worst = (e, n.to_string());
        }
        n_checked += 1;
        assert!(e <= 1e-5, "gradient of {n}: rel err {e:e}");
    }
    eprintln!(
        "step-0 loss {loss:.9} (torch {:.9}); {n_checked} gradients, worst rel err {:e} ({})",
        want_losses[0], worst.0, worst.1
    );

    // Ten AdamW steps (lr 1e-3, weight decay 0, as torch.optim.AdamW in the fixture).
    let mut m = DeepseekV3::load(cfg.clone(), &params).unwrap();
    let names: Vec<String> = m.params().into_iter().map(|(n, _)| n).collect();
    // Every fixture tensor is a trained parameter or a router bias (nothing loaded is left out).
    let biases = m.state_dict().iter().filter(|(n, _)| n.ends_with("e_score_correction_bias")).count();
    assert_eq!(names.len() + biases, params.len(), "model parameters + biases vs fixture tensors");
    let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() }, &names);
    let mut losses = vec![];
    for _ in 0..10 {
        let (logits, saved) = m.forward(&ids, b, s, &pos, &AttnMask::causal()).unwrap();
        let (loss, dl) = lm_loss(&logits, &targets, -100).unwrap();
        losses.push(loss);
        m.zero_grad();
        m.backward(&saved, &dl).unwrap();
        drop(saved);
        opt.step(&mut m.params_mut(), 1e-3).unwrap();
    }
    eprintln!("trajectory ours {losses:.6?}\n           torch {want_losses:.6?}");
    for (i, (a, w)) in losses.iter().zip(&want_losses).enumerate() {
        assert!((a - w).abs() <= 1e-5 * w, "step {i}: loss {a} vs torch {w}");
    }
}
