//! Scale to and from zero (`minReplicas: 0`), pure. The router reports the newest request in the
//! `modelfleet.dev/last-request` annotation; from it and the fleet's load:
//!
//! - at zero, a request newer than the scale-down to zero wakes the model: one replica;
//! - at one or more, no request for `idlePeriod` (nor a scale event), and on fresh telemetry from
//!   every replica nothing queued, running or served (clients of the Service count too): zero.
//!   Missing telemetry never scales to zero.
//!
//! Anything else is the regular algorithm's, with at least one replica.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::autoscale::algorithm::{Decision, Reason, Signals};

/// What the idle rule reads.
#[derive(Debug, Clone, Copy)]
pub struct Activity {
    /// `spec.scaling.idlePeriod`.
    pub idle_period: Duration,
    /// The router's newest reported request.
    pub last_request: Option<Timestamp>,
    /// The newest scale event (`status.autoscaling.lastScaleTime`).
    pub last_scale: Option<Timestamp>,
    /// Replicas in force.
    pub current: u32,
    /// Load on fresh, complete telemetry; None when missing or partial.
    pub load: Option<Signals>,
    /// Requests per second the servers report (clients of the Service count too).
    pub request_rate: f64,
}

/// The decision to or from zero, or None when the regular algorithm decides.
pub fn to_or_from_zero(a: &Activity, now: Timestamp) -> Option<Decision> {
    let decide = |replicas, reason| Decision {
        replicas,
        reason,
        desired: replicas,
        panicking: false,
    };
    if a.current == 0 {
        let woken = a.last_request.is_some_and(|r| a.last_scale.is_none_or(|s| r > s));
        return Some(if woken {
            decide(1, Reason::ScaleFromZero)
        } else {
            decide(0, Reason::Idle)
        });
    }
    let quiet_since = a.last_request.max(a.last_scale)?;
    let idle = now.duration_since(quiet_since).as_secs_f64() >= a.idle_period.as_secs_f64();
    let nothing_in_flight =
        a.request_rate <= 0.0 && a.load.is_some_and(|s| s.in_flight <= 0.0 && s.queue_depth <= 0.0);
    (idle && nothing_in_flight).then(|| decide(0, Reason::ScaleToZero))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("in range")
    }

    fn idle_load() -> Option<Signals> {
        Some(Signals::default())
    }

    fn activity(current: u32, last_request: Option<i64>, last_scale: Option<i64>) -> Activity {
        Activity {
            idle_period: Duration::from_secs(300),
            last_request: last_request.map(at),
            last_scale: last_scale.map(at),
            current,
            load: idle_load(),
            request_rate: 0.0,
        }
    }

    #[test]
    fn a_request_after_the_scale_down_wakes_the_model_and_an_older_one_does_not() {
        let woken = to_or_from_zero(&activity(0, Some(1000), Some(900)), at(1001)).expect("at zero");
        assert_eq!((woken.replicas, woken.reason), (1, Reason::ScaleFromZero));
        let asleep = to_or_from_zero(&activity(0, Some(800), Some(900)), at(1001)).expect("at zero");
        assert_eq!((asleep.replicas, asleep.reason), (0, Reason::Idle));
        let never = to_or_from_zero(&activity(0, None, None), at(1001)).expect("at zero");
        assert_eq!(never.replicas, 0, "a new model waits for its first request");
    }

    #[test]
    fn the_last_replica_goes_only_after_the_idle_period_with_nothing_in_flight() {
        let a = activity(1, Some(1000), Some(500));
        assert!(to_or_from_zero(&a, at(1299)).is_none(), "299 s of 300");
        let gone = to_or_from_zero(&a, at(1300)).expect("idle");
        assert_eq!((gone.replicas, gone.reason), (0, Reason::ScaleToZero));
        let busy = Activity {
            load: Some(Signals {
                in_flight: 1.0,
                ..Signals::default()
            }),
            ..a
        };
        assert!(to_or_from_zero(&busy, at(2000)).is_none(), "work in flight");
        let served = Activity {
            request_rate: 0.5,
            ..a
        };
        assert!(
            to_or_from_zero(&served, at(2000)).is_none(),
            "requests past the router"
        );
        let blind = Activity { load: None, ..a };
        assert!(
            to_or_from_zero(&blind, at(2000)).is_none(),
            "never on missing telemetry"
        );
        let just_scaled = activity(1, Some(1000), Some(1200));
        assert!(
            to_or_from_zero(&just_scaled, at(1400)).is_none(),
            "idle counts from the newest scale event too"
        );
    }
}
