//! The latent KV cache and decoding (DeepSeek-V2 §2.1.2–2.1.3).
//!
//! The cache keeps, per token and layer, only the normed latent `c_kv` (`kv_lora_rank`) and the
//! roped shared key `k_pe` (`qk_rope_head_dim`) — 576 values at full size instead of
//! `H·(qk_head_dim + v_head_dim)` for a per-head K/V cache. Two decode paths read it:
//! - **naive**: re-expand `k_nope`, `v` for every cached token through `kv_b_proj`;
//! - **absorbed**: fold `W_UK` into the query (`q_lat = q_nope·W_UK[h]`, attention in latent
//!   space against `[c_kv | k_pe]`) and apply `W_UV` after attention (`o = o_lat·W_UV[h]ᵀ`).

use tensor::ops::attention::{AttnMask, attention};
use tensor::ops::cache::{attention_cached, write_at};
use tensor::ops::matmul::{linear, matmul};
use tensor::ops::shape::{cat, narrow, permute, split_last};
use tensor::{DType, Tensor};

use crate::{Mla, MlaError, Result};

/// One layer's cache for a batch: per token the row `[c_kv | k_pe]` (normed latent,
/// `kv_lora_rank`, then the roped shared key, `qk_rope_head_dim`) in one preallocated buffer
/// `[B, capacity, kv_lora_rank + rope]`, filled up to [`LatentCache::len`]. New tokens are
/// written into their rows in place ([`write_at`]) and the absorbed path attends over the filled
/// prefix where it lies ([`attention_cached`]): nothing is concatenated or copied per token.
///
/// [`LatentCache::with_capacity`] reserves a fixed number of rows (allocated at the first
/// append, which fixes B, the row width, dtype and device); appending past it is an error.
/// [`LatentCache::default`] grows instead: when full it moves to a buffer twice as long
/// (amortised O(1) per token, counted by [`LatentCache::allocations`]).
#[derive(Debug, Default)]
pub struct LatentCache {
    /// `[B, capacity, kv_lora_rank + rope]`, owned (never shared, so writes stay in place).
    buf: Option<Tensor>,
    len: usize,
    /// Rows reserved by [`LatentCache::with_capacity`] (`None`: grow on demand).
    reserved: Option<usize>,
    allocations: usize,
    /// `kv_lora_rank` (the first columns of a row), fixed by the first append.
    latent: usize,
}

impl Clone for LatentCache {
    /// A deep copy: the clone gets its own buffer (a shared buffer could not be written in place).
    fn clone(&self) -> LatentCache {
        let buf = self.buf.as_ref().map(|b| narrow(b, 1, 0, b.dim(1)).expect("copy of a cache buffer"));
        LatentCache { buf, len: self.len, reserved: self.reserved, allocations: self.allocations, latent: self.latent }
    }
}

impl LatentCache {
    /// A cache for up to `capacity` tokens per sequence, allocated at the first append.
    pub fn with_capacity(capacity: usize) -> LatentCache {
        LatentCache { reserved: Some(capacity), ..Default::default() }
    }

    /// Cached tokens per sequence.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing cached yet?
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens per sequence the buffer holds (the reserved capacity before the first append).
    pub fn capacity(&self) -> usize {
        self.buf.as_ref().map_or(self.reserved.unwrap_or(0), |b| b.dim(1))
    }

    /// Buffers allocated so far (1 after the first append; a fixed-capacity cache stays at 1).
    pub fn allocations(&self) -> usize {
        self.allocations
    }

    /// The whole buffer `[B, capacity, kv_lora_rank + rope]` (rows past [`LatentCache::len`]
    /// are unused). Keep no clone of it alive across an append: the in-place write refuses a
    /// shared buffer.
    pub fn buffer(&self) -> Option<&Tensor> {
        self.buf.as_ref()
    }

    /// A copy of the cached normed latents `[B, len, kv_lora_rank]`.
    pub fn ckv(&self) -> Result<Option<Tensor>> {
        self.part(0)
    }

