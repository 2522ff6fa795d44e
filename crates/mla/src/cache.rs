//! The latent KV cache and decoding (DeepSeek-V2 §2.1.2–2.1.3).
//!
//! The cache keeps, per token and layer, only the normed latent `c_kv` (`kv_lora_rank`) and the
//! roped shared key `k_pe` (`qk_rope_head_dim`) — 576 values at full size instead of
//! `H·(qk_head_dim + v_head_dim)` for a per-head K/V cache. Two decode paths read it:
//! - **naive**: re-expand `k_nope`, `v` for every cached token through `kv_b_proj`;
//! - **absorbed**: fold `W_UK` into the query (`q_lat = q_nope·W_UK[h]`, attention in latent
//!   space against `[c_kv | k_pe]`) and apply `W_UV` after attention (`o = o_lat·W_UV[h]ᵀ`).

use tensor::ops::attention::{AttnMask, attention};
use tensor::ops::matmul::{linear, matmul};
use tensor::ops::shape::{cat, narrow, permute, split_last};
use tensor::{DType, Tensor};

use crate::{Mla, MlaError, Result};

/// One layer's cache for a batch: normed latents `[B, T, kv_lora_rank]`, roped keys `[B, T, rope]`.
#[derive(Clone, Debug, Default)]
pub struct LatentCache {
    pub ckv: Option<Tensor>,
    pub k_pe: Option<Tensor>,
}

impl LatentCache {
    /// Cached tokens per sequence.
    pub fn len(&self) -> usize {
        self.ckv.as_ref().map_or(0, |t| t.dim(1))
    }

    /// Nothing cached yet?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn append(&mut self, ckv_n: &Tensor, k_pe: &Tensor) -> Result<()> {
        let push = |slot: &mut Option<Tensor>, t: &Tensor| -> Result<()> {
            *slot = Some(match slot.take() {
                Some(old) => cat(&[old, t.clone()], 1)?,
                None => t.clone(),
            });
            Ok(())
        };
        push(&mut self.ckv, ckv_n)?;
        push(&mut self.k_pe, k_pe)
    }
}

/// Bytes per token per layer: `(latent cache, per-head K/V cache)` for element type `dtype`.
pub fn cache_bytes_per_token(cfg: &crate::MlaConfig, dtype: DType) -> (usize, usize) {
    let latent = cfg.kv_lora_rank + cfg.qk_rope_head_dim;
    let per_head = cfg.num_attention_heads * (cfg.qk_head_dim() + cfg.v_head_dim);
    (latent * dtype.size(), per_head * dtype.size())
}

/// Which decode computation to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeMode {
    Naive,
    Absorbed,
}

impl Mla {
    /// Decode new tokens `x [B, s, hidden]` at `positions` (B·s): append their latents to
    /// `cache`, attend causally over the whole cache, return `[B, s, hidden]`.
    /// `key_padding` (`[B, T]` for the cache length T after appending) hides padded tokens.
    pub fn decode(
        &self,
        x: &Tensor,
        positions: &[u32],
        cache: &mut LatentCache,
        key_padding: Option<&[bool]>,
        mode: DecodeMode,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (b, s, h) = (x.dim(0), x.dim(1), c.num_attention_heads);
        let t_after = cache.len() + s;
        if let Some(p) = key_padding
            && p.len() != b * t_after
        {
            return Err(MlaError::Config {
                field: "key_padding",
                detail: format!("{} entries, expected B·T = {}", p.len(), b * t_after),
            });
        }
        let (q, _) = self.queries(x, positions)?;
        let (_, ckv_n, _, k_pe) = self.compress_kv(x, positions)?;
        let k_pe = k_pe.reshape(&[b, s, c.qk_rope_head_dim])?;
        let bhsd = [0, 2, 1, 3];
        let out = match mode {
            DecodeMode::Naive => {
                cache.append(&ckv_n, &k_pe)?;
                let (ck, kp) = (cache.ckv.as_ref().expect("appended"), cache.k_pe.as_ref().expect("appended"));
                let kp = kp.reshape(&[b, t_after, 1, c.qk_rope_head_dim])?;
                let (k, v) = self.expand_kv(ck, &kp)?;
                let mask = AttnMask { causal: true, key_padding: key_padding.map(<[bool]>::to_vec), segment_ids: None };
                let (o, _) = attention(
                    &permute(&q, &bhsd)?,
                    &permute(&k, &bhsd)?,
                    &permute(&v, &bhsd)?,
                    c.softmax_scale(),
                    &mask,
                )?;
                permute(&o, &bhsd)?.reshape(&[b, s, h * c.v_head_dim])?
            }
            DecodeMode::Absorbed => {
                let (w_uk, w_uv) = self.absorbed_weights()?;
                let mut outs = Vec::with_capacity(s);
                for i in 0..s {
                    cache.append(&narrow(&ckv_n, 1, i, 1)?, &narrow(&k_pe, 1, i, 1)?)?;
                    let t = cache.len();
                    let pad = key_padding.map(|p| {
                        (0..b).flat_map(|bi| p[bi * t_after..bi * t_after + t].to_vec()).collect::<Vec<bool>>()
                    });
                    let qi = narrow(&q, 1, i, 1)?.reshape(&[b, h, c.qk_head_dim()])?;
                    outs.push(self.absorbed_step(&qi, cache, &w_uk, &w_uv, pad)?);
                }
                cat(&outs, 1)?
            }
        };
        Ok(linear(&out, &self.o_proj)?)
    }

