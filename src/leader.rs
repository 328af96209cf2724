//! Leader election on a `coordination.k8s.io` Lease, so two replicas never reconcile at
//! once. The holder renews the Lease; a replica that cannot renew within the lease
//! duration stops leading (the process exits and is restarted as a follower).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// Lease timings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

/// Whether `identity` may take the lease now.
pub fn can_acquire(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> bool {
    let Some(spec) = spec else { return true };
    let holder = spec.holder_identity.as_deref();
    if holder.is_none_or(|h| h.is_empty() || h == identity) {
        return true;
    }
    let duration = spec.lease_duration_seconds.unwrap_or(15);
    match &spec.renew_time {
        Some(MicroTime(t)) => now.as_second() - t.as_second() > i64::from(duration),
        None => true,
    }
}

/// Tries once to acquire or renew; `Ok(true)` when we hold the lease afterwards.
pub async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let existing = api.get_opt(&cfg.name).await?;
    let spec = LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.lease_duration.as_secs() as i32),
        renew_time: Some(MicroTime(now)),
        ..Default::default()
    };
    match existing {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec { acquire_time: Some(MicroTime(now)), lease_transitions: Some(0), ..spec }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            if !can_acquire(lease.spec.as_ref(), &cfg.identity, now) {
                return Ok(false);
            }
            let old = lease.spec.clone().unwrap_or_default();
            let taking_over = old.holder_identity.as_deref() != Some(cfg.identity.as_str());
            lease.spec = Some(LeaseSpec {
                acquire_time: if taking_over { Some(MicroTime(now)) } else { old.acquire_time },
                lease_transitions: Some(old.lease_transitions.unwrap_or(0) + i32::from(taking_over)),
                ..spec
            });
            // resourceVersion in the object makes this a compare-and-swap.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until this replica leads, then keeps renewing in the background. The returned
/// future completes when leadership is lost.
pub async fn acquire(client: Client, cfg: LeaseConfig) -> impl std::future::Future<Output = ()> {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    loop {
        match try_acquire(&api, &cfg).await {
            Ok(true) => break,
            Ok(false) => tracing::info!(lease = %cfg.name, "another replica leads; waiting"),
            Err(e) => tracing::warn!(error = %e, "leader election failed; retrying"),
        }
        tokio::time::sleep(cfg.renew_every).await;
    }
    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
    async move {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(cfg.renew_every).await;
            match try_acquire(&api, &cfg).await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("lost the lease to another replica");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the lease failed");
                    if last_ok.elapsed() > cfg.lease_duration {
                        tracing::error!("could not renew the lease in time");
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            lease_duration_seconds: Some(duration),
            ..Default::default()
        }
    }

    #[test]
    fn acquisition_rules() {
        let now = Timestamp::from_second(1000).unwrap();
        assert!(can_acquire(None, "me", now));
        assert!(can_acquire(Some(&spec("me", 999, 15)), "me", now));
        assert!(!can_acquire(Some(&spec("other", 990, 15)), "me", now));
        assert!(can_acquire(Some(&spec("other", 980, 15)), "me", now));
        assert!(can_acquire(Some(&spec("", 999, 15)), "me", now));
    }
}