    /// A copy of the cached roped keys `[B, len, rope]`.
    pub fn k_pe(&self) -> Result<Option<Tensor>> {
        self.part(1)
    }

    fn part(&self, i: usize) -> Result<Option<Tensor>> {
        let (Some(b), Some(r)) = (&self.buf, self.rank()) else { return Ok(None) };
        let rows = narrow(b, 1, 0, self.len)?;
        let w = b.dim(2);
        Ok(Some(if i == 0 { narrow(&rows, 2, 0, r)? } else { narrow(&rows, 2, r, w - r)? }))
    }

    /// The latent width, remembered from the first append.
    fn rank(&self) -> Option<usize> {
        self.buf.as_ref().map(|_| self.latent)
    }

    /// Append `ckv_n [B, s, kv_lora_rank]` and `k_pe [B, s, rope]` (or `[B, s, 1, rope]`) as
    /// rows `len .. len + s`, in place.
    pub fn append(&mut self, ckv_n: &Tensor, k_pe: &Tensor) -> Result<()> {
        let (b, s, r) = (ckv_n.dim(0), ckv_n.dim(1), ckv_n.dim(2));
        let rope = k_pe.numel() / (b * s).max(1);
        let row = cat(&[ckv_n.clone(), k_pe.reshape(&[b, s, rope])?], 2)?;
        let need = self.len + s;
        let cap = self.capacity();
        if self.buf.is_none() || need > cap {
            let new_cap = match self.reserved {
                Some(c) if need > c => {
                    return Err(MlaError::Config {
                        field: "LatentCache capacity",
                        detail: format!(
                            "{need} tokens per sequence exceed the {c} reserved with LatentCache::with_capacity"
                        ),
                    });
                }
                Some(c) => c,
                None => need.max(2 * cap),
            };
            let mut nb = Tensor::zeros(&[b, new_cap, r + rope], row.dtype(), row.device())?;
            if let Some(old) = self.buf.take()
                && self.len > 0
            {
                write_at(&mut nb, 1, 0, &narrow(&old, 1, 0, self.len)?)?;
            }
            self.buf = Some(nb);
            self.latent = r;
            self.allocations += 1;
        }
        if self.latent != r {
            return Err(MlaError::Config {
                field: "LatentCache",
                detail: format!("latent width {r}, the cache holds {}", self.latent),
            });
        }
        write_at(self.buf.as_mut().expect("allocated above"), 1, self.len, &row)?;
        self.len = need;
        Ok(())
    }
}

/// `W_UK [H, nope, kv_lora_rank]` and `W_UV [H, v, kv_lora_rank]`: the per-head blocks of
/// `kv_b_proj` that absorbed decoding multiplies with, split out once ([`Mla::absorbed_weights`])
/// and reused by every decode step of a generation. They are copies: build them again after the
/// weights change (an optimizer step), as [`Mla::absorbed_weights`] does for each call.
#[derive(Clone, Debug)]
pub struct AbsorbedWeights {
    pub w_uk: Tensor,
    pub w_uv: Tensor,
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
    /// The absorbed mode splits `kv_b_proj` for this call; a generation loop prepares it once
    /// with [`Mla::absorbed_weights`] and calls [`Mla::decode_with`].
    pub fn decode(
        &self,
        x: &Tensor,
        positions: &[u32],
        cache: &mut LatentCache,
        key_padding: Option<&[bool]>,
        mode: DecodeMode,
    ) -> Result<Tensor> {
        self.decode_with(x, positions, cache, key_padding, mode, None)
    }