    /// `W_UK [H, nope, kv_lora_rank]` and `W_UV [H, v, kv_lora_rank]`, the per-head blocks of
    /// `kv_b_proj` (rows `h·(nope+v) ..`).
    pub fn absorbed_weights(&self) -> Result<(Tensor, Tensor)> {
        let c = &self.cfg;
        let w = self.kv_b_proj.reshape(&[c.num_attention_heads, c.qk_nope_head_dim + c.v_head_dim, c.kv_lora_rank])?;
        Ok((narrow(&w, 1, 0, c.qk_nope_head_dim)?, narrow(&w, 1, c.qk_nope_head_dim, c.v_head_dim)?))
    }

    /// One token per sequence: `q [B, H, qk]` against the whole cache in latent space.
    fn absorbed_step(
        &self,
        q: &Tensor,
        cache: &LatentCache,
        w_uk: &Tensor,
        w_uv: &Tensor,
        key_padding: Option<Vec<bool>>,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (b, h, r) = (q.dim(0), c.num_attention_heads, c.kv_lora_rank);
        let parts = split_last(q, &[c.qk_nope_head_dim, c.qk_rope_head_dim])?;
        // q_lat[b, h] = q_nope[b, h] · W_UK[h]   (heads as the batch of the product)
        let q_nope_h = permute(&parts[0], &[1, 0, 2])?; // [H, B, nope]
        let q_lat = permute(&matmul(&q_nope_h, w_uk, false, false)?, &[1, 0, 2])?; // [B, H, r]
        let q_abs = cat(&[q_lat, parts[1].clone()], 2)?.reshape(&[b, 1, h, r + c.qk_rope_head_dim])?;
        let (ck, kp) = (cache.ckv.as_ref().expect("appended"), cache.k_pe.as_ref().expect("appended"));
        let t = ck.dim(1);
        let k_abs = cat(&[ck.clone(), kp.clone()], 2)?.reshape(&[b, 1, t, r + c.qk_rope_head_dim])?;
        let v_abs = ck.reshape(&[b, 1, t, r])?;
        // Every cached key precedes this token: no causal mask, only padding.
        let mask = AttnMask { causal: false, key_padding, segment_ids: None };
        let (o_lat, _) = attention(&q_abs, &k_abs, &v_abs, c.softmax_scale(), &mask)?; // [B, 1, H, r]
        let o_lat_h = permute(&o_lat.reshape(&[b, h, r])?, &[1, 0, 2])?; // [H, B, r]
        let o = matmul(&o_lat_h, w_uv, false, true)?; // [H, B, v]
        Ok(permute(&o, &[1, 0, 2])?.reshape(&[b, 1, h * c.v_head_dim])?)
    }
}
