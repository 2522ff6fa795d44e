//! MLA: finite-difference gradients of every weight and the input (f64), decode through the
//! latent cache (naive and absorbed) equal to the full forward, packed sequences equal to
//! separate ones, and the cache size against a per-head K/V cache.

use mla::cache::{DecodeMode, LatentCache, cache_bytes_per_token};
use mla::{Mla, MlaConfig};
use optim::Params;
use proptest::prelude::*;
use tensor::gradcheck::{GradCheck, check, project};
use tensor::ops::attention::AttnMask;
use tensor::ops::rope::Yarn;
use tensor::ops::shape::{cat, narrow};
use tensor::{DType, Device, Tensor};

fn cfg(q_lora: Option<usize>, heads: usize, yarn: bool) -> MlaConfig {
    MlaConfig {
        hidden_size: 12,
        num_attention_heads: heads,
        q_lora_rank: q_lora,
        kv_lora_rank: 6,
        qk_nope_head_dim: 4,
        qk_rope_head_dim: 4,
        v_head_dim: 3,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        max_position_embeddings: 64,
        yarn: yarn.then_some(Yarn {
            factor: 4.0,
            original_max_position_embeddings: 16,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: Some(1.0),
            mscale_all_dim: Some(0.8),
            attention_factor: None,
            truncate: true,
        }),
    }
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    let n: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    n / b.iter().map(|y| y * y).sum::<f64>().sqrt()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Property: the backward's gradients of Σ MLA(x) ⊙ R for the input and every weight equal
    /// central differences, for random small configurations (with and without q_lora_rank and
    /// YaRN), batches and masks.
    #[test]
    fn gradients_match_finite_differences(q_lora in prop::option::of(3usize..6), heads in 1usize..3, yarn: bool,
                                          b in 1usize..3, s in 1usize..5, seed in 0u64..1000) {
        let c = cfg(q_lora, heads, yarn);
        let m = Mla::init(c.clone(), 0.5, seed, DType::F64, &Device::Cpu).unwrap();
        let names: Vec<String> = m.params().iter().map(|(n, _)| format!("l.{n}")).collect();
        let mut inputs = vec![Tensor::randn(&[b, s, c.hidden_size], 1.0, seed + 7, DType::F64, &Device::Cpu).unwrap()];
        // Norm weights away from 1 so the layer is in general position.
        inputs.extend(m.params().iter().enumerate().map(|(i, (n, w))| if n.contains("layernorm") {
            tensor::ops::elementwise::affine(&Tensor::randn(w.shape(), 0.3, seed + 20 + i as u64, DType::F64, &Device::Cpu).unwrap(), 1.0, 1.0).unwrap()
        } else { w.value.clone() }));
        let positions: Vec<u32> = (0..b * s).map(|i| (i % s) as u32 + 3).collect();
        let mask = AttnMask { causal: true, key_padding: None, segment_ids: None };
        let build = |xs: &[Tensor]| {
            let mut p = Params::default();
            for (n, t) in names.iter().zip(&xs[1..]) { p.insert(n.clone(), t.clone()).unwrap(); }
            Mla::load(c.clone(), &p, "l").unwrap()
        };
        let r = Tensor::randn(&[b, s, c.hidden_size], 1.0, seed + 11, DType::F64, &Device::Cpu).unwrap();
        let f = |xs: &[Tensor]| {
            let (y, _) = build(xs).forward(&xs[0], &positions, &mask)
                .map_err(|e| tensor::TensorError::Arg { op: "mla", detail: e.to_string() })?;
            project(&y, &r)
        };
        let mut layer = build(&inputs);
        let (_, saved) = layer.forward(&inputs[0], &positions, &mask).unwrap();
        let dx = layer.backward(&saved, &r).unwrap();
        let mut analytic = vec![dx];
        analytic.extend(layer.params().iter().map(|(n, p)| p.grad.clone().unwrap_or_else(|| panic!("no gradient for {n}"))));
        check(f, &inputs, &analytic, &GradCheck { max_per_input: 24, ..GradCheck::default() }).unwrap().assert_ok("mla");
    }
}

