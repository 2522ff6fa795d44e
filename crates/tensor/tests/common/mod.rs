//! Shared test helpers: devices, seeded inputs, error norms.
#![allow(dead_code)]

use tensor::{DType, Device, Tensor};

/// Every device present (CPU, plus CUDA when built with `cuda` and a GPU is found).
pub fn devices() -> Vec<Device> {
    Device::all_available()
}

/// ‖a − b‖ / max(‖b‖, tiny).
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if a.iter().any(|x| x.is_nan()) {
        return f64::INFINITY;
    }
    num / den.max(1e-30)
}

/// A seeded N(0,1) f64 host vector.
pub fn randv(n: usize, seed: u64) -> Vec<f64> {
    Tensor::randn(&[n], 1.0, seed, DType::F64, &Device::Cpu).unwrap().to_vec_f64().unwrap()
}

/// A seeded f32 tensor on `dev`, and its f64 host values.
pub fn rand_on(shape: &[usize], seed: u64, dev: &Device) -> (Tensor, Vec<f64>) {
    let t = Tensor::randn(shape, 1.0, seed, DType::F32, dev).unwrap();
    let v = t.to_vec_f64().unwrap();
    (t, v)
}

/// A seeded f64 CPU tensor (for gradient checks).
pub fn rand64(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 1.0, seed, DType::F64, &Device::Cpu).unwrap()
}

/// f32 tolerance for a device (CUDA reductions reorder sums).
pub fn tol(dev: &Device) -> f64 {
    if dev.is_cpu() { 2e-6 } else { 1e-5 }
}
