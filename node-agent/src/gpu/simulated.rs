//! Simulated GPUs for nodes without them (kwok nodes, CI): utilization follows the busy ratio of
//! the server attributed to each GPU, so the telemetry reflects real load.

use std::collections::HashMap;

use super::{GpuError, GpuReading, GpuSampler};

/// `count` GPUs of one product.
#[derive(Debug)]
pub struct SimulatedSampler {
    gpus: Vec<GpuReading>,
}

const IDLE_WATTS: f64 = 70.0;
const MAX_WATTS: f64 = 700.0;

impl SimulatedSampler {
    /// GPUs with stable UUIDs `GPU-sim-<node>-<index>`.
    pub fn new(node: &str, count: u32, product: &str, memory_mib: u64) -> Self {
        let gpus = (0..count)
            .map(|index| GpuReading {
                index,
                uuid: simulated_uuid(node, index),
                product: product.to_owned(),
                memory_total_bytes: memory_mib * 1024 * 1024,
                sm_clock_mhz: 1980,
                temperature_celsius: 35.0,
                power_watts: IDLE_WATTS,
                ..Default::default()
            })
            .collect();
        Self { gpus }
    }
}

/// The UUID of simulated GPU `index` on `node`.
pub fn simulated_uuid(node: &str, index: u32) -> String {
    format!("GPU-sim-{node}-{index}")
}

impl GpuSampler for SimulatedSampler {
    fn simulated(&self) -> bool {
        true
    }

    fn sample(&mut self, busy: &HashMap<String, f64>) -> Result<Vec<GpuReading>, GpuError> {
        for gpu in &mut self.gpus {
            let load = busy.get(&gpu.uuid).copied().unwrap_or(0.0).clamp(0.0, 1.0);
            let attributed = busy.contains_key(&gpu.uuid);
            gpu.utilization_gpu = (load * 100.0).round();
            gpu.utilization_memory = (load * 60.0).round();
            // A loaded model holds memory even when idle.
            let resident = if attributed { 0.3 } else { 0.0 };
            gpu.memory_used_bytes = (gpu.memory_total_bytes as f64 * (resident + 0.3 * load)) as u64;
            gpu.power_watts = IDLE_WATTS + (MAX_WATTS - IDLE_WATTS) * load;
            gpu.temperature_celsius = 35.0 + 40.0 * load;
        }
        Ok(self.gpus.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilization_follows_the_attributed_servers_busy_ratio() {
        let mut s = SimulatedSampler::new("n1", 2, "NVIDIA-H100-80GB-HBM3", 81_559);
        let busy = HashMap::from([(simulated_uuid("n1", 1), 0.75)]);
        let r = s.sample(&busy).unwrap();
        assert_eq!((r[0].utilization_gpu, r[1].utilization_gpu), (0.0, 75.0));
        assert!(r[1].memory_used_bytes > r[0].memory_used_bytes);
        assert!(r[1].power_watts > r[0].power_watts);
        assert!(s.simulated());
    }
}
