//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Every replica tries to hold the Lease; only the holder reconciles. The holder renews it every
//! retry period; a follower takes it over when the holder's record has not changed for a whole
//! lease duration (measured on the follower's own clock, like client-go, so clock skew between
//! nodes does not matter). A replica that stops releases the Lease so the next takes over at once.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};

use crate::{Error, Result};

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease namespace.
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica's identity.
    pub identity: String,
    /// How long a silent holder keeps the Lease.
    pub duration: Duration,
    /// Renew and retry period.
    pub retry: Duration,
}

/// One replica's view of the Lease.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The last record seen from another holder and when it was first seen.
    observed: Option<(String, Instant)>,
}

impl LeaderElector {
    /// An elector for `config`.
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&mut self) -> Result<()> {
        loop {
            if self.try_acquire_or_renew().await? {
                tracing::info!(identity = %self.config.identity, lease = %self.config.name, "became leader");
                return Ok(());
            }
            tokio::time::sleep(self.config.retry).await;
        }
    }

    /// Renews the Lease every retry period; returns when leadership is lost.
    pub async fn hold(&mut self) -> Result<()> {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = Instant::now(),
                Ok(false) => return Ok(()),
                // A transient API error: keep leading until the lease would have expired.
                Err(e) if last_renewed.elapsed() < self.config.duration => {
                    tracing::warn!(error = %e, "cannot renew the lease; retrying");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives the Lease up so another replica takes over without waiting for it to expire.
    pub async fn release(&mut self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(self.config.identity.as_str()) {
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                let _ = self
                    .api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await;
            }
        }
    }

    fn seconds(&self) -> i32 {
        i32::try_from(self.config.duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1)
    }

    /// One round: returns whether this replica holds the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.config.name).await.map_err(Error::Lease)? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(Error::Lease(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.config.identity;
        if !mine && !holder.is_empty() {
            let record = format!(
                "{holder}/{:?}/{:?}",
                spec.renew_time, lease.metadata.resource_version
            );
            let holder_duration =
                Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
            match &self.observed {
                Some((seen, since)) if *seen == record => {
                    if since.elapsed() < holder_duration {
                        return Ok(false);
                    }
                }
                _ => {
                    self.observed = Some((record, Instant::now()));
                    return Ok(false);
                }
            }
        }
        let new_spec = lease.spec.get_or_insert_with(Default::default);
        if !mine {
            new_spec.acquire_time = Some(now.clone());
            new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        new_spec.holder_identity = Some(self.config.identity.clone());
        new_spec.lease_duration_seconds = Some(self.seconds());
        new_spec.renew_time = Some(now);
        // `replace` carries the resourceVersion we read: a concurrent writer makes it fail.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(Error::Lease(e)),
        }
    }
}
