//! Real GPUs through NVML (libnvidia-ml, loaded at run time). Counters a GPU does not support
//! (ECC on consumer parts, power on some boards) read as 0.

use std::{collections::HashMap, sync::Mutex};

use nvml_wrapper::{
    Device, EventSet, Nvml,
    bitmasks::event::EventTypes,
    enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor},
    error::NvmlError,
};

use super::{GpuError, GpuReading, GpuSampler};

/// Reads every GPU NVML sees.
pub struct NvmlSampler {
    // Leaked once at start-up: the XID event set borrows NVML for the life of the process.
    nvml: &'static Nvml,
    /// Critical XID events of every GPU that supports them; None where none does.
    xid_events: Option<Mutex<EventSet<'static>>>,
    /// XID errors seen per GPU UUID since start.
    xids: HashMap<String, u64>,
}

impl std::fmt::Debug for NvmlSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlSampler").finish_non_exhaustive()
    }
}

impl NvmlSampler {
    /// Loads NVML; without a driver this fails with a message saying what to do.
    pub fn init() -> Result<Self, GpuError> {
        let nvml: &'static Nvml = Box::leak(Box::new(
            Nvml::init().map_err(|e| GpuError::NoNvml(e.to_string()))?,
        ));
        let xid_events = register_xid_events(nvml);
        if xid_events.is_none() {
            tracing::info!("no GPU reports XID events; DCGM_FI_DEV_XID_ERRORS stays 0");
        }
        Ok(Self {
            nvml,
            xid_events: xid_events.map(Mutex::new),
            xids: HashMap::new(),
        })
    }

    /// Counts the XID events waiting in the set (never blocks).
    fn drain_xid_events(&mut self) {
        let Some(set) = &self.xid_events else { return };
        let Ok(set) = set.lock() else { return };
        // Bounded: a storm of events is read over several rounds.
        for _ in 0..1024 {
            match set.wait(0) {
                Ok(event) if event.event_type.contains(EventTypes::CRITICAL_XID_ERROR) => {
                    if let Ok(uuid) = event.device.uuid() {
                        *self.xids.entry(uuid).or_default() += 1;
                    }
                }
                Ok(_) => {}
                Err(NvmlError::Timeout) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "reading XID events");
                    return;
                }
            }
        }
    }
}

/// One event set with critical XID errors of every GPU that supports them.
fn register_xid_events(nvml: &'static Nvml) -> Option<EventSet<'static>> {
    let mut set = nvml.create_event_set().ok()?;
    let mut any = false;
    for i in 0..nvml.device_count().ok()? {
        let Ok(device) = nvml.device_by_index(i) else {
            continue;
        };
        let supported = device
            .supported_event_types()
            .is_ok_and(|t| t.contains(EventTypes::CRITICAL_XID_ERROR));
        if supported {
            // Registration consumes the set; on failure it is gone, and XIDs stay unread.
            set = device.register_events(EventTypes::CRITICAL_XID_ERROR, set).ok()?;
            any = true;
        }
    }
    any.then_some(set)
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
        self.drain_xid_events();
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
                let mut reading = read(i, &device)?;
                reading.xid_errors = self.xids.get(&reading.uuid).copied().unwrap_or(0);
                Ok(reading)
            })
            .collect()
    }
}
