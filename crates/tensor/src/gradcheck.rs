//! Finite-difference gradient checking in f64, shared by every crate.
//!
//! A check takes a scalar function of some input tensors and the analytic gradients the
//! backward pass produced, perturbs input elements by ±ε, and compares the central difference
//! `(f(x+ε) − f(x−ε)) / 2ε` with the analytic value: `|a − n| ≤ atol + floor + rtol·max(|a|, |n|)`,
//! where `floor = 8·ε_f64·|f| / 2ε` is the rounding error of the difference quotient itself.
//! Run the function in f64 (CPU) so the comparison measures the backward, not rounding.

use rand::{SeedableRng, seq::index::sample};

use crate::{DType, Result, Tensor};

/// Tolerances and sampling for [`check`].
#[derive(Clone, Debug)]
pub struct GradCheck {
    pub eps: f64,
    pub rtol: f64,
    pub atol: f64,
    /// At most this many elements per input are perturbed (a seeded sample; all when fewer).
    pub max_per_input: usize,
    pub seed: u64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck { eps: 1e-6, rtol: 1e-5, atol: 1e-8, max_per_input: 64, seed: 0 }
    }
}

/// One mismatching element.
#[derive(Clone, Debug)]
pub struct Mismatch {
    pub input: usize,
    pub index: usize,
    pub analytic: f64,
    pub numeric: f64,
}

/// The outcome of a check.
#[derive(Clone, Debug, Default)]
pub struct GradReport {
    pub checked: usize,
    pub max_abs_err: f64,
    pub mismatches: Vec<Mismatch>,
}

impl GradReport {
    /// Did every checked element agree?
    pub fn ok(&self) -> bool {
        self.mismatches.is_empty() && self.checked > 0
    }

    /// Panic with the first mismatches unless [`GradReport::ok`] (for tests).
    #[track_caller]
    pub fn assert_ok(&self, what: &str) {
        assert!(
            self.ok(),
            "{what}: gradient check failed: {} of {} elements differ (max abs err {:e}); first: {:?}",
            self.mismatches.len(),
            self.checked,
            self.max_abs_err,
            &self.mismatches[..self.mismatches.len().min(5)]
        );
    }
}

/// Compare `analytic[i]` with central differences of `f` with respect to `inputs[i]`.
/// `inputs` should be f64 CPU tensors; `f` must be deterministic.
pub fn check(
    f: impl Fn(&[Tensor]) -> Result<f64>,
    inputs: &[Tensor],
    analytic: &[Tensor],
    opts: &GradCheck,
) -> Result<GradReport> {
    let mut rep = GradReport::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let mut cur: Vec<Tensor> = inputs.iter().map(|t| t.to_cpu()?.to_dtype(DType::F64)).collect::<Result<_>>()?;
    for (i, a) in analytic.iter().enumerate() {
        let a = a.to_vec_f64()?;
        let base = cur[i].to_vec_f64()?;
        if a.len() != base.len() {
            return Err(crate::TensorError::Arg {
                op: "gradcheck",
                detail: format!("input {i}: {} analytic values for {} elements", a.len(), base.len()),
            });
        }
        let idx: Vec<usize> = if base.len() <= opts.max_per_input {
            (0..base.len()).collect()
        } else {
            sample(&mut rng, base.len(), opts.max_per_input).into_vec()
        };
        let shape = cur[i].shape().clone();
        for j in idx {
            let mut v = base.clone();
            v[j] = base[j] + opts.eps;
            cur[i] = Tensor::from_vec(v.clone(), &shape)?;
            let fp = f(&cur)?;
            v[j] = base[j] - opts.eps;
            cur[i] = Tensor::from_vec(v, &shape)?;
            let fm = f(&cur)?;
            let num = (fp - fm) / (2.0 * opts.eps);
            // The difference quotient itself carries rounding error: each f value is exact only
            // to a few ulps of |f|, so differences below that floor are not evidence of a wrong
            // gradient (this matters for tiny gradients of losses with a large magnitude).
            let floor = 8.0 * f64::EPSILON * fp.abs().max(fm.abs()) / (2.0 * opts.eps);
            let err = (a[j] - num).abs();
            rep.checked += 1;
            rep.max_abs_err = rep.max_abs_err.max(err);
            if err > opts.atol + floor + opts.rtol * a[j].abs().max(num.abs()) || !err.is_finite() {
                rep.mismatches.push(Mismatch { input: i, index: j, analytic: a[j], numeric: num });
            }
        }
        cur[i] = Tensor::from_vec(base, &shape)?;
    }
    Ok(rep)
}

/// `Σ y ⊙ r` in f64: the scalar loss used to check an op's backward with output gradient `r`.
pub fn project(y: &Tensor, r: &Tensor) -> Result<f64> {
    let (a, b) = (y.to_vec_f64()?, r.to_vec_f64()?);
    if a.len() != b.len() {
        return Err(crate::error::shape_err("project", "y and r differ in size", &[y.shape(), r.shape()]));
    }
    Ok(a.iter().zip(&b).map(|(x, y)| x * y).sum())
}
