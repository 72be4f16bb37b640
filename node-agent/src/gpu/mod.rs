//! GPU sampling: NVML on real nodes, a simulation elsewhere. Both produce the same readings.

mod nvml;
mod simulated;

use std::collections::HashMap;

pub use nvml::NvmlSampler;
pub use simulated::SimulatedSampler;

/// One GPU at one instant.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GpuReading {
    pub index: u32,
    pub uuid: String,
    pub product: String,
    /// Percent 0..100.
    pub utilization_gpu: f64,
    /// Percent 0..100 of time the memory controller was busy.
    pub utilization_memory: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub power_watts: f64,
    pub temperature_celsius: f64,
    pub sm_clock_mhz: u32,
    /// Cumulative XID errors seen by this agent.
    pub xid_errors: u64,
    /// Cumulative ECC errors (corrected and uncorrected, aggregate), when the GPU reports them.
    pub ecc_errors: u64,
    /// Processes using the GPU (NVML compute processes; empty when simulated).
    pub processes: u32,
}

/// Why sampling failed.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "NVML is not available ({0}); on a GPU node mount the NVIDIA driver libraries (the NVIDIA \
         container toolkit does this), or run with --gpu-backend=simulated"
    )]
    NoNvml(String),
    #[error("NVML: {0}")]
    Nvml(String),
}

/// A source of GPU readings. `busy` maps a GPU UUID to the busy ratio (0..1) of the server using
/// it, which the simulation turns into utilization.
pub trait GpuSampler: Send + Sync {
    /// Whether readings are simulated.
    fn simulated(&self) -> bool;
    /// Reads every GPU of the node.
    fn sample(&mut self, busy: &HashMap<String, f64>) -> Result<Vec<GpuReading>, GpuError>;
}
