//! Contract test of the Compute Engine edge: `GceCompute` — the production implementation,
//! on the official `google-cloud-compute-v1` client — driven against the test bed's Compute
//! Engine emulator (backend `none`, started in-process) with only the endpoint and the
//! credentials changed. Faults are set through the emulator's admin API (`/emulator/v1/…`)
//! over HTTP, as any other test would.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use projectvm::cloud::gce::{CredentialsMode, GceCompute};
use projectvm::cloud::metrics::ComputeRequests;
use projectvm::cloud::ratelimit::{ComputeLimits, RateLimiter};
use projectvm::cloud::{
    CloudErrorKind, CloudInstance, Compute, InstanceCache, InstanceRequest, InstanceState, OperationRef,
    OperationState, naming,
};
use projectvm_testbed::gce::{BackendChoice, Config, RunningEmulator, serve};
use serde_json::json;

const PROJECT: &str = "pvm-contract";
const ZONE: &str = "us-central1-a";

struct Bed {
    emu: RunningEmulator,
    compute: GceCompute,
    http: reqwest::Client,
}

impl Bed {
    async fn start() -> Bed {
        let mut cfg = Config::none_backend();
        cfg.backend = BackendChoice::None { boot_delay: Duration::from_millis(50) };
        cfg.operation_wait_timeout = Duration::from_secs(2);
        let emu = serve(cfg, "127.0.0.1:0".parse().unwrap()).await.expect("emulator starts");
        let compute = GceCompute::new(PROJECT, Some(&emu.endpoint()), CredentialsMode::Anonymous)
            .await
            .expect("client builds")
            // small pages, so listing has to follow nextPageToken
            .with_list_page_size(2);
        Bed { emu, compute, http: reqwest::Client::new() }
    }

    /// PUT/DELETE/POST on the emulator's admin API.
    async fn admin(&self, method: reqwest::Method, path: &str, body: serde_json::Value) {
        let url = format!("{}/emulator/v1/{path}", self.emu.endpoint());
        let r = self.http.request(method.clone(), &url).json(&body).send().await.expect("admin API answers");
        assert!(r.status().is_success(), "{method} {url}: {}", r.status());
    }

