//! The scenario harness: the operator's real reconcile pipeline, in-process, against the
//! Compute Engine emulator (backend `none`, real HTTP on loopback, through the production
//! client), an in-memory cluster and scripted VMs. No root, no API server, no machines:
//! a scenario runs in milliseconds to seconds.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use kube::Resource;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use projectvm::api::{ConditionStatus, ProjectVM, VmStatus, Workspace};
use projectvm::cloud::Compute;
use projectvm::cloud::gce::{CredentialsMode, GceCompute};
use projectvm::config::Config;
use projectvm::controller::cluster::Cluster;
use projectvm::controller::kind::VmKind;
use projectvm::controller::owner::Owner;
use projectvm::controller::secrets::{SecretProblem, SshKey, Token};
use projectvm::controller::vm::{HealthAnswer, OnOutput, VmAccess, parse_health};
use projectvm::controller::{Context, Edges, Error, reconcile};
use projectvm::cost::Rates;
use projectvm::fence::{Fence, FencedCompute, FencedVms};
use projectvm::metrics::Metrics;
use projectvm::ssh::{ExecOutput, SshError, SshTarget};
use projectvm_testbed::gce::{BackendChoice, Config as EmulatorConfig, RunningEmulator, serve};
use serde_json::Value;

pub const PROJECT: &str = "scenarios";
pub const ZONE: &str = "us-central1-a";
pub const CLUSTER: &str = "scenario-cluster";

/// One event as published.
#[derive(Clone, Debug)]
pub struct Published {
    pub object: String,
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// Secrets by (namespace, name).
type Secrets = HashMap<(String, String), k8s_openapi::api::core::v1::Secret>;

/// The cluster, in memory: Secrets, the operator's SSH keys, statuses written, events.
#[derive(Default)]
pub struct FakeCluster {
    /// (namespace, name) → the Secret, read through the operator's own checks.
    pub secrets: Mutex<Secrets>,
    ssh_keys: Mutex<HashMap<String, SshKey>>,
    passwords: Mutex<HashMap<String, Token>>,
    pub statuses: Mutex<HashMap<String, Value>>,
    pub status_writes: AtomicUsize,
    pub events: Mutex<Vec<Published>>,
    pub routes: Mutex<Vec<(String, String)>>,
    /// The route objects by (kind, namespace, name): the operator's, and any a test puts
    /// there as somebody else's.
    pub route_objects: Mutex<HashMap<(String, String, String), kube::api::ObjectMeta>>,
    /// Makes `apply_route` fail with this API status code.
    pub route_refusal: Mutex<Option<u16>>,
    /// Makes `ssh_key` panic: an operator bug met inside one object's reconcile.
    pub panic_on_ssh_key: Mutex<bool>,
}

impl FakeCluster {
    /// An opted-in Secret with one key.
    pub fn put_secret(&self, ns: &str, name: &str, key: &str, value: &str) {
        self.put_secret_labelled(ns, name, key, value, &[(projectvm::api::SECRET_OPT_IN_LABEL, "true")]);
    }

    /// A Secret with one key and exactly these labels; each put is a new resourceVersion.
    pub fn put_secret_labelled(&self, ns: &str, name: &str, key: &str, value: &str, labels: &[(&str, &str)]) {
        use k8s_openapi::ByteString;
        let mut s = self.secrets.lock().unwrap();
        let version = s
            .get(&(ns.to_string(), name.to_string()))
            .and_then(|old| old.metadata.resource_version.as_ref()?.parse::<u64>().ok())
            .map_or(1, |v| v + 1);
        let secret = k8s_openapi::api::core::v1::Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                resource_version: Some(version.to_string()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(key.to_string(), ByteString(value.as_bytes().to_vec()))])),
            ..Default::default()
        };
        s.insert((ns.into(), name.into()), secret);
    }

    pub fn events_of(&self, name: &str) -> Vec<Published> {
        self.events.lock().unwrap().iter().filter(|e| e.object.ends_with(&format!("/{name}"))).cloned().collect()
    }
}