/// Decoding token by token through the latent cache reproduces the full causal forward, for the
/// naive and the absorbed paths, on random configurations (f32, ≤ 1e-5 relative).
#[test]
fn decode_equals_forward() {
    for (seed, (q_lora, heads, yarn)) in
        [(None, 2, false), (Some(5), 3, true), (Some(4), 1, false)].into_iter().enumerate()
    {
        let c = cfg(q_lora, heads, yarn);
        let m = Mla::init(c.clone(), 0.3, seed as u64, DType::F32, &Device::Cpu).unwrap();
        let (b, s) = (2, 7);
        let x = Tensor::randn(&[b, s, c.hidden_size], 1.0, 40 + seed as u64, DType::F32, &Device::Cpu).unwrap();
        let positions: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();
        let (full, _) = m.forward(&x, &positions, &AttnMask::causal()).unwrap();
        for mode in [DecodeMode::Naive, DecodeMode::Absorbed] {
            let mut cache = LatentCache::default();
            // Prefill 3 tokens, then one at a time.
            let mut outs = vec![
                m.decode(&narrow(&x, 1, 0, 3).unwrap(), &pos_slice(&positions, b, s, 0, 3), &mut cache, None, mode)
                    .unwrap(),
            ];
            for i in 3..s {
                outs.push(
                    m.decode(&narrow(&x, 1, i, 1).unwrap(), &pos_slice(&positions, b, s, i, 1), &mut cache, None, mode)
                        .unwrap(),
                );
            }
            assert_eq!(cache.len(), s);
            let dec = cat(&outs, 1).unwrap();
            let e = rel(&dec, &full);
            assert!(e <= 1e-5, "{mode:?} q_lora={q_lora:?} heads={heads} yarn={yarn}: rel err {e:e}");
        }
    }
}

/// A fixed-capacity cache is allocated once and written in place: the same buffer across every
/// append (no concatenation, no reallocation), the same outputs as a growing cache and with
/// weights prepared once; one token past the capacity is a clear error.
#[test]
fn preallocated_cache_writes_in_place_and_refuses_overflow() {
    let c = cfg(Some(5), 3, true);
    let m = Mla::init(c.clone(), 0.3, 2, DType::F32, &Device::Cpu).unwrap();
    let (b, s) = (2, 6);
    let x = Tensor::randn(&[b, s, c.hidden_size], 1.0, 41, DType::F32, &Device::Cpu).unwrap();
    let positions: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();
    let w = m.absorbed_weights().unwrap();
    for mode in [DecodeMode::Naive, DecodeMode::Absorbed] {
        let mut fixed = LatentCache::with_capacity(s);
        let mut growing = LatentCache::default();
        assert_eq!((fixed.capacity(), fixed.allocations()), (s, 0));
        let step = |cache: &mut LatentCache, i: usize, n: usize, w| {
            let xi = narrow(&x, 1, i, n).unwrap();
            m.decode_with(&xi, &pos_slice(&positions, b, s, i, n), cache, None, mode, w).unwrap()
        };
        let ptr = |cache: &LatentCache| cache.buffer().unwrap().cpu_slice::<f32>().unwrap().as_ptr();
        let (mut a, mut g) = (vec![step(&mut fixed, 0, 2, Some(&w))], vec![step(&mut growing, 0, 2, None)]);
        let first = ptr(&fixed);
        for i in 2..s {
            a.push(step(&mut fixed, i, 1, Some(&w)));
            g.push(step(&mut growing, i, 1, None));
            assert_eq!(ptr(&fixed), first, "{mode:?}: the buffer moved at token {i}");
        }
        assert_eq!((fixed.len(), fixed.capacity(), fixed.allocations()), (s, s, 1));
        // The growing cache doubled: 2 → 4 → 8 rows (absorbed: the prefill appends one token
        // at a time, 1 → 2 → 4 → 8).
        let grown = if mode == DecodeMode::Naive { 3 } else { 4 };
        assert_eq!((growing.len(), growing.capacity(), growing.allocations()), (s, 8, grown));
        assert_eq!(cat(&a, 1).unwrap().to_vec_f64().unwrap(), cat(&g, 1).unwrap().to_vec_f64().unwrap());
        assert_eq!(fixed.ckv().unwrap().unwrap().shape(), &vec![b, s, c.kv_lora_rank]);
        assert_eq!(fixed.k_pe().unwrap().unwrap().shape(), &vec![b, s, c.qk_rope_head_dim]);
        // Full: the next token is refused and the cache is unchanged.
        let xi = narrow(&x, 1, 0, 1).unwrap();
        let e = m.decode_with(&xi, &[6, 6], &mut fixed, None, mode, Some(&w)).unwrap_err().to_string();
        assert!(e.contains("exceed the 6 reserved"), "{e}");
        assert_eq!((fixed.len(), fixed.allocations()), (s, 1));
        // A clone owns a copy of the buffer (so both can be written in place).
        let mut copy = fixed.clone();
        assert_ne!(ptr(&copy), ptr(&fixed));
        assert_eq!(
            copy.ckv().unwrap().unwrap().to_vec_f64().unwrap(),
            fixed.ckv().unwrap().unwrap().to_vec_f64().unwrap()
        );
        assert!(m.decode_with(&xi, &[6, 6], &mut copy, None, mode, Some(&w)).is_err());
    }
}

