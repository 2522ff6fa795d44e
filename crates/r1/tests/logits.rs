//! `r1 logits --model DIR --input-ids FILE.json --output OUT.safetensors` on an HF-layout
//! checkpoint made from a transformers fixture: the written `logits` tensor (f32,
//! [batch, seq, vocab]) equals transformers' within 1e-4 relative; malformed inputs are refused
//! with the file and the problem named. An FP8 copy of the checkpoint (E4M3 + `weight_scale_inv`)
//! gives exactly the logits of the dequantised model. `r1 generate` prints one JSON line per prompt.

use std::path::Path;
use std::process::Command;

use safetensors::SafeTensors;

#[test]
fn logits_command_matches_transformers() {
    let tmp = std::env::temp_dir().join(format!("r1-cli-logits-{}", std::process::id()));
    let ckpt = tmp.join("ckpt");
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/model_yarn_grouped.safetensors");
    let f = model::checkpoint::unpack_fixture(&fx, &ckpt).unwrap();
    let rows: Vec<Vec<u32>> = f.input_ids.chunks(f.seq).map(<[u32]>::to_vec).collect();
    let ids = tmp.join("ids.json");
    std::fs::write(&ids, serde_json::to_string(&rows).unwrap()).unwrap();
    let out = tmp.join("out.safetensors");
    let run = |ids: &Path| {
        Command::new(env!("CARGO_BIN_EXE_r1"))
            .args(["logits", "--model"])
            .arg(&ckpt)
            .arg("--input-ids")
            .arg(ids)
            .arg("--output")
            .arg(&out)
            .output()
            .unwrap()
    };
    let o = run(&ids);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&out).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor("logits").unwrap();
    assert_eq!(v.dtype(), safetensors::Dtype::F32);
    assert_eq!(v.shape(), &[f.batch, f.seq, 64]);
    let got: Vec<f64> = v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect();
    let e = got.iter().zip(&f.logits).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt()
        / f.logits.iter().map(|y| y * y).sum::<f64>().sqrt();
    assert!(e <= 1e-4, "rel err {e:e}");
    // Ragged rows, an out-of-vocabulary id, and a missing checkpoint are named errors.
    let bad = tmp.join("bad.json");
    for (text, needle) in [("[[1, 2], [3]]", "row 1"), ("[[1, 999]]", "token id 999"), ("{}", "bad.json")] {
        std::fs::write(&bad, text).unwrap();
        let o = run(&bad);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle), "{text}: {err}");
    }
    // The same checkpoint in DeepSeek's FP8 layout: `r1 logits` dequantises on load and matches
    // the model built from the dequantised weights.
    let fp8_dir = tmp.join("ckpt-fp8");
    let deq = model::checkpoint::quantize_checkpoint_fp8(&ckpt, &fp8_dir).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_r1"))
        .args(["logits", "--model"])
        .arg(&fp8_dir)
        .arg("--input-ids")
        .arg(&ids)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = model::DeepseekV3Config::from_file(&fp8_dir).unwrap();
    let reference = model::DeepseekV3::load(cfg, &deq).unwrap();
    let pos: Vec<u32> = (0..f.batch * f.seq).map(|i| (i % f.seq) as u32).collect();
    let (want, _) =
        reference.forward(&f.input_ids, f.batch, f.seq, &pos, &tensor::ops::attention::AttnMask::causal()).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let got: Vec<f32> = st
        .tensor("logits")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got, want.to_vec::<f32>().unwrap(), "FP8 checkpoint logits must equal the dequantised reference");

    // `r1 generate` on the same checkpoint: greedy, two prompts of different lengths, one JSON
    // line each with as many logprobs as tokens.
    let prompts = tmp.join("prompts.json");
    std::fs::write(&prompts, "[[1, 2, 3, 4], [5, 6]]").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_r1"))
        .args(["generate", "--model"])
        .arg(&ckpt)
        .arg("--prompt-ids")
        .arg(&prompts)
        .args(["--temperature", "0", "--max-new-tokens", "5"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert_eq!(l["tokens"].as_array().unwrap().len(), 5);
        assert_eq!(l["logprobs"].as_array().unwrap().len(), 5);
    }

    std::fs::remove_file(ckpt.join("model.safetensors")).unwrap();
    let o = run(&ids);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("model.safetensors"));
    std::fs::remove_dir_all(&tmp).ok();
}