#[async_trait::async_trait]
impl Cluster for FakeCluster {
    async fn ssh_key(&self, owner: &Owner) -> Result<SshKey, Error> {
        if *self.panic_on_ssh_key.lock().unwrap() {
            panic!("injected bug while reading the SSH key of {}", owner.key());
        }
        let mut keys = self.ssh_keys.lock().unwrap();
        let key = keys.entry(owner.key()).or_insert_with(|| {
            let pair = projectvm::ssh::generate_keypair("scenario");
            SshKey { private_openssh: pair.private_openssh, public_openssh: pair.public_openssh }
        });
        Ok(key.clone())
    }

    async fn token(
        &self,
        namespace: &str,
        r: &projectvm::api::SecretKeyRef,
    ) -> Result<Result<Token, SecretProblem>, Error> {
        let secrets = self.secrets.lock().unwrap();
        Ok(match secrets.get(&(namespace.to_string(), r.name.clone())) {
            Some(secret) => projectvm::controller::secrets::token_from_secret(namespace, r, secret),
            None => Err(SecretProblem {
                reason: projectvm::conditions::Reason::SecretNotFound,
                message: format!("Secret {namespace}/{} (key {:?}) not found: create it", r.name, r.key),
            }),
        })
    }

    async fn secret_values(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Result<projectvm::controller::secrets::SecretValues, SecretProblem>, Error> {
        let secrets = self.secrets.lock().unwrap();
        Ok(match secrets.get(&(namespace.to_string(), name.to_string())) {
            Some(secret) => projectvm::controller::secrets::values_from_secret(namespace, name, secret),
            None => Err(SecretProblem {
                reason: projectvm::conditions::Reason::SecretNotFound,
                message: format!("Secret {namespace}/{name} not found"),
            }),
        })
    }

    async fn request_start(&self, _namespace: &str, _project_vm: &str, _value: &str) -> Result<(), Error> {
        Ok(())
    }

    async fn delete_run(&self, _namespace: &str, _name: &str, _uid: &str) -> Result<(), Error> {
        Ok(())
    }

    async fn generated_password(&self, owner: &Owner) -> Result<Token, Error> {
        let mut p = self.passwords.lock().unwrap();
        Ok(p.entry(owner.key()).or_insert_with(|| Token { value: "generated-pw".into(), version: "1".into() }).clone())
    }

    async fn apply_route(
        &self,
        ws: &Workspace,
        address: &str,
    ) -> Result<Result<(), projectvm::controller::route::RouteConflict>, Error> {
        use projectvm::controller::route;
        if let Some(code) = *self.route_refusal.lock().unwrap() {
            return Err(Error::Kube(kube::Error::Api(
                kube::core::Status::failure(
                    "Service \"x\" is invalid: metadata.name: must be no more than 63 characters",
                    "Invalid",
                )
                .with_code(code)
                .boxed(),
            )));
        }
        let ns = ws.meta().namespace.clone().unwrap_or_default();
        let name = ws.meta().name.clone().unwrap_or_default();
        let (service, slice, ingress) = route::desired(ws, address);
        let key =
            |kind: &str, m: &kube::api::ObjectMeta| (kind.to_string(), ns.clone(), m.name.clone().unwrap_or_default());
        let mut objects = self.route_objects.lock().unwrap();
        let svc_key = key("Service", &service.metadata);
        let ingress_key = ("Ingress".to_string(), svc_key.1.clone(), svc_key.2.clone());
        let existing = route::Existing {
            service: objects.get(&svc_key).cloned(),
            endpoint_slice: objects.get(&key("EndpointSlice", &slice.metadata)).cloned(),
            ingress: objects.get(&ingress_key).cloned(),
        };
        if let Err(c) = route::check(ws, &existing) {
            return Ok(Err(c));
        }
        if route::stale_ingress(ws, &existing).is_some() {
            objects.remove(&ingress_key);
        }
        objects.insert(svc_key, service.metadata.clone());
        objects.insert(key("EndpointSlice", &slice.metadata), slice.metadata.clone());
        if let Some(i) = ingress {
            objects.insert(ingress_key, i.metadata);
        }
        self.routes.lock().unwrap().push((name, address.to_string()));
        Ok(Ok(()))
    }

    async fn write_status(&self, owner: &Owner, status: Value) -> Result<(), Error> {
        self.status_writes.fetch_add(1, Ordering::SeqCst);
        self.statuses.lock().unwrap().insert(owner.key(), status);
        Ok(())
    }

    async fn publish(&self, owner: &Owner, event: &Event) {
        self.events.lock().unwrap().push(Published {
            object: owner.key(),
            warning: event.type_ == EventType::Warning,
            reason: event.reason.clone(),
            note: event.note.clone().unwrap_or_default(),
        });
    }
}

/// How a scripted VM answers.
#[derive(Clone, Debug)]
pub struct Guest {
    /// SSH itself fails with this (booting VM, refused key, wrong host key).
    pub ssh: Option<SshError>,
    /// Exit code and stderr of the repository sync.
    pub git: (u32, String),
    /// Exit code of the prerequisites script, and the log tail it leaves.
    pub prerequisites: (u32, String),
    pub code_server_exit: u32,
    pub healthy: bool,
    /// A step's main command hangs this long (a hung clone or apt).
    pub hang: Option<Duration>,
    /// The activity probe reports a person at work.
    pub active: bool,
    /// A step's command panics inside the operator.
    pub panic_in_step: bool,
}

impl Default for Guest {
    fn default() -> Self {
        Self {
            ssh: None,
            git: (0, String::new()),
            prerequisites: (0, String::new()),
            code_server_exit: 0,
            healthy: true,
            hang: None,
            active: false,
            panic_in_step: false,
        }
    }
}

/// Scripted VMs: they answer each kind of command the steps send, and record what they
/// were sent (commands and stdin) so tests can look for secrets.
#[derive(Default)]
pub struct FakeVms {
    pub guest: Mutex<Guest>,
    pub commands: Mutex<Vec<String>>,
    pub stdin: Mutex<Vec<String>>,
    pub files: Mutex<Vec<(String, String)>>,
}

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[async_trait::async_trait]
impl VmAccess for FakeVms {
    async fn exec(
        &self,
        _target: &SshTarget,
        command: &str,
        stdin: Option<&[u8]>,
        _timeout: Duration,
        _on_output: OnOutput<'_>,
    ) -> Result<ExecOutput, SshError> {
        let g = self.guest.lock().unwrap().clone();
        self.commands.lock().unwrap().push(command.to_string());
        let input = stdin.map(|s| String::from_utf8_lossy(s).to_string()).unwrap_or_default();
        self.stdin.lock().unwrap().push(input.clone());
        if let Some(e) = g.ssh {
            return Err(e);
        }
        let ok = |stdout: &str| ExecOutput { stdout: stdout.as_bytes().to_vec(), ..Default::default() };
        if command == "true" || command.starts_with("head -c ") {
            return Ok(ok(""));
        }
        if command.contains("tail -n") {
            return Ok(ok(&g.prerequisites.1));
        }
        let main_step =
            input.contains("PROJECTVM_COMMIT=") || input.contains("=== $(date") || input.contains("code-server");
        if main_step {
            if g.panic_in_step {
                panic!("injected bug inside a step");
            }
            if let Some(h) = g.hang {
                tokio::time::sleep(h).await;
            }
        }
        if input.contains("PROJECTVM_COMMIT=") {
            let (exit, stderr) = g.git;
            let stdout = format!("PROJECTVM_COMMIT={COMMIT}\nPROJECTVM_BRANCH=main\n");
            return Ok(ExecOutput {
                exit_status: exit,
                stdout: stdout.into_bytes(),
                stderr: stderr.into_bytes(),
                dropped: 0,
            });
        }
        if input.contains("=== $(date") {
            return Ok(ExecOutput { exit_status: g.prerequisites.0, ..Default::default() });
        }
        if input.contains("PROJECTVM_ACTIVE") {
            return Ok(ok(if g.active { "PROJECTVM_ACTIVE=1\n" } else { "PROJECTVM_ACTIVE=0\n" }));
        }
        if input.contains("code-server") {
            return Ok(ExecOutput {
                exit_status: g.code_server_exit,
                stderr: b"install failed".to_vec(),
                ..Default::default()
            });
        }
        Ok(ok(""))
    }