/// Layers built with one shared RoPE table equal layers with tables of their own; a table of
/// the wrong size is refused.
#[test]
fn shared_rope_table() {
    let c = cfg(Some(5), 2, true);
    let rope = c.rope_table().unwrap();
    let own = Mla::init(c.clone(), 0.3, 4, DType::F64, &Device::Cpu).unwrap();
    let a = Mla::init_with_rope(c.clone(), rope.clone(), 0.3, 4, DType::F64, &Device::Cpu).unwrap();
    let b = Mla::init_with_rope(c.clone(), rope.clone(), 0.3, 5, DType::F64, &Device::Cpu).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a.rope, &b.rope));
    let x = Tensor::randn(&[1, 5, c.hidden_size], 1.0, 3, DType::F64, &Device::Cpu).unwrap();
    let pos: Vec<u32> = (0..5).collect();
    let (y0, _) = own.forward(&x, &pos, &AttnMask::causal()).unwrap();
    let (y1, _) = a.forward(&x, &pos, &AttnMask::causal()).unwrap();
    assert_eq!(y0.to_vec_f64().unwrap(), y1.to_vec_f64().unwrap());
    let mut other = c.clone();
    other.qk_rope_head_dim += 2;
    assert!(Mla::init_with_rope(other, rope, 0.3, 4, DType::F64, &Device::Cpu).is_err());
}

fn pos_slice(p: &[u32], b: usize, s: usize, start: usize, len: usize) -> Vec<u32> {
    (0..b).flat_map(|bi| p[bi * s + start..bi * s + start + len].to_vec()).collect()
}

/// Two sequences packed into one row (segment ids, positions restarting at 0) give the same
/// outputs as each sequence alone.
#[test]
fn packed_sequences_equal_separate() {
    let c = cfg(Some(5), 2, false);
    let m = Mla::init(c.clone(), 0.3, 9, DType::F64, &Device::Cpu).unwrap();
    let (l1, l2) = (4, 3);
    let x = Tensor::randn(&[1, l1 + l2, c.hidden_size], 1.0, 3, DType::F64, &Device::Cpu).unwrap();
    let pos: Vec<u32> = (0..l1 as u32).chain(0..l2 as u32).collect();
    let seg: Vec<u32> = std::iter::repeat_n(0, l1).chain(std::iter::repeat_n(1, l2)).collect();
    let mask = AttnMask { causal: true, key_padding: None, segment_ids: Some(seg) };
    let (packed, _) = m.forward(&x, &pos, &mask).unwrap();
    let (a, _) = m.forward(&narrow(&x, 1, 0, l1).unwrap(), &pos[..l1], &AttnMask::causal()).unwrap();
    let (b, _) = m.forward(&narrow(&x, 1, l1, l2).unwrap(), &pos[l1..], &AttnMask::causal()).unwrap();
    assert!(rel(&packed, &cat(&[a, b], 1).unwrap()) < 1e-12);
}

