//! How long a server may take to start: the start-up probe's budget from the model's size
//! (`spec.model.size`), so a 140 GiB model is not killed while it downloads and a 100 MB one
//! that hangs is noticed within minutes.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Seconds between two start-up probes.
pub const PERIOD_SECONDS: i32 = 10;
/// The budget without a size: 15 minutes.
const DEFAULT_SECONDS: f64 = 900.0;
/// Fixed part: process start, GPU initialisation, warm-up.
const BASE_SECONDS: f64 = 120.0;
/// The slowest load rate planned for (download, read and GPU upload): 64 MiB/s.
const BYTES_PER_SECOND: f64 = 64.0 * 1024.0 * 1024.0;
/// The budget's bounds: at least 5 minutes, at most 2 hours.
const BOUNDS: (f64, f64) = (300.0, 7200.0);

/// Failures the start-up probe tolerates, at [`PERIOD_SECONDS`] each.
pub fn failure_threshold(size: Option<&Quantity>) -> i32 {
    let seconds = size
        .and_then(|q| quantity_bytes(&q.0))
        .map_or(DEFAULT_SECONDS, |bytes| {
            (BASE_SECONDS + bytes / BYTES_PER_SECOND).clamp(BOUNDS.0, BOUNDS.1)
        });
    (seconds / f64::from(PERIOD_SECONDS)).ceil() as i32
}

/// Bytes of a Kubernetes quantity (`98Mi`, `1.5G`, `140Gi`, `5e9`); None when it is not one.
pub fn quantity_bytes(q: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let q = q.trim();
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| q.strip_suffix(suffix).map(|n| (n, *scale)))
        .unwrap_or((q, 1.0));
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_in_bytes() {
        assert_eq!(quantity_bytes("98Mi"), Some(98.0 * 1_048_576.0));
        assert_eq!(quantity_bytes("1.5G"), Some(1.5e9));
        assert_eq!(quantity_bytes("5e9"), Some(5e9));
        assert_eq!(quantity_bytes("512"), Some(512.0));
        assert_eq!(quantity_bytes("lots"), None);
        assert_eq!(quantity_bytes("-1Gi"), None);
    }

    #[test]
    fn the_budget_grows_with_the_model_within_bounds() {
        let q = |s: &str| Quantity(s.into());
        // No size: 15 minutes.
        assert_eq!(failure_threshold(None), 90);
        // A small model: the 5-minute floor.
        assert_eq!(failure_threshold(Some(&q("98Mi"))), 30);
        // 140 GiB at 64 MiB/s is 2240 s, plus 120 s.
        assert_eq!(failure_threshold(Some(&q("140Gi"))), 236);
        // Huge: the 2-hour ceiling.
        assert_eq!(failure_threshold(Some(&q("2Ti"))), 720);
        // Not a quantity: the default, not a crash.
        assert_eq!(failure_threshold(Some(&q("big"))), 90);
    }
}
