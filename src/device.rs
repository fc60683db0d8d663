//! Choosing where to compute: `cpu` (burn's flex backend) or `cuda:N` (burn's CUDA backend,
//! compiled in with the `cuda` cargo feature).

use crate::error::{ConfigError, Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| {
                    ConfigError::Unknown {
                        what: "device",
                        name: other.into(),
                        known: "cpu, cuda:N".into(),
                    }
                    .into()
                }),
        }
    }
}

/// Parse `cuda:0,cuda:1` (all of one kind).
pub fn parse_devices(list: &str) -> Result<Vec<DeviceSpec>> {
    let devices: Vec<DeviceSpec> = list.split(',').map(str::parse).collect::<Result<_>>()?;
    let cpus = devices.iter().filter(|d| **d == DeviceSpec::Cpu).count();
    if devices.is_empty() || (cpus > 0 && devices.len() > 1) {
        return Err(ConfigError::value("--devices", "one cpu, or one or more cuda:N", list).into());
    }
    Ok(devices)
}

/// The CUDA device `index`, checked to exist (a binary built with `cuda` still runs on
/// machines without a GPU, and says so clearly instead of crashing).
#[cfg(feature = "cuda")]
pub fn cuda_device(index: usize) -> Result<burn_cuda::CudaDevice> {
    use burn::tensor::Tensor;
    let device = burn_cuda::CudaDevice::new(index);
    // The CUDA runtime panics when no driver or GPU is found: catch it, quietly.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe = std::panic::catch_unwind(|| {
        let t = Tensor::<burn::backend::Cuda, 1>::ones([4], &device);
        t.sum().into_scalar()
    });
    std::panic::set_hook(hook);
    match probe {
        Ok(4.0) => Ok(device),
        Ok(v) => Err(Error::Device {
            device: format!("cuda:{index}"),
            why: format!("computed 1+1+1+1 = {v}: broken driver?"),
        }),
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown error".into());
            Err(Error::Device {
                device: format!("cuda:{index}"),
                why: format!(
                    "no usable CUDA GPU (is an NVIDIA driver installed and the GPU visible?): {}",
                    msg.lines().next().unwrap_or("")
                ),
            })
        }
    }
}

/// Let f32 matrix products on CUDA run as TF32 on tensor cores (10-bit mantissa, ~1e-3
/// relative error, several times faster on large products). Off by default, as PyTorch's
/// `torch.backends.cuda.matmul.allow_tf32`: then f32 is f32 and the parity tests hold at 1e-4.
/// Call before the first GPU matmul (autotune results are cached per shape). No effect on CPU.
pub fn allow_tf32(allowed: bool) {
    #[cfg(feature = "cuda")]
    cubek_matmul::definition::set_tf32_allowed(allowed);
    #[cfg(not(feature = "cuda"))]
    let _ = allowed;
}

#[cfg(not(feature = "cuda"))]
pub fn cuda_device(index: usize) -> Result<()> {
    Err(Error::Device {
        device: format!("cuda:{index}"),
        why: "this binary was built without GPU support: rebuild with `cargo build --release --features cuda`".into(),
    })
}
