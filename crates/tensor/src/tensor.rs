//! The tensor: a contiguous row-major buffer on a [`Device`], shared by reference counting.
//!
//! Tensors are values: ops never mutate their inputs, they return new tensors. Cloning a tensor
//! is cheap (the buffer is shared); [`Tensor::reshape`] shares the buffer too.

use std::sync::Arc;

use half::bf16;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, StandardUniform};

use crate::dtype::{DType, Element};
use crate::error::{Result, TensorError, shape_err};

/// A tensor shape (row-major, last dimension contiguous).
pub type Shape = Vec<usize>;

/// Where a tensor's buffer lives.
#[derive(Clone)]
pub enum Device {
    /// Host memory; ops run on ndarray/gemm + rayon.
    Cpu,
    /// One CUDA device (feature `cuda`); ops run as cuBLAS calls and kernels.
    #[cfg(feature = "cuda")]
    Cuda(Arc<crate::cuda::CudaBackend>),
}

impl Device {
    /// Is this the host?
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    /// Same device (for CUDA: the same backend instance).
    pub fn same(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            #[cfg(feature = "cuda")]
            (Device::Cuda(a), Device::Cuda(b)) => Arc::ptr_eq(a, b),
            #[cfg(feature = "cuda")]
            _ => false,
        }
    }

    /// Wait until all work queued on the device has finished (a no-op on the CPU).
    pub fn synchronize(&self) -> crate::Result<()> {
        match self {
            Device::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => b.synchronize(),
        }
    }

    /// Every device present on this machine: the CPU, then CUDA device 0 when the `cuda`
    /// feature is on and a GPU with a driver is found. Test bodies loop over this list.
    pub fn all_available() -> Vec<Device> {
        #[allow(unused_mut)]
        let mut v = vec![Device::Cpu];
        #[cfg(feature = "cuda")]
        if let Some(b) = crate::cuda::CudaBackend::try_default() {
            v.push(Device::Cuda(b));
        }
        v
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => write!(f, "cuda:{}", b.ordinal()),
        }
    }
}

/// A host buffer.
#[derive(Clone, Debug)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
}

impl CpuStorage {
    fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::BF16(_) => DType::BF16,
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
        }
    }

    /// Convert every element (exact for widening, round-to-nearest-even for narrowing).
    pub(crate) fn convert(&self, dt: DType) -> CpuStorage {
        fn map<A: Element, B: Element>(v: &[A]) -> Vec<B> {
            v.iter().map(|x| B::from_f64(x.to_f64())).collect()
        }
        match (self, dt) {
            (CpuStorage::F32(v), DType::F32) => CpuStorage::F32(v.clone()),
            (CpuStorage::F64(v), DType::F64) => CpuStorage::F64(v.clone()),
            (CpuStorage::BF16(v), DType::BF16) => CpuStorage::BF16(v.clone()),
            (CpuStorage::F32(v), DType::BF16) => CpuStorage::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
            (CpuStorage::BF16(v), DType::F32) => CpuStorage::F32(v.iter().map(|x| x.to_f32()).collect()),
            (CpuStorage::F32(v), DType::F64) => CpuStorage::F64(map(v)),
            (CpuStorage::F64(v), DType::F32) => CpuStorage::F32(map(v)),
            (CpuStorage::F64(v), DType::BF16) => CpuStorage::BF16(map(v)),
            (CpuStorage::BF16(v), DType::F64) => CpuStorage::F64(map(v)),
        }
    }
}

/// A buffer on some device.
pub enum Storage {
    Cpu(CpuStorage),
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::CudaStorage),
}

/// An n-dimensional array of f32, f64 or bf16 on a [`Device`].
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    shape: Shape,
    device: Device,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?}, {:?})", self.shape, self.dtype(), self.device)
    }
}

