//! Learning-rate schedules.

/// A learning rate as a function of the (0-based) step.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// The same rate every step.
    Constant { lr: f64 },
    /// Linear warmup from 0 to `peak` over `warmup` steps, then cosine decay to
    /// `peak·min_ratio` at `total` (and constant after), as `get_cosine_schedule_with_warmup`
    /// with a floor.
    WarmupCosine { peak: f64, warmup: usize, total: usize, min_ratio: f64 },
}

impl Schedule {
    /// The rate at `step`.
    pub fn lr(&self, step: usize) -> f64 {
        match *self {
            Schedule::Constant { lr } => lr,
            Schedule::WarmupCosine { peak, warmup, total, min_ratio } => {
                if step < warmup {
                    return peak * (step + 1) as f64 / warmup as f64;
                }
                let span = total.saturating_sub(warmup).max(1);
                let t = ((step - warmup) as f64 / span as f64).min(1.0);
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
                peak * (min_ratio + (1.0 - min_ratio) * cos)
            }
        }
    }
}
