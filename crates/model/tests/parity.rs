//! Logits parity with transformers' `DeepseekV3ForCausalLM` (5.17, float64, eager) on three
//! committed random tiny fixtures (`tests/fixtures/make_fixtures.py`): YaRN + q_lora + grouped
//! routing; q_lora_rank null with first_k_dense_replace = 2; wide unnormalised routing. Each
//! fixture becomes an HF-layout checkpoint directory (config.json + model.safetensors) that
//! `DeepseekV3::from_pretrained` loads; f32 logits must match within 1e-4 relative (‖Δ‖/‖ref‖).

use std::path::PathBuf;

use model::DeepseekV3;
use tensor::ops::attention::AttnMask;
use tensor::{DType, Device};

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("r1-parity-{name}-{}", std::process::id()))
}

fn check(name: &str) {
    let dir = tmp(name);
    let fx = format!("{}/tests/fixtures/model_{name}.safetensors", env!("CARGO_MANIFEST_DIR"));
    let f = model::checkpoint::unpack_fixture(std::path::Path::new(&fx), &dir).unwrap();
    let (ids, b, s, want) = (f.input_ids, f.batch, f.seq, f.logits);
    for (dt, tol) in [(DType::F32, 1e-4), (DType::F64, 1e-6)] {
        let m = DeepseekV3::from_pretrained(&dir, dt, &Device::Cpu).unwrap();
        let pos: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();
        let (logits, _) = m.forward(&ids, b, s, &pos, &AttnMask::causal()).unwrap();
        assert_eq!(logits.shape(), &vec![b, s, m.cfg.vocab_size]);
        let got = logits.to_vec_f64().unwrap();
        let e = got.iter().zip(&want).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt()
            / want.iter().map(|y| y * y).sum::<f64>().sqrt();
        eprintln!("{name} {dt:?}: logits rel err {e:e}");
        assert!(e <= tol, "{name} {dt:?}: rel err {e:e} > {tol:e}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn parity_yarn_grouped() {
    check("yarn_grouped");
}

#[test]
fn parity_no_qlora_two_dense_layers() {
    check("no_qlora_dense2");
}

#[test]
fn parity_wide_routing() {
    check("wide");
}