    async fn write_file(
        &self,
        _target: &SshTarget,
        path: &str,
        contents: &[u8],
        _mode: u32,
        _owner: Option<&str>,
        _timeout: Duration,
    ) -> Result<(), SshError> {
        if let Some(e) = self.guest.lock().unwrap().ssh.clone() {
            return Err(e);
        }
        self.files.lock().unwrap().push((path.to_string(), String::from_utf8_lossy(contents).to_string()));
        Ok(())
    }

    async fn exec_stream(
        &self,
        _target: &SshTarget,
        command: &str,
        _timeout: Duration,
    ) -> Result<projectvm::ssh::ByteStream, SshError> {
        self.commands.lock().unwrap().push(command.to_string());
        Err(SshError::Channel("the scripted guests stream nothing".into()))
    }

    async fn forget(&self, _host: &str) {}

    async fn probe_health(&self, _url: &str) -> HealthAnswer {
        if self.guest.lock().unwrap().healthy {
            parse_health(200, r#"{"status":"expired","lastHeartbeat":0}"#)
        } else {
            parse_health(502, "bad gateway")
        }
    }
}

/// One scenario's world.
pub struct World {
    /// Shared by the worlds of several clusters (see [`World::another_cluster`]).
    pub emulator: Arc<RunningEmulator>,
    pub ctx: Arc<Context>,
    pub cluster: Arc<FakeCluster>,
    pub vms: Arc<FakeVms>,
    pub compute: Arc<GceCompute>,
    http: reqwest::Client,
    /// Passes that left a resource not Ready, with nothing running for it in the background,
    /// to wait for the periodic pass: the controller would sit idle for a minute there.
    pub idle_waits: AtomicUsize,
}

impl World {
    pub async fn new() -> World {
        Self::build(&[], None).await
    }

