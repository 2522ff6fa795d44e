//! The LM trainer: packing equivalence, learning, balancing, MTP, checkpoints and resume.

use model::DeepseekV3Config;
use sft::checkpoint::{list_checkpoints, load_checkpoint};
use sft::trainer::IGNORE;
use sft::{LmBatch, LmTrainer, SftError, TrainConfig, init_scaled, latest_checkpoint, save_checkpoint};
use tensor::Device;

fn cfg(alpha: f64) -> DeepseekV3Config {
    DeepseekV3Config::from_json(
        &format!(
            r#"{{"vocab_size": 24, "hidden_size": 32, "intermediate_size": 64, "moe_intermediate_size": 16,
      "num_hidden_layers": 2, "num_attention_heads": 2, "n_shared_experts": 1, "n_routed_experts": 4,
      "routed_scaling_factor": 1.0, "kv_lora_rank": 16, "q_lora_rank": null, "qk_rope_head_dim": 8, "v_head_dim": 8,
      "qk_nope_head_dim": 8, "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
      "rope_theta": 10000.0, "max_position_embeddings": 64, "aux_loss_alpha": {alpha}}}"#
        ),
        "test",
    )
    .unwrap()
}

fn trainer(alpha: f64, tc: TrainConfig) -> LmTrainer {
    let c = cfg(alpha);
    LmTrainer::new(init_scaled(&c, 1, 0.3, 3, &Device::Cpu).unwrap(), tc).unwrap()
}

/// The loss stats and every parameter's gradient (by name) of `batch`.
fn loss_and_grads(t: &mut LmTrainer, b: &LmBatch) -> (sft::StepStats, Vec<(String, Option<tensor::Tensor>)>) {
    let (s, _) = t.loss_and_grads(b).unwrap();
    (s, t.model.params().into_iter().map(|(n, p)| (n, p.grad.clone())).collect())
}

/// The tensor a checkpoint would hold under `name` (parameters and MoE biases).
fn state(t: &LmTrainer, name: &str) -> Vec<f32> {
    t.model.state_dict().into_iter().find(|(n, _)| n == name).unwrap().1.to_vec::<f32>().unwrap()
}

/// Rows of documents → a batch (next-token targets inside each document).
fn batch(rows: &[Vec<Vec<u32>>]) -> LmBatch {
    let s = rows[0].iter().map(Vec::len).sum::<usize>();
    let mut b = LmBatch {
        ids: vec![],
        targets: vec![],
        positions: vec![],
        segment_ids: Some(vec![]),
        key_padding: None,
        b: rows.len(),
        s,
    };
    for row in rows {
        for (k, doc) in row.iter().enumerate() {
            for (i, &t) in doc.iter().enumerate() {
                b.ids.push(t);
                b.targets.push(doc.get(i + 1).map_or(IGNORE, |&n| n as i64));
                b.positions.push(i as u32);
                b.segment_ids.as_mut().unwrap().push(k as u32);
            }
        }
    }
    b
}

fn doc(seed: u32, n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (seed * 7 + i * 5 + i * i) % 24).collect()
}

#[test]
fn packed_documents_train_exactly_like_separate_rows() {
    // Property: packing two documents into one row with segment ids (attention, positions,
    // both the next-token and MTP targets, and the balance loss stay inside each document) gives
    // the loss and every gradient of the same two documents as separate rows.
    // The sequence-wise balance loss is on (α = 0.01): it too is computed per document.
    let mut t = trainer(1e-2, TrainConfig::default());
    let (a, b) = (doc(1, 9), doc(2, 9));
    let packed = batch(&[vec![a.clone(), b.clone()]]);
    let separate = batch(&[vec![a], vec![b]]);
    let (sp, gp) = loss_and_grads(&mut t, &packed);
    let (ss, gs) = loss_and_grads(&mut t, &separate);
    assert_eq!(sp.tokens, ss.tokens);
    assert!(ss.balance_loss > 0.0);
    assert!(
        (sp.balance_loss - ss.balance_loss).abs() < 1e-9 * ss.balance_loss,
        "{} vs {}",
        sp.balance_loss,
        ss.balance_loss
    );
    assert!((sp.loss - ss.loss).abs() < 1e-5 * ss.loss, "{} vs {}", sp.loss, ss.loss);
    assert!(ss.mtp_loss > 0.0);
    assert!((sp.mtp_loss - ss.mtp_loss).abs() < 1e-5 * ss.mtp_loss, "{} vs {}", sp.mtp_loss, ss.mtp_loss);
    let mut n = 0;
    for ((name, g), (_, gp)) in gs.iter().zip(&gp) {
        let (Some(g), Some(gp)) = (g, gp) else {
            assert!(g.is_none() && gp.is_none(), "{name}: a gradient in one layout only");
            continue;
        };
        let (x, y) = (gp.to_vec::<f32>().unwrap(), g.to_vec::<f32>().unwrap());
        let num: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
        let den: f32 = y.iter().map(|b| b * b).sum::<f32>().sqrt();
        assert!(num <= 1e-4 * den + 1e-7, "{name}: |Δ| {num} vs |g| {den}");
        n += 1;
    }
    assert!(n > 30, "{n} gradients compared");
}

