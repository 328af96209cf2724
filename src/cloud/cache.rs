//! Steady-state drift checks read the cloud in bulk: one label-filtered list per zone,
//! shared by every resource in that zone and refreshed at most once per TTL.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::{CloudError, CloudInstance, Compute};

struct ZoneList {
    fetched: Instant,
    instances: Result<HashMap<String, CloudInstance>, CloudError>,
}

/// A per-zone cache of the operator's instances in this cluster.
pub struct InstanceCache {
    ttl: Duration,
    /// The list filter: managed by projectvm, labelled for this cluster.
    selector: BTreeMap<String, String>,
    // A plain mutex: held only to find a zone's slot, never across an await.
    zones: std::sync::Mutex<HashMap<String, Arc<Mutex<Option<ZoneList>>>>>,
    lists: AtomicU64,
}

impl InstanceCache {
    /// `selector`: the labels every listed instance carries ([`crate::cloud::naming::cluster_selector`]),
    /// so one cluster's drift checks never see another cluster's instances.
    pub fn new(ttl: Duration, selector: BTreeMap<String, String>) -> Self {
        Self { ttl, selector, zones: std::sync::Mutex::new(HashMap::new()), lists: AtomicU64::new(0) }
    }

    /// The instance, from a list of the zone no older than the TTL. Concurrent callers
    /// for one zone share a single refresh, and its failure: callers that were waiting on a
    /// refresh that failed get that error instead of each trying again in turn. A failure
    /// is not kept for later callers.
    pub async fn get(
        &self,
        compute: &dyn Compute,
        zone: &str,
        name: &str,
    ) -> Result<Option<CloudInstance>, CloudError> {
        let asked = Instant::now();
        let slot = {
            let mut zones = self.zones.lock().expect("cache lock");
            zones.entry(zone.to_string()).or_default().clone()
        };
        let mut entry = slot.lock().await;
        let usable = entry.as_ref().is_some_and(|z| {
            // finished while this caller waited, or a success still within the TTL
            z.fetched >= asked || (z.instances.is_ok() && z.fetched.elapsed() < self.ttl)
        });
        if !usable {
            let list = compute.list_instances(zone, &self.selector).await;
            self.lists.fetch_add(1, Ordering::Relaxed);
            *entry = Some(ZoneList {
                fetched: Instant::now(),
                instances: list.map(|l| l.into_iter().map(|i| (i.name.clone(), i)).collect()),
            });
        }
        match entry.as_ref().map(|z| &z.instances) {
            Some(Ok(m)) => Ok(m.get(name).cloned()),
            Some(Err(e)) => Err(e.clone()),
            None => Ok(None),
        }
    }

    /// Forgets a zone's list, after the operator changed something there.
    pub fn invalidate(&self, zone: &str) {
        self.zones.lock().expect("cache lock").remove(zone);
    }