    /// A world whose operator runs with these extra command-line flags.
    pub async fn with_flags(flags: &[&str]) -> World {
        Self::build(flags, None).await
    }

    /// A world whose cloud and VM edges sit behind a leadership fence, as the operator's do.
    pub async fn fenced(fence: Arc<Fence>) -> World {
        Self::build(&[], Some(fence)).await
    }

    async fn build(flags: &[&str], fence: Option<Arc<Fence>>) -> World {
        let mut cfg = EmulatorConfig::none_backend();
        cfg.backend = BackendChoice::None { boot_delay: Duration::from_millis(20) };
        cfg.operation_wait_timeout = Duration::from_secs(2);
        let emulator = serve(cfg, "127.0.0.1:0".parse().unwrap()).await.expect("emulator starts");
        World::on(Arc::new(emulator), CLUSTER, flags, fence).await
    }

    /// Another cluster's operator on the same Google Cloud project (this world's emulator),
    /// with its own cluster name, in-memory cluster and VMs.
    pub async fn another_cluster(&self, cluster: &str) -> World {
        World::on(self.emulator.clone(), cluster, &[], None).await
    }

    async fn on(
        emulator: Arc<RunningEmulator>,
        cluster_name: &str,
        flags: &[&str],
        fence: Option<Arc<Fence>>,
    ) -> World {
        let compute = Arc::new(
            GceCompute::new(PROJECT, Some(&emulator.endpoint()), CredentialsMode::Anonymous).await.expect("client"),
        );
        let cluster = Arc::new(FakeCluster::default());
        let vms = Arc::new(FakeVms::default());
        let config = Config::parse_from(
            ["projectvm-operator", "--gcp-project", PROJECT, "--default-zone", ZONE, "--cluster-name", cluster_name]
                .into_iter()
                .chain(flags.iter().copied()),
        );
        // Never used: the scenarios call the pipeline below the finalizer.
        let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let (compute_edge, vm_edge): (Arc<dyn Compute>, Arc<dyn VmAccess>) = match fence {
            Some(f) => {
                (Arc::new(FencedCompute::new(compute.clone(), f.clone())), Arc::new(FencedVms::new(vms.clone(), f)))
            }
            None => (compute.clone(), vms.clone()),
        };
        let edges = Edges { client, cluster: cluster.clone(), compute: compute_edge, vm: vm_edge, artifacts: None };
        let (ctx, _wakeups) = Context::new(edges, config, Rates::default(), Arc::new(Metrics::new()));
        World { emulator, ctx, cluster, vms, compute, http: reqwest::Client::new(), idle_waits: AtomicUsize::new(0) }
    }

    /// PUT/DELETE/POST on the emulator's admin API (fault knobs).
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Value) {
        let url = format!("{}/emulator/v1/{path}", self.emulator.endpoint());
        let r = self.http.request(method.clone(), &url).json(&body).send().await.expect("admin API answers");
        assert!(r.status().is_success(), "{method} {url}: {}", r.status());
    }