/// Padding (hidden from attention, its own segment, ignored targets) changes nothing: the loss,
/// the balance loss (per document, padding excluded), the expert loads behind the bias update and
/// every gradient equal those of the same documents without padding.
#[test]
fn padding_counts_in_neither_the_balance_loss_nor_the_loads() {
    let mut t = trainer(1e-2, TrainConfig::default());
    let plain = batch(&[vec![doc(1, 9), doc(2, 7)]]);
    let mut padded = plain.clone();
    let pad = 6;
    padded.s += pad;
    padded.ids.extend(std::iter::repeat_n(0, pad));
    padded.targets.extend(std::iter::repeat_n(IGNORE, pad));
    padded.positions.extend(0..pad as u32);
    padded.segment_ids.as_mut().unwrap().extend(std::iter::repeat_n(99, pad));
    padded.key_padding = Some((0..padded.s).map(|i| i < plain.s).collect());
    let (a, la) = t.loss_and_grads(&plain).unwrap();
    let ga: Vec<_> = t.model.params().into_iter().map(|(n, p)| (n, p.grad.clone())).collect();
    let (b, lb) = t.loss_and_grads(&padded).unwrap();
    assert_eq!(la, lb, "expert loads");
    // f32 rounding of activations of different shapes (≈ 1e-7); counting the padding as a
    // document would move the balance loss by a third.
    assert!((a.loss - b.loss).abs() < 1e-6 * a.loss && (a.mtp_loss - b.mtp_loss).abs() < 1e-6 * a.mtp_loss);
    assert!(
        a.balance_loss > 0.0 && (a.balance_loss - b.balance_loss).abs() < 1e-6 * a.balance_loss,
        "{} vs {}",
        a.balance_loss,
        b.balance_loss
    );
    for ((name, g), (_, p)) in ga.iter().zip(t.model.params()) {
        match (g, &p.grad) {
            (Some(g), Some(h)) => {
                let (x, y) = (g.to_vec::<f32>().unwrap(), h.to_vec::<f32>().unwrap());
                let num: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
                let den: f32 = x.iter().map(|a| a * a).sum::<f32>().sqrt();
                assert!(num <= 1e-4 * den + 1e-7, "{name}: |Δ| {num} vs |g| {den}");
            }
            (None, None) => {}
            _ => panic!("{name}: a gradient with padding only or without it only"),
        }
    }
}

#[test]
fn cross_document_attention_would_change_the_loss() {
    // The segment mask matters: the same packed row without segment ids lets the second
    // document see the first, which changes its loss (so the test above can fail).
    let mut t = trainer(0.0, TrainConfig::default());
    let packed = batch(&[vec![doc(1, 9), doc(2, 9)]]);
    let mut open = packed.clone();
    open.segment_ids = None;
    let (a, _) = t.loss_and_grads(&packed).unwrap();
    let (b, _) = t.loss_and_grads(&open).unwrap();
    assert!((a.loss - b.loss).abs() > 1e-4, "{} vs {}", a.loss, b.loss);
}

