//! Reconcile errors with a stable category (logs, Events and the `category` metric label) and a
//! retry policy by kind of failure.

use std::time::Duration;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object has no namespace or name (a bug in the watch, never user input).
    #[error("object has no {0}")]
    MissingObjectKey(&'static str),
    /// Writing a child failed.
    #[error("failed to apply {kind} {name}: {source}")]
    Apply {
        /// Object kind.
        kind: String,
        /// Object name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Deleting a dead revision failed.
    #[error("failed to delete revision {revision}: {source}")]
    Delete {
        /// The revision.
        revision: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing status failed.
    #[error("failed to update status: {0}")]
    Status(#[source] kube::Error),
    /// Removing a consumed promote or abort annotation failed.
    #[error("failed to remove the rollout control annotations: {0}")]
    Annotations(#[source] kube::Error),
    /// A watch cache was dropped (the controller is stopping).
    #[error("watch cache closed")]
    CacheClosed,
    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(#[source] kube::Error),
    /// A listening socket could not be opened.
    #[error("cannot listen on {0}: {1}")]
    Listen(std::net::SocketAddr, #[source] std::io::Error),
}

impl Error {
    /// Stable, low-cardinality category.
    pub fn category(&self) -> &'static str {
        match self {
            Error::MissingObjectKey(_) => "missing_object_key",
            Error::Apply { .. } => "apply",
            Error::Delete { .. } => "delete",
            Error::Status(_) => "status",
            Error::Annotations(_) => "annotations",
            Error::Lease(_) => "lease",
            Error::CacheClosed => "cache_closed",
            Error::Listen(..) => "listen",
        }
    }
}

/// How a failed reconcile is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// May pass on the next try (a timeout, a conflict, the API server busy or restarting).
    Transient,
    /// Fails the same way until something changes (the API refused the request as invalid or
    /// forbidden): retried slowly, so a broken object does not load the API server.
    Permanent,
}

/// First retry of a transient failure; doubles per failure up to [`TRANSIENT_MAX`].
pub const TRANSIENT_FIRST: Duration = Duration::from_secs(5);
/// Longest wait between retries of a transient failure.
pub const TRANSIENT_MAX: Duration = Duration::from_secs(120);
/// First retry of a permanent failure; doubles per failure up to [`PERMANENT_MAX`].
pub const PERMANENT_FIRST: Duration = Duration::from_secs(30);
/// Longest wait between retries of a permanent failure.
pub const PERMANENT_MAX: Duration = Duration::from_secs(600);

impl Retry {
    /// The wait before retry number `failures` (1: after the first failure), doubling each time.
    pub fn delay(self, failures: u32) -> Duration {
        let (first, max) = match self {
            Retry::Transient => (TRANSIENT_FIRST, TRANSIENT_MAX),
            Retry::Permanent => (PERMANENT_FIRST, PERMANENT_MAX),
        };
        let doublings = failures.saturating_sub(1).min(16);
        first.saturating_mul(1 << doublings).min(max)
    }
}

/// Whether the API server's answer will repeat: a 4xx other than timeout (408), conflict
/// (409) and too many requests (429).
fn api_refused(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if (400..500).contains(&status.code) && ![408, 409, 429].contains(&status.code))
}

impl Error {
    /// How this failure is retried.
    pub fn retry(&self) -> Retry {
        let refused = match self {
            Error::MissingObjectKey(_) => true,
            Error::Apply { source, .. } | Error::Delete { source, .. } => api_refused(source),
            Error::Status(source) | Error::Annotations(source) | Error::Lease(source) => api_refused(source),
            Error::CacheClosed | Error::Listen(..) => false,
        };
        if refused {
            Retry::Permanent
        } else {
            Retry::Transient
        }
    }
}

/// Result with the reconcile error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An API server refusal with this HTTP code, for tests.
#[cfg(test)]
pub(crate) fn api_error(code: u16) -> kube::Error {
    kube::Error::Api(
        kube::core::Status::failure("refused", "Test")
            .with_code(code)
            .boxed(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_that_will_repeat_are_permanent_and_the_rest_transient() {
        let status = |code| Error::Status(api_error(code)).retry();
        assert_eq!(status(422), Retry::Permanent, "invalid");
        assert_eq!(status(403), Retry::Permanent, "forbidden");
        assert_eq!(status(409), Retry::Transient, "conflict");
        assert_eq!(status(429), Retry::Transient, "throttled");
        assert_eq!(status(500), Retry::Transient, "server error");
        assert_eq!(Error::CacheClosed.retry(), Retry::Transient);
    }

    #[test]
    fn retries_double_up_to_a_ceiling() {
        let secs = |retry: Retry, n| retry.delay(n).as_secs();
        assert_eq!([1, 2, 3].map(|n| secs(Retry::Transient, n)), [5, 10, 20]);
        assert_eq!(secs(Retry::Transient, 40), 120);
        assert_eq!([1, 2, 3].map(|n| secs(Retry::Permanent, n)), [30, 60, 120]);
        assert_eq!(secs(Retry::Permanent, u32::MAX), 600);
    }
}