    async fn done(&self, op: &OperationRef) -> OperationState {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = self.compute.operation(op).await.expect("zoneOperations.get");
            if !matches!(st, OperationState::Running { .. }) {
                return st;
            }
            assert!(Instant::now() < deadline, "operation {} still running", op.name);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn ok(&self, op: &OperationRef) {
        assert_eq!(self.done(op).await, OperationState::Done, "operation {}", op.name);
    }

    async fn get(&self, name: &str) -> CloudInstance {
        self.compute.get_instance(ZONE, name).await.expect("get").expect("instance exists")
    }
}

const CLUSTER: &str = "contract-cluster";

fn request(name: &str, namespace: &str, uid: &str) -> InstanceRequest {
    InstanceRequest {
        name: name.into(),
        zone: ZONE.into(),
        machine_type: "e2-medium".into(),
        source_image: "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts".into(),
        disk_size_gb: 20,
        labels: naming::instance_labels(CLUSTER, "projectvm", namespace, name, uid),
        metadata: BTreeMap::from([
            ("enable-guest-attributes".into(), "TRUE".into()),
            (
                "ssh-keys".into(),
                "projectvm:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBcJ8oFvVY6kgkQ7b7D0t1n9hN0w0Yl0G3j2Zl3mQw8x projectvm"
                    .into(),
            ),
        ]),
        network: None,
        subnetwork: None,
        external_ip: true,
        service_account_email: Some("vm@pvm-contract.iam.gserviceaccount.com".into()),
        tags: vec!["projectvm".into()],
    }
}

fn managed() -> BTreeMap<String, String> {
    BTreeMap::from([("managed-by".to_string(), "projectvm".to_string())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_lifecycle_through_the_real_client() {
    let bed = Bed::start().await;
    let c = &bed.compute;

    // insert returns at once with the operation; polling it reaches DONE
    let req = request("pvm-contract-a", "contract", "uid-a");
    let op = c.insert_instance(&req).await.expect("insert");
    assert_eq!(op.zone, ZONE);
    assert!(!op.name.is_empty());
    bed.ok(&op).await;

    // fields mapped
    let a = bed.get("pvm-contract-a").await;
    assert_eq!(a.name, "pvm-contract-a");
    assert!(a.id.parse::<u64>().is_ok_and(|n| n > 0), "numeric id: {:?}", a.id);
    assert_eq!(a.zone, ZONE);
    assert_eq!(a.machine_type, "e2-medium");
    assert_eq!(a.state, InstanceState::Running);
    assert_eq!(a.labels, req.labels);
    assert_eq!(a.metadata, req.metadata);
    assert!(a.metadata_fingerprint.as_deref().is_some_and(|f| !f.is_empty()));
    assert!(a.internal_ip.as_deref().is_some_and(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok()), "{a:?}");
    assert!(a.external_ip.is_some(), "ONE_TO_ONE_NAT access config gives an external IP: {a:?}");
    assert!(!a.deletion_protection);
    assert!(a.created_at.is_some());
    assert!(naming::owned_by(&a, "uid-a"));
    assert!(!naming::owned_by(&a, "uid-other"));
    let id = naming::Identity {
        cluster: CLUSTER,
        kind: "projectvm",
        namespace: "contract",
        name: "pvm-contract-a",
        uid: "uid-other",
    };
    assert_eq!(naming::ownership(&a, &id), naming::Ownership::Ours);
    let elsewhere = naming::Identity { cluster: "elsewhere", ..id };
    assert_eq!(naming::ownership(&a, &elsewhere), naming::Ownership::OtherCluster(CLUSTER.into()));

    // a missing instance is Ok(None), not an error
    assert_eq!(c.get_instance(ZONE, "pvm-contract-missing").await.unwrap(), None);

    // list: server-side label filter, all pages (page size 2)
    for (name, ns) in [("pvm-contract-b", "contract"), ("pvm-contract-c", "other")] {
        let op = c.insert_instance(&request(name, ns, &format!("uid-{name}"))).await.unwrap();
        bed.ok(&op).await;
    }
    let mut unmanaged = request("not-ours", "contract", "uid-x");
    unmanaged.labels = BTreeMap::from([("team".into(), "x".into())]);
    unmanaged.metadata.clear();
    unmanaged.external_ip = false;
    unmanaged.service_account_email = None;
    bed.ok(&c.insert_instance(&unmanaged).await.unwrap()).await;
    // the same namespace and name, made by another cluster's operator
    let mut other_cluster = request("pvm-contract-b-elsewhere", "contract", "uid-elsewhere");
    other_cluster.labels = naming::instance_labels("elsewhere", "projectvm", "contract", "pvm-contract-b", "uid-e");
    bed.ok(&c.insert_instance(&other_cluster).await.unwrap()).await;

    let names = |v: Vec<CloudInstance>| {
        let mut n: Vec<String> = v.into_iter().map(|i| i.name).collect();
        n.sort();
        n
    };
    assert_eq!(
        names(c.list_instances(ZONE, &managed()).await.unwrap()),
        ["pvm-contract-a", "pvm-contract-b", "pvm-contract-b-elsewhere", "pvm-contract-c"]
    );
    let ours = naming::cluster_selector(CLUSTER);
    assert_eq!(
        names(c.list_instances(ZONE, &ours).await.unwrap()),
        ["pvm-contract-a", "pvm-contract-b", "pvm-contract-c"],
        "a cluster's list holds only its own instances"
    );
    let mut in_ns = ours.clone();
    in_ns.insert("projectvm-namespace".into(), "contract".into());
    assert_eq!(names(c.list_instances(ZONE, &in_ns).await.unwrap()), ["pvm-contract-a", "pvm-contract-b"]);
    assert_eq!(names(c.list_instances(ZONE, &BTreeMap::new()).await.unwrap()).len(), 5);
    assert!(c.list_instances("europe-west1-b", &managed()).await.unwrap().is_empty());

    // the cache answers many lookups from one list per zone
    let cache = InstanceCache::new(Duration::from_secs(60), ours);
    assert_eq!(cache.get(c, ZONE, "pvm-contract-a").await.unwrap().unwrap().id, a.id);
    assert!(cache.get(c, ZONE, "pvm-contract-b").await.unwrap().is_some());
    assert!(cache.get(c, ZONE, "not-ours").await.unwrap().is_none(), "only managed instances are cached");
    assert!(
        cache.get(c, ZONE, "pvm-contract-b-elsewhere").await.unwrap().is_none(),
        "another cluster's instances are not cached"
    );
    assert_eq!(cache.list_calls(), 1);

    // guest attributes: the host key once published; nothing (not an error) when not enabled
    let deadline = Instant::now() + Duration::from_secs(10);
    let keys = loop {
        let keys = c.guest_attributes(ZONE, "pvm-contract-a", "hostkeys/").await.expect("guest attributes");
        if !keys.is_empty() || Instant::now() > deadline {
            break keys;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        keys.iter().any(|k| k.namespace == "hostkeys" && k.key == "ssh-ed25519" && !k.value.is_empty()),
        "{keys:?}"
    );
    assert_eq!(c.guest_attributes(ZONE, "not-ours", "hostkeys/").await.unwrap(), vec![]);

    // setMetadata with the fingerprint; a stale fingerprint is refused
    let mut items = a.metadata.clone();
    items.insert("projectvm-step".into(), "synced".into());
    let op = c.set_metadata(ZONE, &a.name, a.metadata_fingerprint.as_deref(), &items).await.expect("setMetadata");
    bed.ok(&op).await;
    let a2 = bed.get(&a.name).await;
    assert_eq!(a2.metadata, items);
    assert_ne!(a2.metadata_fingerprint, a.metadata_fingerprint, "fingerprint changes");
    let stale = c.set_metadata(ZONE, &a.name, a.metadata_fingerprint.as_deref(), &items).await.unwrap_err();
    assert_eq!(stale.kind, CloudErrorKind::PreconditionFailed, "{stale:?}");
    assert_eq!(stale.http_status, Some(412));
    assert!(stale.retryable());

    // setLabels likewise: the whole set, with the label fingerprint; a stale one is refused
    let mut labels = a2.labels.clone();
    labels.insert("projectvm-cluster".into(), "relabelled".into());
    let op = c.set_labels(ZONE, &a.name, a2.label_fingerprint.as_deref(), &labels).await.expect("setLabels");
    bed.ok(&op).await;
    let a3 = bed.get(&a.name).await;
    assert_eq!(a3.labels, labels);
    assert_ne!(a3.label_fingerprint, a2.label_fingerprint, "label fingerprint changes");
    assert_eq!(a3.metadata_fingerprint, a2.metadata_fingerprint, "metadata untouched");
    let stale = c.set_labels(ZONE, &a.name, a2.label_fingerprint.as_deref(), &labels).await.unwrap_err();
    assert_eq!(stale.kind, CloudErrorKind::PreconditionFailed, "{stale:?}");
    let mut bad = labels.clone();
    bad.insert("projectvm-cluster".into(), "Not.Valid".into());
    let invalid = c.set_labels(ZONE, &a.name, a3.label_fingerprint.as_deref(), &bad).await.unwrap_err();
    assert_eq!(invalid.http_status, Some(400), "{invalid:?}");
    assert_eq!(bed.get(&a.name).await.labels, labels, "refused calls change nothing");

    // the machine type cannot change while running
    let busy = c.set_machine_type(ZONE, &a.name, "e2-standard-4").await.unwrap_err();
    assert_eq!(busy.kind, CloudErrorKind::ResourceInUse, "{busy:?}");

    // stop → TERMINATED, resize, start → RUNNING
    bed.ok(&c.stop_instance(ZONE, &a.name).await.expect("stop")).await;
    let stopped = bed.get(&a.name).await;
    assert_eq!(stopped.state, InstanceState::Terminated);
    assert!(stopped.last_stop_at.is_some());
    bed.ok(&c.set_machine_type(ZONE, &a.name, "e2-standard-4").await.expect("setMachineType")).await;
    assert_eq!(bed.get(&a.name).await.machine_type, "e2-standard-4");
    bed.ok(&c.start_instance(ZONE, &a.name).await.expect("start")).await;
    let started = bed.get(&a.name).await;
    assert_eq!(started.state, InstanceState::Running);
    assert_eq!(started.machine_type, "e2-standard-4");
    assert!(started.last_start_at.is_some());
    assert_eq!(started.id, a.id, "same instance");

    // delete; already gone is success
    let op = c.delete_instance(ZONE, &a.name).await.expect("delete").expect("an operation");
    bed.ok(&op).await;
    assert_eq!(c.get_instance(ZONE, &a.name).await.unwrap(), None);
    assert_eq!(c.delete_instance(ZONE, &a.name).await.unwrap(), None);
    assert_eq!(c.guest_attributes(ZONE, &a.name, "hostkeys/").await.unwrap(), vec![]);

    // operations of other calls on a missing instance fail as NotFound
    let gone = c.start_instance(ZONE, &a.name).await.unwrap_err();
    assert_eq!(gone.kind, CloudErrorKind::NotFound);
    assert_eq!(gone.kind.condition_reason(), "InstanceNotFound");

    bed.emu.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_failed_operations_map_to_kinds() {
    let bed = Bed::start().await;
    let c = &bed.compute;
    use reqwest::Method;

    bed.ok(&c.insert_instance(&request("pvm-dup", "contract", "u1")).await.unwrap()).await;

    // 409: the name is taken
    let e = c.insert_instance(&request("pvm-dup", "contract", "u2")).await.unwrap_err();
    assert_eq!(e.kind, CloudErrorKind::AlreadyExists, "{e:?}");
    assert_eq!(e.http_status, Some(409));
    assert_eq!(e.reason.as_deref(), Some("alreadyExists"));
    assert!(e.message.contains("pvm-dup"), "{}", e.message);

    // 400: an invalid name never reaches an operation
    let e = c.insert_instance(&request("Bad_Name", "contract", "u3")).await.unwrap_err();
    assert_eq!(e.kind, CloudErrorKind::InvalidRequest, "{e:?}");
    assert!(!e.retryable());

    // quota: the insert is accepted, its operation fails, and the message names the quota
    bed.admin(Method::PUT, "faults/quota", json!({"metric": "CPUS", "limit": 8.0, "remaining": 1})).await;
    let op = c.insert_instance(&request("pvm-quota", "contract", "u4")).await.expect("accepted");
    let OperationState::Failed(e) = bed.done(&op).await else { panic!("quota operation must fail") };
    assert_eq!(e.kind, CloudErrorKind::QuotaExceeded, "{e:?}");
    assert_eq!(e.kind.condition_reason(), "QuotaExceeded");
    assert_eq!(e.reason.as_deref(), Some("QUOTA_EXCEEDED"));
    assert!(e.message.contains("'CPUS'") && e.message.contains("us-central1"), "{}", e.message);
    assert_eq!(c.get_instance(ZONE, "pvm-quota").await.unwrap(), None, "no instance is made");

    // zone exhausted: named in the message
    bed.admin(Method::PUT, &format!("faults/zones/{ZONE}/exhausted"), json!({})).await;
    let op = c.insert_instance(&request("pvm-full", "contract", "u5")).await.expect("accepted");
    let OperationState::Failed(e) = bed.done(&op).await else { panic!("exhausted zone must fail") };
    assert_eq!(e.kind, CloudErrorKind::ZoneResourcesExhausted, "{e:?}");
    assert_eq!(e.kind.condition_reason(), "ZoneResourcesExhausted");
    assert!(e.message.contains(ZONE), "{}", e.message);
    bed.admin(Method::DELETE, &format!("faults/zones/{ZONE}/exhausted"), json!({})).await;

    // 403: the permission is named, and it is not "not found"
    bed.admin(
        Method::PUT,
        "faults/methods/instances.insert",
        json!({"errorRate": 1.0, "errorCode": 403, "remaining": 1}),
    )
    .await;
    let e = c.insert_instance(&request("pvm-denied", "contract", "u6")).await.unwrap_err();
    assert_eq!(e.kind, CloudErrorKind::PermissionDenied, "{e:?}");
    assert_eq!(e.kind.condition_reason(), "PermissionDenied");
    assert_eq!(e.http_status, Some(403));
    assert!(e.message.contains("compute.instances.create"), "{}", e.message);
    assert!(!e.retryable());
    bed.admin(Method::PUT, "faults/methods/instances.get", json!({"errorRate": 1.0, "errorCode": 403, "remaining": 1}))
        .await;
    let e = c.get_instance(ZONE, "pvm-dup").await.unwrap_err();
    assert_eq!(e.kind, CloudErrorKind::PermissionDenied);
    assert!(e.message.contains("compute.instances.get"), "{}", e.message);

    // 429 and 503 are retryable
    bed.admin(
        Method::PUT,
        "faults/methods/instances.list",
        json!({"errorRate": 1.0, "errorCode": 429, "remaining": 1}),
    )
    .await;
    let e = c.list_instances(ZONE, &managed()).await.unwrap_err();
    assert_eq!(e.kind, CloudErrorKind::RateLimited, "{e:?}");
    assert!(e.retryable());
    bed.admin(
        Method::PUT,
        "faults/methods/zoneOperations.get",
        json!({"errorRate": 1.0, "errorCode": 503, "remaining": 1}),
    )
    .await;
    let probe = OperationRef { name: "operation-none".into(), zone: ZONE.into() };
    let e = c.operation(&probe).await.unwrap_err();
    assert_eq!(e.kind, CloudErrorKind::Unavailable, "{e:?}");
    assert!(e.retryable());

    // a stuck operation stays RUNNING: calls never block on it
    bed.admin(Method::PUT, "faults/stuck", json!({"operationTypes": ["stop"], "remaining": 1})).await;
    let started = Instant::now();
    let op = c.stop_instance(ZONE, "pvm-dup").await.expect("stop accepted");
    assert!(started.elapsed() < Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(c.operation(&op).await.unwrap(), OperationState::Running { .. }));
    bed.admin(Method::POST, "operations/unstick", json!({})).await;
    bed.ok(&op).await;
    assert_eq!(bed.get("pvm-dup").await.state, InstanceState::Terminated);

    bed.emu.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_unavailable() {
    // a port nobody listens on
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c =
        GceCompute::new(PROJECT, Some(&format!("http://127.0.0.1:{port}")), CredentialsMode::Anonymous).await.unwrap();
    let e = c.get_instance(ZONE, "x").await.unwrap_err();
    assert_eq!(e.kind, CloudErrorKind::Unavailable, "{e:?}");
    assert_eq!(e.kind.condition_reason(), "ComputeUnavailable");
    assert!(e.retryable());
    assert_eq!(e.http_status, None);
}

/// A client with a token bucket and request counters, on a fresh emulator.
async fn limited_bed(qps: f64) -> (Bed, std::sync::Arc<RateLimiter>, ComputeRequests) {
    let mut bed = Bed::start().await;
    let limiter = std::sync::Arc::new(RateLimiter::new(&ComputeLimits { compute_qps: qps, compute_burst: 8 }));
    let counts = ComputeRequests::default();
    bed.compute = GceCompute::new(PROJECT, Some(&bed.emu.endpoint()), CredentialsMode::Anonymous)
        .await
        .expect("client builds")
        .with_rate_limit(limiter.clone())
        .with_request_metrics(counts.clone());
    (bed, limiter, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_exceeded_slows_the_whole_client_down() {
    use reqwest::Method;
    let (bed, limiter, counts) = limited_bed(8.0).await;
    let c = &bed.compute;
    assert!(c.get_instance(ZONE, "nothing").await.unwrap().is_none());
    assert_eq!(counts.count("instances.get", "404"), 1, "counted with Compute Engine's answer");

    // One resource's operation rate is that resource's problem: retried, nothing slowed.
    bed.admin(
        Method::PUT,
        "faults/methods/instances.get",
        json!({"errorRate": 1.0, "errorCode": 403, "errorReason": "RESOURCE_OPERATION_RATE_EXCEEDED", "remaining": 1}),
    )
    .await;
    let e = c.get_instance(ZONE, "nothing").await.unwrap_err();
    assert_eq!(e.kind, CloudErrorKind::RateLimited, "{e:?}");
    assert_eq!(limiter.rate(), 8.0);

    // The project's rate: 403 rateLimitExceeded halves the rate for every method.
    bed.admin(
        Method::PUT,
        "faults/methods/instances.get",
        json!({"errorRate": 1.0, "errorCode": 403, "errorReason": "rateLimitExceeded",
               "errorMessage": "Rate Limit Exceeded", "remaining": 1}),
    )
    .await;
    let e = c.get_instance(ZONE, "nothing").await.unwrap_err();
    assert_eq!((e.kind, e.http_status), (CloudErrorKind::RateLimited, Some(403)), "{e:?}");
    assert!(e.retryable());
    assert_eq!(limiter.rate(), 4.0, "halved");
    assert_eq!(counts.count("instances.get", "403"), 2);
    // The fault is spent: calls succeed again, at the lower rate (held for a while).
    assert!(c.list_instances(ZONE, &managed()).await.unwrap().is_empty());
    assert!(c.get_instance(ZONE, "nothing").await.unwrap().is_none());
    assert_eq!(limiter.rate(), 4.0);
    assert_eq!(counts.count("instances.list", "200"), 1);
    bed.emu.stop(true).await;

    // 429 (userRateLimitExceeded, as a per-user quota answers) does the same, from any method.
    let (bed, limiter, counts) = limited_bed(8.0).await;
    bed.admin(
        Method::PUT,
        "faults/methods/instances.list",
        json!({"errorRate": 1.0, "errorCode": 429, "errorReason": "userRateLimitExceeded", "remaining": 1}),
    )
    .await;
    let e = bed.compute.list_instances(ZONE, &managed()).await.unwrap_err();
    assert_eq!((e.kind, e.http_status), (CloudErrorKind::RateLimited, Some(429)), "{e:?}");
    assert_eq!(limiter.rate(), 4.0);
    assert_eq!(counts.count("instances.list", "429"), 1);
    bed.emu.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_waits_for_a_token() {
    // A bucket of 8 tokens refilled at 0.001/s: a ninth request would wait 1,000 s, so it is
    // refused before it is sent, and the emulator never sees it.
    let mut bed = Bed::start().await;
    let limiter = std::sync::Arc::new(RateLimiter::new(&ComputeLimits { compute_qps: 0.001, compute_burst: 8 }));
    let counts = ComputeRequests::default();
    bed.compute = GceCompute::new(PROJECT, Some(&bed.emu.endpoint()), CredentialsMode::Anonymous)
        .await
        .expect("client builds")
        .with_list_page_size(2)
        .with_rate_limit(limiter)
        .with_request_metrics(counts.clone());
    let c = &bed.compute;
    for i in 0..3 {
        let op = c.insert_instance(&request(&format!("pvm-t{i}"), "contract", &format!("ut{i}"))).await.unwrap();
        assert_eq!(op.zone, ZONE);
    }
    // 3 inserts, then a list of 2 pages (each page takes a token)
    assert_eq!(c.list_instances(ZONE, &managed()).await.unwrap().len(), 3);
    assert_eq!(counts.count("instances.list", "200"), 2);
    // 5 sent so far: three more still come out of the burst …
    for _ in 0..3 {
        let _ = c.get_instance(ZONE, "pvm-t0").await;
    }
    // … the rest are refused at once, not sent.
    let e = c.get_instance(ZONE, "pvm-t0").await.unwrap_err();
    assert_eq!(e.kind, CloudErrorKind::RateLimited, "{e:?}");
    assert!(e.retryable() && e.http_status.is_none());
    assert!(e.message.contains("--compute-qps"), "{}", e.message);
    assert_eq!(counts.count("instances.get", "throttled"), 1);
    let served = bed.http.get(format!("{}/emulator/v1/requests", bed.emu.endpoint())).send().await.unwrap();
    let served: serde_json::Value = served.json().await.unwrap();
    assert_eq!(served["instances.get"], 3, "{served}");
    bed.emu.stop(true).await;
}