#[test]
fn loss_falls_and_bias_balancing_runs() {
    let tc = TrainConfig { lr: 1e-2, warmup_steps: 2, total_steps: 40, bias_update_speed: 0.01, ..Default::default() };
    let mut t = trainer(1e-3, tc);
    let data = batch(&[vec![doc(1, 12), doc(3, 12)], vec![doc(5, 12), doc(7, 12)]]);
    let bias0 = state(&t, "model.layers.1.mlp.gate.e_score_correction_bias");
    let first = t.step(&data).unwrap();
    assert!(first.balance_loss > 0.0 && first.mtp_loss > 0.0 && first.grad_norm > 0.0);
    let mut last = first.clone();
    // The MTP module's MoE bias moves too (it may come back to 0: ±γ steps around a balance).
    let mut mtp_moved = false;
    for _ in 0..39 {
        last = t.step(&data).unwrap();
        mtp_moved |= state(&t, "model.layers.2.mlp.gate.e_score_correction_bias").iter().any(|&b| b != 0.0);
    }
    assert_eq!(last.step, 40);
    assert!(last.loss < 0.3 * first.loss, "loss {} → {}", first.loss, last.loss);
    assert!(last.mtp_loss < 0.5 * first.mtp_loss, "mtp {} → {}", first.mtp_loss, last.mtp_loss);
    let bias = state(&t, "model.layers.1.mlp.gate.e_score_correction_bias");
    assert_ne!(bias, bias0, "the aux-loss-free update moved the bias");
    assert!(mtp_moved, "the MTP module's MoE bias is balanced too");
    // Biases move by ±γ per step: bounded by 40 γ.
    assert!(bias.iter().all(|b| b.abs() <= 0.4 + 1e-6), "{bias:?}");
}

