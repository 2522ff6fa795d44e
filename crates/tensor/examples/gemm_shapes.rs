use std::time::Instant;
use tensor::ops::matmul::matmul;
use tensor::{DType, Device, Tensor};
fn main() {
    let shapes: &[(usize, usize, usize, bool, bool)] = &[
        (2048, 128, 256, false, true),
        (2048, 256, 128, false, true),
        (128, 256, 2048, true, false),
        (512, 128, 256, false, true),
        (512, 256, 128, false, true),
        (128, 256, 512, true, false),
        (2048, 512, 256, false, true),
        (2048, 256, 512, false, false),
        (2048, 192, 128, false, true),
        (2048, 80, 256, false, true),
    ];
    for &(m, n, k, ta, tb) in shapes {
        let a = if ta {
            Tensor::randn(&[k, m], 1.0, 1, DType::F32, &Device::Cpu)
        } else {
            Tensor::randn(&[m, k], 1.0, 1, DType::F32, &Device::Cpu)
        }
        .unwrap();
        let b = if tb {
            Tensor::randn(&[n, k], 1.0, 2, DType::F32, &Device::Cpu)
        } else {
            Tensor::randn(&[k, n], 1.0, 2, DType::F32, &Device::Cpu)
        }
        .unwrap();
        for _ in 0..3 {
            matmul(&a, &b, ta, tb).unwrap();
        }
        let reps = 30;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(matmul(&a, &b, ta, tb).unwrap());
            }
            best = best.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        println!(
            "{m}x{n}x{k} ta={ta} tb={tb}: {:.3} ms {:.1} GFLOP/s",
            best * 1e3,
            2.0 * (m * n * k) as f64 / best / 1e9
        );
    }
}