    /// Number of list calls made (for tests and metrics).
    pub fn list_calls(&self) -> u64 {
        self.lists.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{GuestAttribute, InstanceRequest, InstanceState, OperationRef, OperationState, naming};
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A fake cloud that counts list calls (unit test of the cache logic only).
    struct Counting {
        lists: AtomicUsize,
        fail: std::sync::atomic::AtomicBool,
    }

    fn counting() -> Counting {
        Counting { lists: AtomicUsize::new(0), fail: Default::default() }
    }

    fn inst(name: &str) -> CloudInstance {
        CloudInstance { name: name.into(), state: InstanceState::Running, ..Default::default() }
    }

    fn unused<T>() -> Result<T, CloudError> {
        Err(CloudError::new(super::super::CloudErrorKind::Other, "not used"))
    }

    #[async_trait::async_trait]
    impl Compute for Counting {
        async fn insert_instance(&self, _: &InstanceRequest) -> Result<OperationRef, CloudError> {
            unused()
        }
        async fn get_instance(&self, _: &str, _: &str) -> Result<Option<CloudInstance>, CloudError> {
            unused()
        }
        async fn list_instances(
            &self,
            _: &str,
            labels: &BTreeMap<String, String>,
        ) -> Result<Vec<CloudInstance>, CloudError> {
            assert_eq!(labels, &naming::cluster_selector("here"));
            self.lists.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            if self.fail.load(Ordering::SeqCst) {
                return Err(CloudError::new(super::super::CloudErrorKind::Unavailable, "down"));
            }
            Ok(vec![inst("a"), inst("b")])
        }
        async fn start_instance(&self, _: &str, _: &str) -> Result<OperationRef, CloudError> {
            unused()
        }
        async fn stop_instance(&self, _: &str, _: &str) -> Result<OperationRef, CloudError> {
            unused()
        }
        async fn delete_instance(&self, _: &str, _: &str) -> Result<Option<OperationRef>, CloudError> {
            unused()
        }
        async fn set_machine_type(&self, _: &str, _: &str, _: &str) -> Result<OperationRef, CloudError> {
            unused()
        }
        async fn set_labels(
            &self,
            _: &str,
            _: &str,
            _: Option<&str>,
            _: &BTreeMap<String, String>,
        ) -> Result<OperationRef, CloudError> {
            unused()
        }
        async fn set_metadata(
            &self,
            _: &str,
            _: &str,
            _: Option<&str>,
            _: &BTreeMap<String, String>,
        ) -> Result<OperationRef, CloudError> {
            unused()
        }
        async fn guest_attributes(&self, _: &str, _: &str, _: &str) -> Result<Vec<GuestAttribute>, CloudError> {
            unused()
        }
        async fn operation(&self, _: &OperationRef) -> Result<OperationState, CloudError> {
            unused()
        }
    }

    #[tokio::test]
    async fn one_list_serves_many_lookups() {
        let cloud = counting();
        let cache = InstanceCache::new(Duration::from_secs(60), naming::cluster_selector("here"));
        let (a, b, c) =
            tokio::join!(cache.get(&cloud, "z", "a"), cache.get(&cloud, "z", "b"), cache.get(&cloud, "z", "missing"));
        assert_eq!(a.unwrap().unwrap().name, "a");
        assert_eq!(b.unwrap().unwrap().name, "b");
        assert!(c.unwrap().is_none());
        assert_eq!(cloud.lists.load(Ordering::SeqCst), 1);
        cache.invalidate("z");
        cache.get(&cloud, "z", "a").await.unwrap();
        assert_eq!(cloud.lists.load(Ordering::SeqCst), 2);
        cache.get(&cloud, "other", "a").await.unwrap();
        assert_eq!(cache.list_calls(), 3);
    }

    #[tokio::test]
    async fn stale_lists_are_refreshed() {
        let cloud = counting();
        let cache = InstanceCache::new(Duration::from_millis(0), naming::cluster_selector("here"));
        cache.get(&cloud, "z", "a").await.unwrap();
        cache.get(&cloud, "z", "a").await.unwrap();
        assert_eq!(cloud.lists.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_refresh_is_shared_by_its_waiters_only() {
        let cloud = counting();
        cloud.fail.store(true, Ordering::SeqCst);
        let cache = InstanceCache::new(Duration::from_secs(60), naming::cluster_selector("here"));
        let (a, b, c) =
            tokio::join!(cache.get(&cloud, "z", "a"), cache.get(&cloud, "z", "b"), cache.get(&cloud, "z", "c"));
        assert!(a.is_err() && b.is_err() && c.is_err());
        assert_eq!(cloud.lists.load(Ordering::SeqCst), 1, "waiters share the failed refresh");
        // the failure is not cached for later callers
        cloud.fail.store(false, Ordering::SeqCst);
        assert_eq!(cache.get(&cloud, "z", "a").await.unwrap().unwrap().name, "a");
        assert_eq!(cloud.lists.load(Ordering::SeqCst), 2);
        // and a success is cached again
        cache.get(&cloud, "z", "b").await.unwrap();
        assert_eq!(cloud.lists.load(Ordering::SeqCst), 2);
    }
}
