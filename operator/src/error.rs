//! Reconcile errors with a stable category (logs, Events and the `category` metric label).

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

/// Result with the reconcile error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
