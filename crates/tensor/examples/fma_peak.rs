//! The CPU's f32 FMA peak: twelve independent 8-lane FMA chains per thread (enough to cover
//! the FMA latency on both pipes), on one thread and then on every core at once. The ceiling any
//! GEMM on this machine can approach; docs/PERF.md sets the step's GEMM rates against it.
//!
//! `cargo run --release -p tensor --example fma_peak [-- threads]` (x86-64 with AVX2 + FMA).

use std::time::Instant;

/// Iterations of the twelve-FMA body per measurement (~2.4 GFLOP·10).
const ITERS: u64 = 200_000_000;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn chains() -> (f64, f32) {
    use std::arch::x86_64::*;
    let b = _mm256_set1_ps(1.000_000_1);
    let c = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_setzero_ps(); 12];
    for (i, a) in acc.iter_mut().enumerate() {
        *a = _mm256_set1_ps(i as f32);
    }
    let t = Instant::now();
    for _ in 0..ITERS {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, b, c);
        }
    }
    let s = t.elapsed().as_secs_f64();
    // Fold the lanes so the loop is not optimised away.
    let mut out = [0f32; 8];
    let mut sum = 0f32;
    for a in acc {
        // SAFETY: `out` holds eight f32.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), a) };
        sum += out[0];
    }
    (12.0 * 8.0 * 2.0 * ITERS as f64 / s / 1e9, sum)
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            eprintln!("fma_peak needs AVX2 + FMA");
            return;
        }
        let threads: usize = std::env::args()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        // SAFETY: AVX2 + FMA checked above.
        let (one, _) = unsafe { chains() };
        println!("1 thread: {one:.1} GFLOP/s");
        let each: Vec<f64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|_| s.spawn(|| unsafe { chains() }.0)).collect();
            hs.into_iter().map(|h| h.join().expect("FMA thread")).collect()
        });
        let per: Vec<String> = each.iter().map(|g| format!("{g:.1}")).collect();
        println!("{threads} threads at once: {:.1} GFLOP/s ({} each)", each.iter().sum::<f64>(), per.join(" / "));
    }
    #[cfg(not(target_arch = "x86_64"))]
    eprintln!("fma_peak measures x86-64 AVX2 + FMA only");
}
