//! Real GPUs through NVML (libnvidia-ml, loaded at run time). Counters a GPU does not support
//! (ECC on consumer parts, power on some boards) read as 0.

use std::collections::HashMap;

use nvml_wrapper::{
    Device, Nvml,
    enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor},
};

use super::{GpuError, GpuReading, GpuSampler};

/// Reads every GPU NVML sees.
pub struct NvmlSampler {
    nvml: Nvml,
}

impl std::fmt::Debug for NvmlSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlSampler").finish_non_exhaustive()
    }
}

impl NvmlSampler {
    /// Loads NVML; without a driver this fails with a message saying what to do.
    pub fn init() -> Result<Self, GpuError> {
        let nvml = Nvml::init().map_err(|e| GpuError::NoNvml(e.to_string()))?;
        Ok(Self { nvml })
    }
}

fn read(index: u32, d: &Device<'_>) -> Result<GpuReading, GpuError> {
    let e = |e: nvml_wrapper::error::NvmlError| GpuError::Nvml(format!("GPU {index}: {e}"));
    let utilization = d.utilization_rates().map_err(e)?;
    let memory = d.memory_info().map_err(e)?;
    let ecc = [MemoryError::Corrected, MemoryError::Uncorrected]
        .into_iter()
        .filter_map(|kind| d.total_ecc_errors(kind, EccCounter::Aggregate).ok())
        .sum();
    Ok(GpuReading {
        index,
        uuid: d.uuid().map_err(e)?,
        product: d.name().map_err(e)?,
        utilization_gpu: f64::from(utilization.gpu),
        utilization_memory: f64::from(utilization.memory),
        memory_used_bytes: memory.used,
        memory_total_bytes: memory.total,
        power_watts: d.power_usage().map(|mw| f64::from(mw) / 1000.0).unwrap_or(0.0),
        temperature_celsius: d
            .temperature(TemperatureSensor::Gpu)
            .map(f64::from)
            .unwrap_or(0.0),
        sm_clock_mhz: d.clock_info(Clock::SM).unwrap_or(0),
        // XID events need an NVML event set held across rounds; not read in this release.
        xid_errors: 0,
        ecc_errors: ecc,
        processes: d.running_compute_processes().map(|p| p.len() as u32).unwrap_or(0),
    })
}

impl GpuSampler for NvmlSampler {
    fn simulated(&self) -> bool {
        false
    }

    fn sample(&mut self, _busy: &HashMap<String, f64>) -> Result<Vec<GpuReading>, GpuError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|e| GpuError::Nvml(e.to_string()))?;
        (0..count)
            .map(|i| {
                let device = self
                    .nvml
                    .device_by_index(i)
                    .map_err(|e| GpuError::Nvml(format!("GPU {i}: {e}")))?;
                read(i, &device)
            })
            .collect()
    }
}
