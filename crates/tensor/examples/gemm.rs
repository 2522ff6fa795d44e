//! GEMM throughput: prints `n GFLOP/s` per line for square `n×n×n` products.
//!
//! `cargo run --release -p tensor --example gemm [-- cuda [bf16|f32] [sizes...]]`
//! CPU: f32, best of several repeats. CUDA: the median of timed batches after warm-up.

use std::time::Instant;

use tensor::ops::matmul::matmul;
use tensor::{DType, Device, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cuda = args.first().is_some_and(|a| a == "cuda");
    let dt = if args.iter().any(|a| a == "bf16") { DType::BF16 } else { DType::F32 };
    let mut sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let dev = if cuda {
        Device::all_available().into_iter().find(|d| !d.is_cpu()).ok_or("no CUDA device")?
    } else {
        Device::Cpu
    };
    if sizes.is_empty() {
        sizes = if cuda { vec![1024, 2048, 4096, 8192] } else { vec![256, 512, 1024, 2048] };
    }
    for n in sizes {
        let a = Tensor::randn(&[n, n], 1.0, 1, dt, &dev)?;
        let b = Tensor::randn(&[n, n], 1.0, 2, dt, &dev)?;
        let flops = 2.0 * (n as f64).powi(3);
        // CPU: best single product of several. CUDA: 10 batches of 10 products after warm-up,
        // each batch timed to a device synchronisation; the median batch.
        let (batches, per) = if cuda { (10, 10) } else { ((8e10 / flops).clamp(10.0, 300.0) as usize, 1) };
        matmul(&a, &b, false, false)?;
        dev.synchronize()?;
        let mut times = Vec::with_capacity(batches);
        for _ in 0..batches {
            let t = Instant::now();
            for _ in 0..per {
                matmul(&a, &b, false, false)?;
            }
            dev.synchronize()?;
            times.push(t.elapsed().as_secs_f64() / per as f64);
        }
        times.sort_by(|x, y| x.partial_cmp(y).unwrap());
        let t = if cuda { times[times.len() / 2] } else { times[0] };
        println!("{n} {:.1}", flops / t / 1e9);
    }
    Ok(())
}
