//! Row-major strided iteration for the copying ops (permute, broadcast_to, broadcasting
//! arithmetic, `reduce_to`; `narrow` copies contiguous runs directly): an odometer over every dimension but the last, and a tight inner loop (a
//! `memcpy` when the innermost stride is 1). ndarray's dynamic-rank iterators cost a few
//! nanoseconds per element; these loops cost a fraction of that.

/// Row-major strides of a contiguous tensor of `shape`.
pub(crate) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Strides that read a contiguous tensor of `shape` as its broadcast to `out` (right-aligned;
/// 0 along broadcast dimensions). `shape` must broadcast to `out`.
pub(crate) fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let cs = contiguous_strides(shape);
    let off = out.len() - shape.len();
    (0..out.len()).map(|i| if i < off || shape[i - off] == 1 { 0 } else { cs[i - off] }).collect()
}

/// Call `f(offsets, len)` for every innermost row of `out` in row-major order, where
/// `offsets[k]` is the start of the row in operand `k` read with `strides[k]`.
pub(crate) fn for_each_row<const K: usize>(
    out: &[usize],
    strides: [&[usize]; K],
    mut f: impl FnMut([usize; K], usize),
) {
    let r = out.len();
    if out.contains(&0) {
        return;
    }
    if r == 0 {
        f([0; K], 1);
        return;
    }
    let inner = out[r - 1];
    let mut idx = vec![0usize; r - 1];
    let mut off = [0usize; K];
    loop {
        f(off, inner);
        // Advance the odometer over dims 0..r-1.
        let mut d = r - 1;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            for k in 0..K {
                off[k] += strides[k][d];
            }
            if idx[d] < out[d] {
                break;
            }
            for k in 0..K {
                off[k] -= strides[k][d] * out[d];
            }
            idx[d] = 0;
        }
    }
}

/// Materialise `src` read with `strides` as a contiguous tensor of shape `out`.
pub(crate) fn gather<T: Copy>(src: &[T], out: &[usize], strides: &[usize]) -> Vec<T> {
    let n: usize = out.iter().product();
    let mut v = Vec::with_capacity(n);
    let last = strides.last().copied().unwrap_or(1);
    for_each_row(out, [strides], |[o], len| {
        if last == 1 {
            v.extend_from_slice(&src[o..o + len]);
        } else {
            v.extend((0..len).map(|i| src[o + i * last]));
        }
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_matches_index_arithmetic_for_a_permutation() {
        // [2, 3, 4] permuted to (2, 0, 1): out[i][j][k] = x[j][k][i].
        let x: Vec<u32> = (0..24).collect();
        let cs = contiguous_strides(&[2, 3, 4]);
        let perm = [2, 0, 1];
        let out = [4, 2, 3];
        let st: Vec<usize> = perm.iter().map(|&p| cs[p]).collect();
        let v = gather(&x, &out, &st);
        for i in 0..4 {
            for j in 0..2 {
                for k in 0..3 {
                    assert_eq!(v[(i * 2 + j) * 3 + k], x[(j * 3 + k) * 4 + i]);
                }
            }
        }
    }

    #[test]
    fn broadcast_strides_repeat_size_one_dims() {
        let x = [10u32, 20, 30];
        let v = gather(&x, &[2, 3], &broadcast_strides(&[3], &[2, 3]));
        assert_eq!(v, [10, 20, 30, 10, 20, 30]);
        let v = gather(&x, &[3, 2], &broadcast_strides(&[3, 1], &[3, 2]));
        assert_eq!(v, [10, 10, 20, 20, 30, 30]);
    }
}