    /// [`Mla::decode`] with the absorbed weights prepared by [`Mla::absorbed_weights`] (`None`:
    /// split them now when the mode needs them; the naive mode ignores them).
    pub fn decode_with(
        &self,
        x: &Tensor,
        positions: &[u32],
        cache: &mut LatentCache,
        key_padding: Option<&[bool]>,
        mode: DecodeMode,
        absorbed: Option<&AbsorbedWeights>,
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
                let was_empty = cache.is_empty();
                cache.append(&ckv_n, &k_pe)?;
                // Prefill into an empty cache: the new latents are the whole cache.
                let (ck, kp) = if was_empty {
                    (ckv_n, k_pe)
                } else {
                    (cache.ckv()?.expect("appended"), cache.k_pe()?.expect("appended"))
                };
                let kp = kp.reshape(&[b, t_after, 1, c.qk_rope_head_dim])?;
                let (k, v) = self.expand_kv(&ck, &kp)?;
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
                let own;
                let w = match absorbed {
                    Some(w) => w,
                    None => {
                        own = self.absorbed_weights()?;
                        &own
                    }
                };
                let mut outs = Vec::with_capacity(s);
                for i in 0..s {
                    let (ck_i, kp_i) = if s == 1 {
                        (ckv_n.clone(), k_pe.clone())
                    } else {
                        (narrow(&ckv_n, 1, i, 1)?, narrow(&k_pe, 1, i, 1)?)
                    };
                    cache.append(&ck_i, &kp_i)?;
                    let t = cache.len();
                    let pad = key_padding.map(|p| {
                        (0..b).flat_map(|bi| p[bi * t_after..bi * t_after + t].to_vec()).collect::<Vec<bool>>()
                    });
                    let qi = if s == 1 { q.clone() } else { narrow(&q, 1, i, 1)? };
                    let qi = qi.reshape(&[b, h, c.qk_head_dim()])?;
                    outs.push(self.absorbed_step(&qi, cache, w, pad.as_deref())?);
                }
                if s == 1 { outs.pop().expect("one step") } else { cat(&outs, 1)? }
            }
        };
        Ok(linear(&out, &self.o_proj)?)
    }

    /// `W_UK [H, nope, kv_lora_rank]` and `W_UV [H, v, kv_lora_rank]`, the per-head blocks of
    /// `kv_b_proj` (rows `h·(nope+v) ..`), each contiguous. Reflects the weights as they are now.
    pub fn absorbed_weights(&self) -> Result<AbsorbedWeights> {
        let c = &self.cfg;
        let w = self.kv_b_proj.reshape(&[c.num_attention_heads, c.qk_nope_head_dim + c.v_head_dim, c.kv_lora_rank])?;
        Ok(AbsorbedWeights {
            w_uk: narrow(&w, 1, 0, c.qk_nope_head_dim)?,
            w_uv: narrow(&w, 1, c.qk_nope_head_dim, c.v_head_dim)?,
        })
    }

    /// One token per sequence: `q [B, H, qk]` against the filled prefix of the cache, in
    /// latent space.
    fn absorbed_step(
        &self,
        q: &Tensor,
        cache: &LatentCache,
        w: &AbsorbedWeights,
        key_padding: Option<&[bool]>,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (b, h, r) = (q.dim(0), c.num_attention_heads, c.kv_lora_rank);
        let parts = split_last(q, &[c.qk_nope_head_dim, c.qk_rope_head_dim])?;
        // q_lat[b, h] = q_nope[b, h] · W_UK[h]   (heads as the batch of the product)
        let q_nope_h = permute(&parts[0], &[1, 0, 2])?; // [H, B, nope]
        let q_lat = permute(&matmul(&q_nope_h, &w.w_uk, false, false)?, &[1, 0, 2])?; // [B, H, r]
        let q_abs = cat(&[q_lat, parts[1].clone()], 2)?; // [B, H, r + rope]
        // Keys are the cached rows [c_kv | k_pe], values their c_kv columns; every cached key
        // precedes this token: no causal mask, only padding.
        let kv = cache.buffer().expect("appended");
        let o_lat = attention_cached(&q_abs, kv, cache.len(), r, c.softmax_scale(), key_padding)?; // [B, H, r]
        let o_lat_h = permute(&o_lat, &[1, 0, 2])?; // [H, B, r]
        let o = matmul(&o_lat_h, &w.w_uv, false, true)?; // [H, B, v]
        Ok(permute(&o, &[1, 0, 2])?.reshape(&[b, 1, h * c.v_head_dim])?)
    }
}