/// The cache holds kv_lora_rank + rope values per token per layer: 576 at DeepSeek-V3 size,
/// 70,272 bytes per token over 61 layers in bf16 — 71× less than a per-head K/V cache.
#[test]
fn cache_size_against_per_head_kv() {
    let v3 = MlaConfig {
        hidden_size: 7168,
        num_attention_heads: 128,
        q_lora_rank: Some(1536),
        kv_lora_rank: 512,
        qk_nope_head_dim: 128,
        qk_rope_head_dim: 64,
        v_head_dim: 128,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        max_position_embeddings: 4096,
        yarn: None,
    };
    let (latent, per_head) = cache_bytes_per_token(&v3, DType::BF16);
    eprintln!(
        "DeepSeek-V3 cache per token per layer (bf16): latent {latent} B, per-head K/V {per_head} B ({:.1}×)",
        per_head as f64 / latent as f64
    );
    assert_eq!(latent, 576 * 2);
    assert_eq!(latent * 61, 70_272);
    assert_eq!(per_head, 128 * (192 + 128) * 2);
    assert!(per_head / latent >= 71);
}

#[test]
fn bad_config_is_named() {
    let mut c = cfg(None, 2, false);
    c.qk_rope_head_dim = 3;
    let e = Mla::init(c, 0.1, 0, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("qk_rope_head_dim") && e.contains('3'), "{e}");
    let p = Params::default();
    let e = Mla::load(cfg(Some(4), 2, false), &p, "model.layers.0.self_attn").unwrap_err().to_string();
    assert!(e.contains("model.layers.0.self_attn.q_a_proj.weight"), "{e}");
}

/// The same forward, backward and absorbed decode on every device present give the CPU's
/// results (on the GPU machine: CPU-vs-CUDA parity of the whole layer, f32).
#[test]
fn same_results_on_every_device() {
    let c = cfg(Some(5), 2, true);
    let (b, s) = (2, 6);
    let x = Tensor::randn(&[b, s, c.hidden_size], 1.0, 5, DType::F32, &Device::Cpu).unwrap();
    let r = Tensor::randn(&[b, s, c.hidden_size], 1.0, 6, DType::F32, &Device::Cpu).unwrap();
    let positions: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();
    let run = |dev: &Device| {
        let mut m = Mla::init(c.clone(), 0.3, 1, DType::F32, dev).unwrap();
        let (y, saved) = m.forward(&x.to_device(dev).unwrap(), &positions, &AttnMask::causal()).unwrap();
        let dx = m.backward(&saved, &r.to_device(dev).unwrap()).unwrap();
        let mut cache = LatentCache::default();
        let dec = m.decode(&x.to_device(dev).unwrap(), &positions, &mut cache, None, DecodeMode::Absorbed).unwrap();
        let mut outs = vec![y, dx, dec];
        outs.extend(m.params().iter().map(|(_, p)| p.grad.clone().unwrap()));
        outs
    };
    let want = run(&Device::Cpu);
    for dev in Device::all_available() {
        for (i, (g, w)) in run(&dev).iter().zip(&want).enumerate() {
            assert!(g.device().same(&dev), "output {i} left {dev:?}");
            let e = rel(g, w);
            assert!(e < 1e-5, "{dev:?} output {i}: rel err {e:e}");
        }
    }
}
