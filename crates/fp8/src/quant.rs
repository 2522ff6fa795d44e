//! Block quantisers and dequantisers (DeepSeek-V3 §3.3, "fine-grained quantization").
//!
//! A matrix `[rows, cols]` is cut into `br × bc` blocks (edge blocks partial). Each block gets
//! `s = max(amax, 1e-4) / 448` from its own max-abs (computed online, from the data being
//! quantised), optionally rounded up to a power of two ("ue8m0"), and stores `q = x / s` in
//! E4M3. Activations use `1 × 128` tiles, weights `128 × 128` blocks.

use crate::convert::e4m3_saturating;
use crate::{AMAX_FLOOR, BLOCK, E4M3_MAX, Fp8Error, Result};
use float8::F8E4M3;
use rayon::prelude::*;

/// How a block scale is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleFormat {
    /// `s = amax / 448` in fp32.
    Fp32,
    /// `s = 2^ceil(log2(amax / 448))`: an unsigned 8-bit exponent, no mantissa (ue8m0).
    Ue8m0,
}

/// An E4M3 matrix with one scale per `block.0 × block.1` block.
#[derive(Clone, Debug)]
pub struct BlockQuant {
    /// Rows of the matrix.
    pub rows: usize,
    /// Columns of the matrix.
    pub cols: usize,
    /// Block shape `(rows, cols)`: `(1, 128)` activation tiles, `(128, 128)` weight blocks.
    pub block: (usize, usize),
    /// E4M3 values, row-major `[rows, cols]`.
    pub data: Vec<F8E4M3>,
    /// Per-block scales (dequantised = fp8 · scale_inv), row-major `[ceil(rows/br), ceil(cols/bc)]`.
    pub scale_inv: Vec<f32>,
}

impl BlockQuant {
    /// Shape of the scale grid: `[ceil(rows/br), ceil(cols/bc)]`.
    pub fn scale_shape(&self) -> [usize; 2] {
        [self.rows.div_ceil(self.block.0), self.cols.div_ceil(self.block.1)]
    }

    /// The scale that applies to element `(r, c)`.
    #[inline]
    pub fn scale_at(&self, r: usize, c: usize) -> f32 {
        self.scale_inv[(r / self.block.0) * self.cols.div_ceil(self.block.1) + c / self.block.1]
    }

    /// Dequantise to f32, row-major `[rows, cols]`: each element is `fp8 · scale_inv` of its block.
    pub fn dequantize(&self) -> Vec<f32> {
        let lut = crate::convert::e4m3_table();
        let sc = self.cols.div_ceil(self.block.1);
        let mut out = Vec::with_capacity(self.data.len());
        for r in 0..self.rows {
            let srow = &self.scale_inv[(r / self.block.0) * sc..(r / self.block.0 + 1) * sc];
            for (c, q) in self.data[r * self.cols..(r + 1) * self.cols].iter().enumerate() {
                out.push(lut[q.to_bits() as usize] * srow[c / self.block.1]);
            }
        }
        out
    }

    /// The transpose `[cols, rows]` with `(bc, br)` blocks; exact (no requantisation), so a
    /// 128×128-block weight can feed the activation-gradient GEMM.
    pub fn transpose(&self) -> BlockQuant {
        let mut data = Vec::with_capacity(self.data.len());
        for c in 0..self.cols {
            for r in 0..self.rows {
                data.push(self.data[r * self.cols + c]);
            }
        }
        let [sr, sc] = self.scale_shape();
        let mut scale_inv = Vec::with_capacity(self.scale_inv.len());
        for j in 0..sc {
            for i in 0..sr {
                scale_inv.push(self.scale_inv[i * sc + j]);
            }
        }
        BlockQuant { rows: self.cols, cols: self.rows, block: (self.block.1, self.block.0), data, scale_inv }
    }
}

