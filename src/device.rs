//! Where tensors live: `--device cpu | cuda | cuda:N`.
//!
//! The CPU is the default and always there. CUDA needs a `bench` built with
//! the `cuda` feature (`scripts/build-cuda.sh`) and a GPU with its driver at
//! run time. On any device but the CPU the fused kernels are replaced by
//! the composed candle path ([`crate::model::kernels::Kernels`]), which candle runs on
//! the device.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A device as the command line names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
}

/// Whether this build can use CUDA.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::invalid("--device", s, "cpu, cuda or cuda:N (N the GPU's ordinal)");
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
                n.parse().map(DeviceSpec::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Open the device (a CUDA context on the GPU).
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(_) if !CUDA_BUILT => Err(Error::invalid(
                "--device",
                self,
                "this bench was built without CUDA; build one with scripts/build-cuda.sh (cargo build --release --features cuda)",
            )),
            DeviceSpec::Cuda(n) => Device::new_cuda(n).map_err(|e| {
                Error::invalid("--device", self, format!("cannot open the GPU: {e}"))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print_back() {
        for (s, d) in [
            ("cpu", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap(), d);
        }
        assert_eq!(DeviceSpec::Cuda(0).to_string(), "cuda:0");
        for bad in ["gpu", "cuda:", "cuda:x", "CPU"] {
            let e = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(e.contains("--device") && e.contains("cuda:N"), "{e}");
        }
        if !CUDA_BUILT {
            let e = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
            assert!(e.contains("built without CUDA"), "{e}");
        }
    }
}