/// Element count of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    pub(crate) fn from_storage(storage: Storage, shape: Shape, device: Device) -> Tensor {
        Tensor { storage: Arc::new(storage), shape, device }
    }

    /// A CPU tensor owning `data`, which must hold `numel(shape)` elements.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        if data.len() != numel(shape) {
            return Err(shape_err(
                "from_vec",
                format!("{} elements for {} slots", data.len(), numel(shape)),
                &[&shape.to_vec()],
            ));
        }
        let s = to_cpu_storage(data);
        Ok(Tensor::from_storage(Storage::Cpu(s), shape.to_vec(), Device::Cpu))
    }

    /// A tensor on `device` copied from `data`.
    pub fn from_slice<T: Element>(data: &[T], shape: &[usize], device: &Device) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape)?.to_device(device)
    }

    /// A scalar (shape `[]`).
    pub fn scalar(x: f64, dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::full(&[], x, dtype, device)
    }

    /// Every element equal to `value`.
    pub fn full(shape: &[usize], value: f64, dtype: DType, device: &Device) -> Result<Tensor> {
        let n = numel(shape);
        let s = match dtype {
            DType::F32 => CpuStorage::F32(vec![value as f32; n]),
            DType::F64 => CpuStorage::F64(vec![value; n]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::from_f64(value); n]),
        };
        Tensor::from_storage(Storage::Cpu(s), shape.to_vec(), Device::Cpu).to_device(device)
    }

    /// Zeros.
    pub fn zeros(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::full(shape, 0.0, dtype, device)
    }

    /// Normal(0, std²) entries from a seeded generator (reproducible across devices).
    pub fn randn(shape: &[usize], std: f64, seed: u64, dtype: DType, device: &Device) -> Result<Tensor> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dist =
            Normal::new(0.0, std).map_err(|e| TensorError::Arg { op: "randn", detail: format!("std {std}: {e}") })?;
        let v: Vec<f64> = (0..numel(shape)).map(|_| dist.sample(&mut rng)).collect();
        Tensor::from_vec(v, shape)?.to_dtype(dtype)?.to_device(device)
    }

    /// Uniform entries in `[lo, hi)` from a seeded generator.
    pub fn rand_uniform(shape: &[usize], lo: f64, hi: f64, seed: u64, dtype: DType, device: &Device) -> Result<Tensor> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let v: Vec<f64> = (0..numel(shape))
            .map(|_| {
                let u: f64 = StandardUniform.sample(&mut rng);
                lo + (hi - lo) * u
            })
            .collect();
        Tensor::from_vec(v, shape)?.to_dtype(dtype)?.to_device(device)
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Size of dimension `d` (negative counts from the end).
    pub fn dim(&self, d: isize) -> usize {
        let r = self.shape.len() as isize;
        self.shape[if d < 0 { (r + d) as usize } else { d as usize }]
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match &*self.storage {
            Storage::Cpu(s) => s.dtype(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.dtype(),
        }
    }

    /// The device holding the buffer.
    pub fn device(&self) -> &Device {
        &self.device
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The buffer, mutably, when no other handle shares it (for in-place writes into a cache
    /// that owns its buffer, [`crate::ops::cache::write_at`]).
    pub(crate) fn storage_mut(&mut self) -> Option<&mut Storage> {
        Arc::get_mut(&mut self.storage)
    }

    /// The same buffer viewed with another shape of equal element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(shape_err(
                "reshape",
                format!("{} elements cannot take shape {:?}", self.numel(), shape),
                &[&self.shape],
            ));
        }
        Ok(Tensor { storage: self.storage.clone(), shape: shape.to_vec(), device: self.device.clone() })
    }

    /// A copy on `device` (a cheap clone when already there).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device.same(device) {
            return Ok(self.clone());
        }
        match (&*self.storage, device) {
            #[cfg(feature = "cuda")]
            (Storage::Cpu(s), Device::Cuda(b)) => {
                let st = b.upload(s)?;
                Ok(Tensor::from_storage(Storage::Cuda(st), self.shape.clone(), device.clone()))
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(s), _) => {
                let host = s.download(self.numel())?;
                Tensor::from_storage(Storage::Cpu(host), self.shape.clone(), Device::Cpu).to_device(device)
            }
            _ => Ok(self.clone()),
        }
    }

    /// A host copy (a cheap clone when already on the host).
    pub fn to_cpu(&self) -> Result<Tensor> {
        self.to_device(&Device::Cpu)
    }

    /// Convert the element type (round-to-nearest-even when narrowing).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        match &*self.storage {
            Storage::Cpu(s) => {
                Ok(Tensor::from_storage(Storage::Cpu(s.convert(dtype)), self.shape.clone(), Device::Cpu))
            }
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => crate::cuda::cast(self, dtype),
        }
    }

    /// The elements, converted to `T`, copied to the host.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        let t = self.to_cpu()?.to_dtype(T::DTYPE)?;
        let s = t.cpu_slice::<T>().ok_or_else(|| TensorError::DType {
            op: "to_vec",
            got: t.dtype(),
            detail: "conversion failed".into(),
        })?;
        Ok(s.to_vec())
    }

    /// The elements as `T` on the host, moved out without a copy when this is the only handle to
    /// a host buffer of element type `T` (an optimizer's moments), else copied as [`Tensor::to_vec`].
    pub fn into_vec<T: Element>(self) -> Result<Vec<T>> {
        if self.device.is_cpu() && self.dtype() == T::DTYPE {
            match Arc::try_unwrap(self.storage) {
                Ok(Storage::Cpu(s)) => {
                    use std::any::Any;
                    let any: Box<dyn Any> = match s {
                        CpuStorage::F32(v) => Box::new(v),
                        CpuStorage::F64(v) => Box::new(v),
                        CpuStorage::BF16(v) => Box::new(v),
                    };
                    if let Ok(v) = any.downcast::<Vec<T>>() {
                        return Ok(*v);
                    }
                    unreachable!("the dtype matched T");
                }
                #[cfg(feature = "cuda")]
                Ok(Storage::Cuda(_)) => unreachable!("the device is the CPU"),
                Err(shared) => {
                    let t = Tensor { storage: shared, shape: self.shape, device: self.device };
                    return t.to_vec();
                }
            }
        }
        self.to_vec()
    }

    /// All elements as f64 on the host.
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        self.to_vec::<f64>()
    }

    /// The single element of a one-element tensor.
    pub fn item(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(shape_err("item", "tensor has more than one element", &[&self.shape]));
        }
        Ok(self.to_vec_f64()?[0])
    }

    /// Borrow the host buffer when this tensor is on the CPU with element type `T`.
    pub fn cpu_slice<T: Element>(&self) -> Option<&[T]> {
        match &*self.storage {
            Storage::Cpu(s) => cpu_storage_slice(s),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => None,
        }
    }
}

pub(crate) fn to_cpu_storage<T: Element>(v: Vec<T>) -> CpuStorage {
    use std::any::Any;
    let b: Box<dyn Any> = Box::new(v);
    let b = match b.downcast::<Vec<f32>>() {
        Ok(v) => return CpuStorage::F32(*v),
        Err(b) => b,
    };
    let b = match b.downcast::<Vec<f64>>() {
        Ok(v) => return CpuStorage::F64(*v),
        Err(b) => b,
    };
    match b.downcast::<Vec<bf16>>() {
        Ok(v) => CpuStorage::BF16(*v),
        Err(_) => unreachable!("Element is implemented for f32, f64 and bf16 only"),
    }
}

fn cpu_storage_slice<T: Element>(s: &CpuStorage) -> Option<&[T]> {
    use std::any::Any;
    let any: &dyn Any = match s {
        CpuStorage::F32(v) => v,
        CpuStorage::F64(v) => v,
        CpuStorage::BF16(v) => v,
    };
    any.downcast_ref::<Vec<T>>().map(|v| v.as_slice())
}