/// The scale of a block whose max-abs is `amax`: `max(amax, 1e-4) / 448`, rounded up to a power of
/// two for [`ScaleFormat::Ue8m0`] (so `amax / s ≤ 448` still holds).
pub fn block_scale(amax: f32, fmt: ScaleFormat) -> f32 {
    let s = amax.max(AMAX_FLOOR) / E4M3_MAX;
    match fmt {
        ScaleFormat::Fp32 => s,
        ScaleFormat::Ue8m0 => {
            // s is a positive normal f32 (≥ 1e-4/448); a mantissa ≠ 0 means "not a power of two".
            let bits = s.to_bits();
            if bits & 0x007F_FFFF == 0 { s } else { f32::from_bits((bits & 0x7F80_0000) + 0x0080_0000) }
        }
    }
}

/// `rows · cols`, or an error naming `field` when it overflows `usize`.
pub(crate) fn checked_numel(field: &str, rows: usize, cols: usize) -> Result<usize> {
    rows.checked_mul(cols).ok_or_else(|| Fp8Error::Arg {
        field: field.into(),
        value: format!("shape [{rows}, {cols}]"),
        detail: "element count overflows usize".into(),
    })
}

/// Quantise a row-major `[rows, cols]` matrix with `block` = `(br, bc)` blocks.
///
/// `field` names the operand in errors. Non-finite input is rejected.
pub fn quantize_blocks(
    field: &str,
    x: &[f32],
    rows: usize,
    cols: usize,
    block: (usize, usize),
    fmt: ScaleFormat,
) -> Result<BlockQuant> {
    let n = checked_numel(field, rows, cols)?;
    if x.len() != n {
        return Err(Fp8Error::Len { field: field.into(), shape: vec![rows, cols], expected: n, got: x.len() });
    }
    if block.0 == 0 || block.1 == 0 {
        return Err(Fp8Error::Arg {
            field: format!("{field}.block"),
            value: format!("{block:?}"),
            detail: "block sides must be positive".into(),
        });
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Fp8Error::NonFinite { field: field.into(), index: i, value: x[i] });
    }
    let (sr, sc) = (rows.div_ceil(block.0), cols.div_ceil(block.1));
    let mut scale_inv = vec![0f32; sr * sc];
    let mut data = vec![F8E4M3::from_bits(0); rows * cols];
    if n == 0 {
        return Ok(BlockQuant { rows, cols, block, data, scale_inv });
    }
    // One task per row of blocks (independent outputs); rows of tiles are grouped so that a task
    // holds at least ~16k elements.
    let group = 16_384usize.div_ceil(block.0 * cols).max(1);
    let per_task = group * block.0 * cols;
    data.par_chunks_mut(per_task).zip(scale_inv.par_chunks_mut(group * sc)).enumerate().for_each(
        |(t, (dchunk, schunk))| {
            let base = t * group * block.0;
            for (gi, srow) in schunk.chunks_mut(sc).enumerate() {
                let r0 = base + gi * block.0;
                let r1 = (r0 + block.0).min(rows);
                for (bj, sv) in srow.iter_mut().enumerate() {
                    let (c0, c1) = (bj * block.1, ((bj + 1) * block.1).min(cols));
                    let mut amax = 0f32;
                    for r in r0..r1 {
                        for &v in &x[r * cols + c0..r * cols + c1] {
                            amax = amax.max(v.abs());
                        }
                    }
                    let s = block_scale(amax, fmt);
                    *sv = s;
                    for r in r0..r1 {
                        let dst = &mut dchunk[(r - base) * cols + c0..(r - base) * cols + c1];
                        for (d, &v) in dst.iter_mut().zip(&x[r * cols + c0..r * cols + c1]) {
                            *d = e4m3_saturating(v / s);
                        }
                    }
                }
            }
        },
    );
    Ok(BlockQuant { rows, cols, block, data, scale_inv })
}

/// Activation quantiser: `1 × 128` tiles along the row (per token, per 128 channels).
pub fn quantize_act(field: &str, x: &[f32], rows: usize, cols: usize, fmt: ScaleFormat) -> Result<BlockQuant> {
    quantize_blocks(field, x, rows, cols, (1, BLOCK), fmt)
}

/// Weight quantiser: `128 × 128` blocks of a `[out, in]` weight; `scale_inv` is `[ceil(out/128), ceil(in/128)]`.
pub fn quantize_weight(field: &str, w: &[f32], out: usize, inp: usize, fmt: ScaleFormat) -> Result<BlockQuant> {
    quantize_blocks(field, w, out, inp, (BLOCK, BLOCK), fmt)
}