#[test]
fn resume_from_a_checkpoint_continues_bit_identically() {
    let dir = std::env::temp_dir().join(format!("sft-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tc = TrainConfig { lr: 5e-3, warmup_steps: 1, total_steps: 10, ..Default::default() };
    let data = batch(&[vec![doc(1, 10), doc(2, 6)], vec![doc(4, 16)]]);
    let mut t = trainer(1e-3, tc);
    for _ in 0..3 {
        t.step(&data).unwrap();
    }
    save_checkpoint(&t, &dir, serde_json::json!({"cursor": 3}), 2, |_| Ok(())).unwrap();
    let straight: Vec<f64> = (0..3).map(|_| t.step(&data).unwrap().loss).collect();
    let (latest, path) = latest_checkpoint(&dir).unwrap().unwrap();
    assert_eq!(latest, 3);
    let (mut r, extra): (LmTrainer, _) = load_checkpoint(&path, &Device::Cpu).unwrap();
    assert_eq!(extra["cursor"], 3);
    assert_eq!(r.step, 3);
    let resumed: Vec<f64> = (0..3).map(|_| r.step(&data).unwrap().loss).collect();
    assert_eq!(straight, resumed);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn checkpoints_are_whole_or_absent_and_old_ones_pruned() {
    let dir = std::env::temp_dir().join(format!("sft-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut t = trainer(0.0, TrainConfig::default());
    let data = batch(&[vec![doc(1, 8)]]);
    for _ in 0..3 {
        t.step(&data).unwrap();
        save_checkpoint(&t, &dir, serde_json::Value::Null, 2, |d| {
            std::fs::write(d.join("extra.txt"), "x")
                .map_err(|e| SftError::Io { path: d.display().to_string(), source: e })
        })
        .unwrap();
    }
    let steps: Vec<usize> = list_checkpoints(&dir).unwrap().iter().map(|c| c.0).collect();
    assert_eq!(steps, [2, 3]);
    assert!(dir.join("checkpoint-000003/extra.txt").exists());
    assert!(dir.join("checkpoint-000003/config.json").exists());
    // A checkpoint killed mid-write (no trainer_state.json, or still under its temporary name)
    // is not a candidate for resuming.
    std::fs::create_dir_all(dir.join("checkpoint-000009")).unwrap();
    std::fs::create_dir_all(dir.join(".tmp-checkpoint-000010")).unwrap();
    assert_eq!(latest_checkpoint(&dir).unwrap().unwrap().0, 3);
    // The next save clears the half-written temporary directory.
    t.step(&data).unwrap();
    save_checkpoint(&t, &dir, serde_json::Value::Null, 2, |_| Ok(())).unwrap();
    assert!(!dir.join(".tmp-checkpoint-000010").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_settings_and_batches_name_the_field() {
    let e = LmTrainer::new(
        init_scaled(&cfg(0.0), 0, 0.3, 0, &Device::Cpu).unwrap(),
        TrainConfig { lr: -1.0, ..Default::default() },
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("field lr"), "{e}");
    let mut t = trainer(0.0, TrainConfig::default());
    let mut b = batch(&[vec![doc(1, 8)]]);
    b.ids[3] = 99;
    let e = t.loss_and_grads(&b).err().unwrap().to_string();
    assert!(e.contains("field ids") && e.contains("99"), "{e}");
    let mut b = batch(&[vec![doc(1, 8)]]);
    b.targets.pop();
    let e = t.loss_and_grads(&b).err().unwrap().to_string();
    assert!(e.contains("field targets"), "{e}");
}

#[test]
fn fp8_training_stays_fp8_across_steps_and_resume() {
    use fp8::LinearPrecision::{F32, Fp8};
    let precisions = |t: &LmTrainer| {
        let mut v = vec![];
        for b in &t.model.layers {
            v.push(b.self_attn.precision);
            if let model::Ffn::Moe(m) = &b.mlp {
                v.extend(m.experts.iter().map(|e| e.precision));
            }
        }
        for m in &t.model.mtp {
            v.push(m.block.self_attn.precision);
        }
        v
    };
    let tc = TrainConfig { fp8: true, ..Default::default() };
    let mut t = trainer(0.0, tc);
    let data = batch(&[vec![doc(1, 10), doc(2, 6)]]);
    assert!(precisions(&t).iter().all(|&p| p == Fp8));
    let mut f = trainer(0.0, TrainConfig::default());
    assert!(precisions(&f).iter().all(|&p| p == F32));
    for _ in 0..3 {
        let (a, b) = (t.step(&data).unwrap(), f.step(&data).unwrap());
        // Every step runs in its own precision: the FP8 step's loss differs from the f32 one.
        assert!(precisions(&t).iter().all(|&p| p == Fp8), "FP8 after step {}", a.step);
        assert_ne!(a.loss, b.loss);
    }
    let dir = std::env::temp_dir().join(format!("sft-fp8-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = save_checkpoint(&t, &dir, serde_json::Value::Null, 1, |_| Ok(())).unwrap();
    let (r, _): (LmTrainer, _) = load_checkpoint(&path, &Device::Cpu).unwrap();
    assert!(precisions(&r).iter().all(|&p| p == Fp8));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The non-finite guard: a NaN injected into a weight makes the loss non-finite; with `skip` the
/// step is counted and nothing changes (parameters, optimizer step, biases), with `stop` the run
/// ends with an error naming the step; a checkpoint is never written with a non-finite value.
#[test]
fn nonfinite_steps_are_skipped_or_stop_the_run() {
    let data = batch(&[vec![doc(1, 10), doc(2, 6)]]);
    let poison = |t: &mut LmTrainer| {
        let mut v = t.model.norm.value.to_vec::<f32>().unwrap();
        v[0] = f32::NAN;
        t.model.norm.value = tensor::Tensor::from_vec(v, t.model.norm.value.shape()).unwrap();
    };
    let mut t = trainer(1e-3, TrainConfig { bias_update_speed: 0.01, ..Default::default() });
    t.step(&data).unwrap();
    poison(&mut t);
    let before = t.model.state_dict();
    let s = t.step(&data).unwrap();
    assert!(!s.loss.is_finite() && s.skipped == 1, "{s:?}");
    assert_eq!((t.step, t.skipped, t.opt.step), (2, 1, 1));
    for ((n, a), (_, b)) in before.iter().zip(t.model.state_dict().iter()) {
        let (a, b) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{n} changed by a skipped step");
    }
    assert!(t.model.params().iter().all(|(_, p)| p.grad.is_none()), "gradients of a skipped step are dropped");
    let dir = std::env::temp_dir().join(format!("sft-nonfinite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let e = save_checkpoint(&t, &dir, serde_json::Value::Null, 1, |_| Ok(())).unwrap_err().to_string();
    assert!(e.contains("model.norm.weight") && e.contains("non-finite"), "{e}");
    assert!(list_checkpoints(&dir).unwrap().is_empty(), "nothing written");
    let _ = std::fs::remove_dir_all(&dir);

    let mut t = trainer(0.0, TrainConfig { on_nonfinite: sft::OnNonFinite::Stop, ..Default::default() });
    t.step(&data).unwrap();
    poison(&mut t);
    let e = t.step(&data).unwrap_err().to_string();
    assert!(e.contains("step 2") && e.contains("loss") && e.contains("NaN"), "{e}");
}
