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
    instances: HashMap<String, CloudInstance>,
}

/// A per-zone cache of the operator's instances.
pub struct InstanceCache {
    ttl: Duration,
    // A plain mutex: held only to find a zone's slot, never across an await.
    zones: std::sync::Mutex<HashMap<String, Arc<Mutex<Option<ZoneList>>>>>,
    lists: AtomicU64,
}

impl InstanceCache {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, zones: std::sync::Mutex::new(HashMap::new()), lists: AtomicU64::new(0) }
    }

    /// The instance, from a list of the zone no older than the TTL. Concurrent callers
    /// for one zone share a single refresh.
    pub async fn get(
        &self,
        compute: &dyn Compute,
        zone: &str,
        name: &str,
    ) -> Result<Option<CloudInstance>, CloudError> {
        let slot = {
            let mut zones = self.zones.lock().expect("cache lock");
            zones.entry(zone.to_string()).or_default().clone()
        };
        let mut entry = slot.lock().await;
        let stale = entry.as_ref().is_none_or(|z| z.fetched.elapsed() >= self.ttl);
        if stale {
            let labels = BTreeMap::from([("managed-by".to_string(), "projectvm".to_string())]);
            let list = compute.list_instances(zone, &labels).await?;
            self.lists.fetch_add(1, Ordering::Relaxed);
            *entry = Some(ZoneList {
                fetched: Instant::now(),
                instances: list.into_iter().map(|i| (i.name.clone(), i)).collect(),
            });
        }
        Ok(entry.as_ref().and_then(|z| z.instances.get(name).cloned()))
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
    use super::super::{GuestAttribute, InstanceRequest, InstanceState, OperationRef, OperationState};
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A fake cloud that counts list calls (unit test of the cache logic only).
    struct Counting {
        lists: AtomicUsize,
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
            assert_eq!(labels["managed-by"], "projectvm");
            self.lists.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
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
        let cloud = Counting { lists: AtomicUsize::new(0) };
        let cache = InstanceCache::new(Duration::from_secs(60));
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
        let cloud = Counting { lists: AtomicUsize::new(0) };
        let cache = InstanceCache::new(Duration::from_millis(0));
        cache.get(&cloud, "z", "a").await.unwrap();
        cache.get(&cloud, "z", "a").await.unwrap();
        assert_eq!(cloud.lists.load(Ordering::SeqCst), 2);
    }
}