    pub fn guest(&self, f: impl FnOnce(&mut Guest)) {
        f(&mut self.vms.guest.lock().unwrap());
    }

    /// One reconcile of `obj` as the controller would run it (panics contained), with the
    /// status it wrote applied to `obj`.
    pub async fn reconcile<K: VmKind + Resource>(&self, obj: &mut K) -> Result<Action, Error> {
        let writes = self.cluster.status_writes.load(Ordering::SeqCst);
        let r = reconcile::contained(Arc::new(obj.clone()), self.ctx.clone(), false).await;
        self.refresh(obj, writes);
        let ready = obj.vm_status().is_some_and(|s| is(s, "Ready", ConditionStatus::True));
        let at_rest = matches!(&r, Ok(a) if *a == Action::requeue(projectvm::controller::status::AT_REST));
        if at_rest && !ready && self.ctx.tasks.running() == 0 {
            self.idle_waits.fetch_add(1, Ordering::SeqCst);
        }
        r
    }

    /// One deletion pass.
    pub async fn delete<K: VmKind + Resource>(&self, obj: &mut K) -> Result<Action, Error> {
        let writes = self.cluster.status_writes.load(Ordering::SeqCst);
        let r = reconcile::contained(Arc::new(obj.clone()), self.ctx.clone(), true).await;
        self.refresh(obj, writes);
        r
    }

    /// Takes the status the pass wrote, as the watch would bring it back; without a write
    /// the object stays as it was.
    fn refresh<K: VmKind + Resource>(&self, obj: &mut K, writes_before: usize) {
        if self.cluster.status_writes.load(Ordering::SeqCst) == writes_before {
            return;
        }
        let key = obj.owner().key();
        if let Some(status) = self.cluster.statuses.lock().unwrap().get(&key) {
            let mut v = serde_json::to_value(&*obj).unwrap();
            v["status"] = status.clone();
            *obj = serde_json::from_value(v).unwrap();
        }
    }

    /// Reconciles until `done` holds (between passes, background step tasks run), at most
    /// `limit` of wall time.
    pub async fn until<K: VmKind + Resource>(
        &self,
        obj: &mut K,
        what: &str,
        limit: Duration,
        done: impl Fn(&VmStatus) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            let _ = self.reconcile(obj).await;
            if obj.vm_status().is_some_and(&done) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: not reached in {limit:?}; status: {:#?}", obj.vm_status());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn until_ready<K: VmKind + Resource>(&self, obj: &mut K) {
        self.until(obj, "Ready", Duration::from_secs(20), |s| is(s, "Ready", ConditionStatus::True)).await;
    }

    /// Instances in the emulator, by name.
    pub async fn instance(&self, name: &str) -> Option<projectvm::cloud::CloudInstance> {
        self.compute.get_instance(ZONE, name).await.expect("get instance")
    }
}

/// A condition's status is `status`.
pub fn is(s: &VmStatus, type_: &str, status: ConditionStatus) -> bool {
    s.conditions.iter().any(|c| c.type_ == type_ && c.status == status)
}

/// A condition is False with this reason.
pub fn has_reason(s: &VmStatus, type_: &str, reason: &str) -> bool {
    s.conditions.iter().any(|c| c.type_ == type_ && c.status == ConditionStatus::False && c.reason == reason)
}

pub fn condition<'a>(s: &'a VmStatus, type_: &str) -> &'a projectvm::api::Condition {
    s.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no condition {type_}: {s:#?}"))
}

/// A ProjectVM from the spec's YAML body (indented two spaces), with a uid as the API server
/// would give it.
pub fn projectvm(name: &str, spec: &str) -> ProjectVM {
    let yaml = format!(
        "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata: {{name: {name}, namespace: team, uid: uid-{name}, generation: 1}}\nspec:\n{spec}"
    );
    serde_yaml::from_str(&yaml).expect("ProjectVM manifest")
}

pub fn workspace(name: &str, spec: &str) -> Workspace {
    let yaml = format!(
        "apiVersion: projectvm.dev/v1alpha1\nkind: Workspace\nmetadata: {{name: {name}, namespace: team, uid: uid-{name}, generation: 1}}\nspec:\n{spec}"
    );
    serde_yaml::from_str(&yaml).expect("Workspace manifest")
}

pub const REPO: &str = "  repository: {url: 'https://git.example.test/acme/api.git'}\n";
