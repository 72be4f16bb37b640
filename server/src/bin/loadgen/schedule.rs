//! The open loop's arrival process: Poisson arrivals, i.e. exponential inter-arrival times,
//! laid out on absolute times from the start so that a late sender catches up instead of
//! lowering the offered rate.

use std::time::{Duration, Instant};

/// An exponential inter-arrival time of a Poisson process at `rate` arrivals per second.
pub fn exponential_gap(rng: &mut fastrand::Rng, rate: f64) -> f64 {
    // 1 - u is in (0, 1], so the logarithm is finite.
    -(1.0 - rng.f64()).ln() / rate
}

/// Absolute arrival times of a Poisson process: the n-th arrival is `start` plus the sum of the
/// first n gaps, whatever time it is when it is asked for.
#[derive(Debug)]
pub struct Poisson {
    rng: fastrand::Rng,
    rate: f64,
    start: Instant,
    /// Seconds from `start` to the next arrival (kept in f64 so rounding does not accumulate).
    offset_s: f64,
}

impl Poisson {
    /// A schedule at `rate` arrivals per second from `start`; the same seed gives the same times.
    pub fn new(start: Instant, rate: f64, seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let offset_s = exponential_gap(&mut rng, rate);
        Self {
            rng,
            rate,
            start,
            offset_s,
        }
    }

    /// The next arrival time (non-decreasing), advancing the schedule.
    pub fn next_arrival(&mut self) -> Instant {
        let at = self.start + Duration::from_secs_f64(self.offset_s);
        self.offset_s += exponential_gap(&mut self.rng, self.rate);
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_average_one_over_the_rate() {
        let mut rng = fastrand::Rng::with_seed(7);
        let n = 50_000;
        let mean = (0..n).map(|_| exponential_gap(&mut rng, 500.0)).sum::<f64>() / f64::from(n);
        // The standard error of the mean is 0.002 / sqrt(50 000) = 9 us; allow about 5 of them.
        assert!((mean - 0.002).abs() < 0.000_05, "mean gap {mean}");
        // Exponential: the standard deviation equals the mean; a fixed schedule would have none.
        let mut rng = fastrand::Rng::with_seed(7);
        let gaps: Vec<f64> = (0..n).map(|_| exponential_gap(&mut rng, 500.0)).collect();
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / f64::from(n);
        assert!(
            (var.sqrt() / mean - 1.0).abs() < 0.05,
            "coefficient of variation {}",
            var.sqrt() / mean
        );
    }

    #[test]
    fn arrivals_are_absolute_and_reproducible() {
        let start = Instant::now();
        let mut a = Poisson::new(start, 1000.0, 42);
        let mut b = Poisson::new(start, 1000.0, 42);
        let times: Vec<Instant> = (0..10_000).map(|_| a.next_arrival()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        // Asking later (a slow sender) changes nothing: the times depend on start and seed only.
        std::thread::sleep(Duration::from_millis(5));
        assert!(times.iter().all(|&t| t == b.next_arrival()));
        // 10 000 arrivals at 1000/s take about 10 s (standard deviation 0.1 s).
        let span = times[9_999].duration_since(start).as_secs_f64();
        assert!((span - 10.0).abs() < 0.5, "span {span}");
    }
}
