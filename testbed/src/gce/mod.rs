//! A Compute Engine emulator: the compute v1 REST paths projectvm uses, in Google's JSON
//! shapes and error format, with each instance backed by a [`backend::MachineBackend`].

pub mod admin;
pub mod api;
pub mod backend;
pub mod errors;
pub mod faults;
pub mod filter;
pub mod model;
pub mod requests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use backend::{MachineBackend, MachineExit, MachineKey, MachineSpec};
use errors::{ApiError, OperationError};
use faults::Faults;
use filter::Filter;
use model::{
    BootDisk, GuestAttribute, InstanceRecord, InstanceStatus, MetadataItem, OpStatus, OperationRecord, timestamp,
};
use requests::RequestCounts;

/// Which machines stand behind instances.
pub enum BackendChoice {
    /// Records only; instances reach RUNNING after `boot_delay`.
    None { boot_delay: Duration },
    /// Real systemd-nspawn machines.
    Nspawn(backend::nspawn::NspawnConfig),
}

pub struct Config {
    pub backend: BackendChoice,
    /// Where `state.json` (and, for nspawn, the machines' disks) live; None = memory only.
    pub state_dir: Option<PathBuf>,
    /// How long `zoneOperations.wait` blocks at most.
    pub operation_wait_timeout: Duration,
    /// The `user` recorded in operations.
    pub user: String,
    /// First and last address handed to machines.
    pub first_address: Ipv4Addr,
    pub last_address: Ipv4Addr,
}

impl Config {
    pub fn none_backend() -> Self {
        Self {
            backend: BackendChoice::None { boot_delay: Duration::from_millis(200) },
            state_dir: None,
            operation_wait_timeout: Duration::from_secs(120),
            user: "projectvm-operator@projectvm-test.iam.gserviceaccount.com".into(),
            first_address: Ipv4Addr::new(10, 213, 0, 16),
            last_address: Ipv4Addr::new(10, 213, 0, 250),
        }
    }
}

type OpKey = (String, String, String);

#[derive(Default)]
struct State {
    instances: BTreeMap<MachineKey, InstanceRecord>,
    operations: HashMap<OpKey, OperationRecord>,
    /// Zones each project has used (aggregatedList lists them).
    zones: BTreeSet<(String, String)>,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Persisted {
    instances: Vec<InstanceRecord>,
}

enum OpKind {
    Insert,
    Start,
    Stop,
    Delete,
    SetMachineType(String),
    SetMetadata(Vec<MetadataItem>),
    SetLabels(BTreeMap<String, String>),
    Fail(OperationError),
}

struct Inner {
    cfg: Config,
    backend: Arc<dyn MachineBackend>,
    state: Mutex<State>,
    faults: Mutex<Faults>,
    requests: Mutex<RequestCounts>,
    changed: watch::Sender<u64>,
    unstick: watch::Sender<u64>,
    locks: Mutex<HashMap<MachineKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// The emulator's state and behaviour; cheap to clone.
#[derive(Clone)]
pub struct Emulator {
    inner: Arc<Inner>,
}

/// A running emulator server.
pub struct RunningEmulator {
    pub addr: SocketAddr,
    pub emulator: Emulator,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl RunningEmulator {
    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop serving, power off all machines (and delete them with `cleanup`).
    pub async fn stop(mut self, cleanup: bool) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.server).await;
        self.emulator.shutdown(cleanup).await;
    }
}

/// Bind, build the emulator and serve in the background.
pub async fn serve(cfg: Config, listen: SocketAddr) -> anyhow::Result<RunningEmulator> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let emulator = Emulator::new(cfg)?;
    let app = api::router(emulator.clone()).merge(admin::router(emulator.clone()));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "server failed");
        }
    });
    tracing::info!(%addr, backend = emulator.inner.backend.kind(), "gce emulator listening");
    Ok(RunningEmulator { addr, emulator, shutdown: Some(tx), server })
}

fn instance_resource(project: &str, zone: &str, name: &str) -> String {
    format!("projects/{project}/zones/{zone}/instances/{name}")
}

fn opt_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Labels as Compute Engine takes them: at most 64; keys start with a lowercase letter; keys
/// and values lowercase letters, digits, `-` and `_`, at most 63 characters.
fn parse_labels(v: Option<&Value>) -> Result<BTreeMap<String, String>, ApiError> {
    let m = match v {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ApiError::invalid("Invalid value for field 'resource.labels'.")),
    };
    if m.len() > 64 {
        return Err(ApiError::invalid("Invalid value for field 'resource.labels': too many labels (at most 64)."));
    }
    let ok = |s: &str| {
        s.len() <= 63 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    };
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let v = opt_str(v).unwrap_or_default();
        if !ok(k) || !k.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(ApiError::invalid(format!("Invalid value for field 'resource.labels': label key '{k}'.")));
        }
        if !ok(&v) {
            return Err(ApiError::invalid(format!("Invalid value for field 'resource.labels': label value '{v}'.")));
        }
        out.insert(k.clone(), v);
    }
    Ok(out)
}

fn parse_metadata_items(v: &Value) -> Result<Vec<MetadataItem>, ApiError> {
    let mut items = Vec::new();
    let Some(arr) = v.get("items") else {
        return Ok(items);
    };
    let Some(arr) = arr.as_array() else {
        return Err(ApiError::invalid("Invalid value for field 'resource.metadata.items'."));
    };
    for (i, it) in arr.iter().enumerate() {
        let key = it.get("key").and_then(opt_str).unwrap_or_default();
        if key.is_empty() {
            return Err(ApiError::invalid(format!(
                "Invalid value for field 'resource.metadata.items[{i}].key': ''. Must be a match of regex '[a-zA-Z0-9-_]{{1,128}}'"
            )));
        }
        if items.iter().any(|m: &MetadataItem| m.key == key) {
            return Err(ApiError::invalid(format!(
                "Invalid value for field 'resource.metadata.items[{i}].key': '{key}'. Duplicate keys are not allowed."
            )));
        }
        let value = it.get("value").and_then(opt_str).unwrap_or_default();
        items.push(MetadataItem { key, value });
    }
    Ok(items)
}

fn page<T: Clone>(
    items: Vec<(String, T)>,
    max_results: Option<&str>,
    page_token: Option<&str>,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let max = match max_results {
        None | Some("") => 500,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n <= 500 => n.max(1),
            _ => {
                return Err(ApiError::invalid(format!(
                    "Invalid value for field 'maxResults': '{s}'. Must be less than or equal to 500"
                )));
            }
        },
    };
    let after = match page_token {
        None | Some("") => None,
        Some(t) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::invalid(format!("Invalid value for field 'pageToken': '{t}'.")))?,
        ),
    };
    let rest: Vec<(String, T)> = items.into_iter().filter(|(k, _)| after.as_ref().is_none_or(|a| k > a)).collect();
    let more = rest.len() > max;
    let taken: Vec<(String, T)> = rest.into_iter().take(max).collect();
    let token =
        if more { taken.last().map(|(k, _)| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k)) } else { None };
    Ok((taken.into_iter().map(|(_, v)| v).collect(), token))
}

impl Emulator {
    pub fn new(cfg: Config) -> anyhow::Result<Emulator> {
        let (exit_tx, exit_rx) = mpsc::unbounded_channel::<MachineExit>();
        let backend: Arc<dyn MachineBackend> = match &cfg.backend {
            BackendChoice::None { boot_delay } => Arc::new(backend::none::NoneBackend::new(*boot_delay)),
            BackendChoice::Nspawn(n) => Arc::new(backend::nspawn::NspawnBackend::new(n.clone(), exit_tx)?),
        };
        let emulator = Emulator {
            inner: Arc::new(Inner {
                cfg,
                backend,
                state: Mutex::default(),
                faults: Mutex::default(),
                requests: Mutex::default(),
                changed: watch::channel(0).0,
                unstick: watch::channel(0).0,
                locks: Mutex::default(),
            }),
        };
        emulator.load()?;
        let e = emulator.clone();
        tokio::spawn(e.watch_exits(exit_rx));
        Ok(emulator)
    }

    pub fn backend_kind(&self) -> &'static str {
        self.inner.backend.kind()
    }

    // ---- persistence ----

    fn state_file(&self) -> Option<PathBuf> {
        self.inner.cfg.state_dir.as_ref().map(|d| d.join("state.json"))
    }

    fn load(&self) -> anyhow::Result<()> {
        let Some(path) = self.state_file() else {
            return Ok(());
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let persisted: Persisted = serde_json::from_str(&text)?;
        let mut st = self.inner.state.lock().expect("lock");
        for mut rec in persisted.instances {
            // Machines do not survive an emulator restart: they come back stopped.
            if rec.status != InstanceStatus::Terminated {
                rec.status = InstanceStatus::Terminated;
                rec.last_stop_timestamp = Some(timestamp());
            }
            rec.guest_attributes.clear();
            rec.status_message = None;
            if !self.inner.backend.claim_address(rec.address) {
                let used: BTreeSet<Ipv4Addr> = st.instances.values().map(|r| r.address).collect();
                match self.pick_address(&used) {
                    Some(a) => rec.address = a,
                    None => anyhow::bail!("no free address for {}", rec.name),
                }
            }
            st.zones.insert((rec.project.clone(), rec.zone.clone()));
            let key = MachineKey { project: rec.project.clone(), zone: rec.zone.clone(), name: rec.name.clone() };
            tracing::info!(instance = %rec.resource(), "restored instance (TERMINATED)");
            st.instances.insert(key, rec);
        }
        self.persist(&st);
        Ok(())
    }

    fn persist(&self, st: &State) {
        let Some(path) = self.state_file() else {
            return;
        };
        let p = Persisted { instances: st.instances.values().cloned().collect() };
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::write(&tmp, serde_json::to_vec_pretty(&p).expect("serialise"))?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            tracing::warn!(error = %e, path = %path.display(), "could not persist state");
        }
    }

    // ---- helpers ----

    fn pick_address(&self, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let first = u32::from(self.inner.cfg.first_address);
        let last = u32::from(self.inner.cfg.last_address);
        (first..=last).map(Ipv4Addr::from).find(|a| !used.contains(a) && self.inner.backend.claim_address(*a))
    }

    fn lock_for(&self, key: &MachineKey) -> Arc<tokio::sync::Mutex<()>> {
        self.inner.locks.lock().expect("lock").entry(key.clone()).or_default().clone()
    }

    fn bump(&self) {
        self.inner.changed.send_modify(|n| *n += 1);
    }

    fn spec_of(rec: &InstanceRecord) -> MachineSpec {
        MachineSpec {
            project: rec.project.clone(),
            zone: rec.zone.clone(),
            name: rec.name.clone(),
            id: rec.id,
            address: rec.address,
            machine_type: rec.machine_type.clone(),
            metadata: rec.metadata.iter().map(|m| (m.key.clone(), m.value.clone())).collect(),
            booting: false,
            source_image: rec.disk.source_image.clone(),
        }
    }

    fn spec(&self, key: &MachineKey) -> Option<MachineSpec> {
        let st = self.inner.state.lock().expect("lock");
        st.instances.get(key).map(Self::spec_of)
    }

    /// Apply `f` to the instance record (if it still exists) and persist.
    fn update_instance(&self, key: &MachineKey, f: impl FnOnce(&mut InstanceRecord)) {
        let mut st = self.inner.state.lock().expect("lock");
        if let Some(rec) = st.instances.get_mut(key) {
            f(rec);
            rec.fingerprint = model::new_fingerprint();
        }
        self.persist(&st);
        drop(st);
        self.bump();
    }

    fn update_op(&self, key: &OpKey, f: impl FnOnce(&mut OperationRecord)) {
        let mut st = self.inner.state.lock().expect("lock");
        if let Some(op) = st.operations.get_mut(key) {
            f(op);
        }
        drop(st);
        self.bump();
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn MachineBackend) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let b = self.inner.backend.clone();
        tokio::task::spawn_blocking(move || f(&*b)).await?
    }

    /// Count one API call (see [`requests`]), then apply its latency and injected errors.
    pub async fn fault(&self, method: &str, project: &str, resource: &str) -> Result<(), ApiError> {
        self.count_request(method, resource);
        let d = self.inner.faults.lock().expect("lock").on_call(method, project, resource);
        if d.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(d.latency_ms)).await;
        }
        match d.error {
            Some(e) => {
                tracing::info!(method, code = e.code, reason = %e.reason, "injected error");
                Err(e)
            }
            None => Ok(()),
        }
    }

    fn existing(&self, key: &MachineKey) -> Result<InstanceRecord, ApiError> {
        let st = self.inner.state.lock().expect("lock");
        st.instances
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&instance_resource(&key.project, &key.zone, &key.name)))
    }

    /// Create an operation and run it in the background; returns its JSON.
    fn launch(&self, key: MachineKey, target_id: u64, op_type: &str, kind: OpKind) -> Value {
        let stuck = !matches!(kind, OpKind::Fail(_)) && self.inner.faults.lock().expect("lock").take_stuck(op_type);
        let op = OperationRecord {
            project: key.project.clone(),
            zone: key.zone.clone(),
            name: model::new_operation_name(),
            id: model::new_id(),
            operation_type: op_type.to_string(),
            target_name: key.name.clone(),
            target_id,
            status: OpStatus::Pending,
            progress: 0,
            insert_time: timestamp(),
            start_time: None,
            end_time: None,
            error: None,
            user: self.inner.cfg.user.clone(),
            stuck,
        };
        let json = op.to_json();
        let op_key = (op.project.clone(), op.zone.clone(), op.name.clone());
        {
            let mut st = self.inner.state.lock().expect("lock");
            st.operations.insert(op_key.clone(), op);
        }
        tracing::info!(op = %op_key.2, op_type, instance = %key.name, stuck, "operation created");
        let e = self.clone();
        tokio::spawn(async move { e.run_op(op_key, key, kind, stuck).await });
        json
    }

    async fn run_op(self, op_key: OpKey, key: MachineKey, kind: OpKind, stuck: bool) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.update_op(&op_key, |op| {
            op.status = OpStatus::Running;
            op.start_time = Some(timestamp());
        });
        if stuck {
            let mut rx = self.inner.unstick.subscribe();
            let _ = rx.changed().await;
            self.update_op(&op_key, |op| op.stuck = false);
        }
        let result = match kind {
            OpKind::Fail(e) => Err(e),
            kind => {
                let lock = self.lock_for(&key);
                let _guard = lock.lock().await;
                match kind {
                    OpKind::Insert => self.do_boot(&key, true).await,
                    OpKind::Start => self.do_start(&key).await,
                    OpKind::Stop => self.do_stop(&key).await,
                    OpKind::Delete => self.do_delete(&key).await,
                    OpKind::SetMachineType(mt) => self.do_set_machine_type(&key, mt).await,
                    OpKind::SetMetadata(items) => self.do_set_metadata(&key, items).await,
                    OpKind::SetLabels(labels) => self.do_set_labels(&key, labels),
                    OpKind::Fail(_) => unreachable!(),
                }
            }
        };
        if let Err(e) = &result {
            tracing::warn!(op = %op_key.2, code = %e.code, message = %e.message, "operation failed");
        } else {
            tracing::info!(op = %op_key.2, "operation done");
        }
        self.update_op(&op_key, |op| {
            op.status = OpStatus::Done;
            op.progress = 100;
            op.end_time = Some(timestamp());
            op.error = result.err();
        });
    }

    async fn publish_guest_attributes(&self, key: &MachineKey) {
        let Some(rec) = self.existing(key).ok() else {
            return;
        };
        if !rec.guest_attributes_enabled() || rec.status != InstanceStatus::Running {
            self.update_instance(key, |r| r.guest_attributes.clear());
            return;
        }
        let spec = Self::spec_of(&rec);
        match self.blocking(move |b| b.host_keys(&spec)).await {
            Ok(keys) => self.update_instance(key, |r| {
                r.guest_attributes = keys
                    .into_iter()
                    .map(|(k, v)| GuestAttribute { namespace: "hostkeys".into(), key: k, value: v })
                    .collect();
            }),
            Err(e) => tracing::warn!(error = %e, "reading host keys failed"),
        }
    }

    /// Create the disk (first boot) and boot to RUNNING.
    async fn do_boot(&self, key: &MachineKey, first: bool) -> Result<(), OperationError> {
        let mut spec = self.spec(key).ok_or_else(|| OperationError::internal("instance vanished"))?;
        spec.booting = self.inner.faults.lock().expect("lock").holds_booting(&key.name);
        if first {
            let s = spec.clone();
            if let Err(e) = self.blocking(move |b| b.create_disk(&s)).await {
                self.update_instance(key, |r| {
                    r.status = InstanceStatus::Terminated;
                    r.status_message = Some(format!("disk creation failed: {e:#}"));
                });
                return Err(OperationError::internal(format!("Creating the boot disk failed: {e:#}")));
            }
        }
        self.update_instance(key, |r| {
            r.status = InstanceStatus::Staging;
            r.status_message = None;
        });
        let s = spec.clone();
        let res = self
            .blocking(move |b| {
                b.apply_metadata(&s)?;
                b.boot(&s)
            })
            .await;
        if let Err(e) = res {
            let s = spec.clone();
            let _ = self.blocking(move |b| b.stop(&s)).await;
            self.update_instance(key, |r| {
                r.status = InstanceStatus::Terminated;
                r.status_message = Some(format!("boot failed: {e:#}"));
                r.last_stop_timestamp = Some(timestamp());
            });
            return Err(OperationError::internal(format!("The instance failed to boot: {e:#}")));
        }
        self.update_instance(key, |r| {
            r.status = InstanceStatus::Running;
            r.last_start_timestamp = Some(timestamp());
        });
        self.publish_guest_attributes(key).await;
        Ok(())
    }

    async fn do_start(&self, key: &MachineKey) -> Result<(), OperationError> {
        let rec = self.existing(key).map_err(|e| OperationError::new("RESOURCE_NOT_FOUND", e.message, 404))?;
        if rec.status == InstanceStatus::Running {
            return Ok(());
        }
        if self.inner.faults.lock().expect("lock").exhausted_zones.contains(&key.zone) {
            return Err(OperationError::zone_exhausted(&key.project, &key.zone));
        }
        self.do_boot(key, false).await
    }

    async fn do_stop(&self, key: &MachineKey) -> Result<(), OperationError> {
        let rec = self.existing(key).map_err(|e| OperationError::new("RESOURCE_NOT_FOUND", e.message, 404))?;
        if rec.status == InstanceStatus::Terminated {
            return Ok(());
        }
        self.update_instance(key, |r| r.status = InstanceStatus::Stopping);
        let spec = Self::spec_of(&rec);
        let res = self.blocking(move |b| b.stop(&spec)).await;
        self.update_instance(key, |r| {
            r.status = InstanceStatus::Terminated;
            r.last_stop_timestamp = Some(timestamp());
            r.guest_attributes.clear();
        });
        res.map_err(|e| OperationError::internal(format!("Stopping the instance failed: {e:#}")))
    }

    async fn do_delete(&self, key: &MachineKey) -> Result<(), OperationError> {
        let rec = self.existing(key).map_err(|e| OperationError::new("RESOURCE_NOT_FOUND", e.message, 404))?;
        if rec.status != InstanceStatus::Terminated {
            self.update_instance(key, |r| r.status = InstanceStatus::Stopping);
        }
        let spec = Self::spec_of(&rec);
        let res = self.blocking(move |b| b.destroy(&spec)).await;
        if let Err(e) = res {
            self.update_instance(key, |r| {
                r.status = InstanceStatus::Terminated;
                r.status_message = Some(format!("deletion failed: {e:#}"));
            });
            return Err(OperationError::internal(format!("Deleting the instance failed: {e:#}")));
        }
        self.inner.backend.release_address(rec.address);
        let mut st = self.inner.state.lock().expect("lock");
        st.instances.remove(key);
        self.persist(&st);
        drop(st);
        self.bump();
        Ok(())
    }

    async fn do_set_machine_type(&self, key: &MachineKey, mt: String) -> Result<(), OperationError> {
        let rec = self.existing(key).map_err(|e| OperationError::new("RESOURCE_NOT_FOUND", e.message, 404))?;
        if rec.status != InstanceStatus::Terminated {
            return Err(OperationError::new(
                "INVALID_USAGE",
                "Invalid resource usage: 'Instance is starting or running.'.",
                400,
            ));
        }
        self.update_instance(key, |r| r.machine_type = mt);
        Ok(())
    }

    fn do_set_labels(&self, key: &MachineKey, labels: BTreeMap<String, String>) -> Result<(), OperationError> {
        self.existing(key).map_err(|e| OperationError::new("RESOURCE_NOT_FOUND", e.message, 404))?;
        self.update_instance(key, |r| {
            r.labels = labels;
            r.label_fingerprint = model::new_fingerprint();
        });
        Ok(())
    }

    async fn do_set_metadata(&self, key: &MachineKey, items: Vec<MetadataItem>) -> Result<(), OperationError> {
        self.existing(key).map_err(|e| OperationError::new("RESOURCE_NOT_FOUND", e.message, 404))?;
        self.update_instance(key, |r| {
            r.metadata = items;
            r.metadata_fingerprint = model::new_fingerprint();
        });
        if let Some(spec) = self.spec(key)
            && let Err(e) = self.blocking(move |b| b.apply_metadata(&spec)).await
        {
            tracing::warn!(error = %e, "guest agent could not apply metadata");
        }
        self.publish_guest_attributes(key).await;
        Ok(())
    }

    /// A machine's process ended on its own: the guest powered off.
    async fn watch_exits(self, mut rx: mpsc::UnboundedReceiver<MachineExit>) {
        while let Some(ev) = rx.recv().await {
            let mut st = self.inner.state.lock().expect("lock");
            let mut changed = false;
            if let Some(rec) = st.instances.get_mut(&ev.key)
                && rec.id == ev.id
                && rec.status == InstanceStatus::Running
            {
                tracing::info!(instance = %rec.resource(), pid = ev.pid, code = ?ev.code,
                        "machine exited on its own: TERMINATED");
                rec.status = InstanceStatus::Terminated;
                rec.last_stop_timestamp = Some(timestamp());
                rec.guest_attributes.clear();
                rec.fingerprint = model::new_fingerprint();
                changed = true;
            }
            if changed {
                self.persist(&st);
            }
            drop(st);
            if changed {
                self.bump();
            }
        }
    }

    // ---- API methods ----

    pub fn insert(&self, project: &str, zone: &str, body: &Value) -> Result<Value, ApiError> {
        let name = body.get("name").and_then(opt_str).unwrap_or_default();
        if !model::valid_name(&name) {
            return Err(ApiError::invalid_field(
                "resource.name",
                &name,
                "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?|[1-9][0-9]{0,19})'",
            ));
        }
        let mt_raw = body.get("machineType").and_then(opt_str).unwrap_or_default();
        let mt = model::last_segment(&mt_raw).to_string();
        if mt.is_empty()
            || !mt.contains('-')
            || !mt.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        {
            return Err(ApiError::invalid_field(
                "resource.machineType",
                &mt_raw,
                &format!("Machine type with name '{mt}' does not exist in zone '{zone}'."),
            ));
        }
        let labels = parse_labels(body.get("labels"))?;
        let metadata = match body.get("metadata") {
            Some(m) => parse_metadata_items(m)?,
            None => Vec::new(),
        };
        let boot = body
            .get("disks")
            .and_then(|d| d.as_array())
            .and_then(|d| d.iter().find(|x| x.get("boot").and_then(|b| b.as_bool()) == Some(true)).or(d.first()))
            .cloned()
            .unwrap_or(Value::Null);
        let init = boot.get("initializeParams").cloned().unwrap_or(Value::Null);
        let size_gb = init
            .get("diskSizeGb")
            .and_then(opt_str)
            .map(|s| s.parse::<i64>())
            .transpose()
            .map_err(|_| ApiError::invalid("Invalid value for field 'resource.disks[0].initializeParams.diskSizeGb'."))?
            .unwrap_or(10);
        let disk = BootDisk {
            device_name: boot.get("deviceName").and_then(opt_str).unwrap_or_else(|| name.clone()),
            size_gb,
            source_image: init.get("sourceImage").and_then(opt_str),
            auto_delete: boot.get("autoDelete").and_then(|b| b.as_bool()).unwrap_or(false),
        };
        let nic = body
            .get("networkInterfaces")
            .and_then(|n| n.as_array())
            .and_then(|n| n.first())
            .cloned()
            .unwrap_or(Value::Null);
        let full = |s: String| {
            if s.starts_with("https://") {
                s
            } else if s.starts_with("projects/") {
                format!("{}/{s}", model::API_BASE)
            } else {
                format!("{}/projects/{project}/{s}", model::API_BASE)
            }
        };
        let network = full(nic.get("network").and_then(opt_str).unwrap_or_else(|| "global/networks/default".into()));
        let subnetwork = Some(full(
            nic.get("subnetwork")
                .and_then(opt_str)
                .unwrap_or_else(|| format!("regions/{}/subnetworks/default", model::region_of(zone))),
        ));
        // No access config: no external address (the instance is reachable inside its VPC only).
        let external_access = nic.get("accessConfigs").and_then(|a| a.as_array()).is_some_and(|a| !a.is_empty());
        let mut passthrough = serde_json::Map::new();
        for k in ["description", "tags", "serviceAccounts", "scheduling", "shieldedInstanceConfig", "hostname"] {
            if let Some(v) = body.get(k) {
                passthrough.insert(k.to_string(), v.clone());
            }
        }

        let key = MachineKey { project: project.to_string(), zone: zone.to_string(), name: name.clone() };
        let resource = instance_resource(project, zone, &name);
        let mut st = self.inner.state.lock().expect("lock");
        st.zones.insert((project.to_string(), zone.to_string()));
        if st.instances.contains_key(&key) {
            return Err(ApiError::already_exists(&resource));
        }
        let id = model::new_id();
        // Failures Compute Engine reports inside the operation: no instance is made.
        let failure = {
            let mut f = self.inner.faults.lock().expect("lock");
            if f.exhausted_zones.contains(zone) {
                Some(OperationError::zone_exhausted(project, zone))
            } else {
                f.take_quota().map(|q| {
                    let region = q.region.clone().unwrap_or_else(|| model::region_of(zone).to_string());
                    OperationError::quota_exceeded(&q.metric, q.limit, &region)
                })
            }
        };
        if let Some(err) = failure {
            drop(st);
            return Ok(self.launch(key, id, "insert", OpKind::Fail(err)));
        }
        let used: BTreeSet<Ipv4Addr> = st.instances.values().map(|r| r.address).collect();
        let Some(address) = self.pick_address(&used) else {
            drop(st);
            return Ok(self.launch(
                key,
                id,
                "insert",
                OpKind::Fail(OperationError::new(
                    "IP_SPACE_EXHAUSTED",
                    "IP space of the test network is exhausted.",
                    503,
                )),
            ));
        };
        let rec = InstanceRecord {
            project: project.to_string(),
            zone: zone.to_string(),
            name,
            id,
            machine_type: mt,
            status: InstanceStatus::Provisioning,
            status_message: None,
            labels,
            label_fingerprint: model::new_fingerprint(),
            metadata,
            metadata_fingerprint: model::new_fingerprint(),
            fingerprint: model::new_fingerprint(),
            network,
            subnetwork,
            external_access,
            address,
            disk,
            deletion_protection: body.get("deletionProtection").and_then(|b| b.as_bool()).unwrap_or(false),
            creation_timestamp: timestamp(),
            last_start_timestamp: None,
            last_stop_timestamp: None,
            guest_attributes: Vec::new(),
            passthrough,
        };
        tracing::info!(instance = %resource, %address, "insert");
        st.instances.insert(key.clone(), rec);
        self.persist(&st);
        drop(st);
        Ok(self.launch(key, id, "insert", OpKind::Insert))
    }

    pub fn get(&self, project: &str, zone: &str, name: &str) -> Result<Value, ApiError> {
        let key = MachineKey { project: project.into(), zone: zone.into(), name: name.into() };
        Ok(self.existing(&key)?.to_json())
    }

    pub fn list(
        &self,
        project: &str,
        zone: &str,
        filter: Option<&str>,
        max_results: Option<&str>,
        page_token: Option<&str>,
    ) -> Result<Value, ApiError> {
        let filter = Filter::parse(filter.unwrap_or(""))?;
        let st = self.inner.state.lock().expect("lock");
        let items: Vec<(String, Value)> = st
            .instances
            .values()
            .filter(|r| r.project == project && r.zone == zone)
            .filter(|r| filter.matches(|f| r.filter_field(f)))
            .map(|r| (r.name.clone(), r.to_json()))
            .collect();
        drop(st);
        let (items, token) = page(items, max_results, page_token)?;
        let mut v = json!({
            "kind": "compute#instanceList",
            "id": format!("projects/{project}/zones/{zone}/instances"),
            "selfLink": format!("{}/projects/{project}/zones/{zone}/instances", model::API_BASE),
        });
        if !items.is_empty() {
            v["items"] = Value::Array(items);
        }
        if let Some(t) = token {
            v["nextPageToken"] = json!(t);
        }
        Ok(v)
    }

    pub fn aggregated_list(
        &self,
        project: &str,
        filter: Option<&str>,
        max_results: Option<&str>,
        page_token: Option<&str>,
    ) -> Result<Value, ApiError> {
        let filter = Filter::parse(filter.unwrap_or(""))?;
        let st = self.inner.state.lock().expect("lock");
        let zones: Vec<String> = st.zones.iter().filter(|(p, _)| p == project).map(|(_, z)| z.clone()).collect();
        let items: Vec<(String, (String, Value))> = st
            .instances
            .values()
            .filter(|r| r.project == project)
            .filter(|r| filter.matches(|f| r.filter_field(f)))
            .map(|r| (format!("{}/{}", r.zone, r.name), (r.zone.clone(), r.to_json())))
            .collect();
        drop(st);
        let (items, token) = page(items, max_results, page_token)?;
        let mut scopes = serde_json::Map::new();
        for z in zones {
            let in_zone: Vec<Value> = items.iter().filter(|(iz, _)| *iz == z).map(|(_, v)| v.clone()).collect();
            let scope = format!("zones/{z}");
            let entry = if in_zone.is_empty() {
                json!({"warning": {
                    "code": "NO_RESULTS_ON_PAGE",
                    "message": format!("There are no results for scope '{scope}' on this page."),
                    "data": [{"key": "scope", "value": scope}],
                }})
            } else {
                json!({ "instances": in_zone })
            };
            scopes.insert(scope, entry);
        }
        let mut v = json!({
            "kind": "compute#instanceAggregatedList",
            "id": format!("projects/{project}/aggregated/instances"),
            "items": scopes,
            "selfLink": format!("{}/projects/{project}/aggregated/instances", model::API_BASE),
        });
        if let Some(t) = token {
            v["nextPageToken"] = json!(t);
        }
        Ok(v)
    }

    fn key(project: &str, zone: &str, name: &str) -> MachineKey {
        MachineKey { project: project.into(), zone: zone.into(), name: name.into() }
    }

    pub fn start(&self, project: &str, zone: &str, name: &str) -> Result<Value, ApiError> {
        let key = Self::key(project, zone, name);
        let rec = self.existing(&key)?;
        Ok(self.launch(key, rec.id, "start", OpKind::Start))
    }

    pub fn stop(&self, project: &str, zone: &str, name: &str) -> Result<Value, ApiError> {
        let key = Self::key(project, zone, name);
        let rec = self.existing(&key)?;
        Ok(self.launch(key, rec.id, "stop", OpKind::Stop))
    }

    pub fn delete(&self, project: &str, zone: &str, name: &str) -> Result<Value, ApiError> {
        let key = Self::key(project, zone, name);
        let rec = self.existing(&key)?;
        if rec.deletion_protection {
            return Err(ApiError::new(
                400,
                "invalidResourceUsage",
                "Invalid resource usage: 'Resource cannot be deleted if it's protected against deletion.'.",
            ));
        }
        Ok(self.launch(key, rec.id, "delete", OpKind::Delete))
    }

    pub fn set_machine_type(&self, project: &str, zone: &str, name: &str, body: &Value) -> Result<Value, ApiError> {
        let key = Self::key(project, zone, name);
        let rec = self.existing(&key)?;
        let raw = body.get("machineType").and_then(opt_str).unwrap_or_default();
        let mt = model::last_segment(&raw).to_string();
        if mt.is_empty() || !mt.contains('-') {
            return Err(ApiError::invalid_field("machineType", &raw, "Machine type must be specified."));
        }
        if rec.status != InstanceStatus::Terminated {
            return Err(ApiError::new(
                400,
                "invalidResourceUsage",
                "Invalid resource usage: 'Instance is starting or running.'.",
            ));
        }
        Ok(self.launch(key, rec.id, "setMachineType", OpKind::SetMachineType(mt)))
    }

    pub fn set_metadata(&self, project: &str, zone: &str, name: &str, body: &Value) -> Result<Value, ApiError> {
        let key = Self::key(project, zone, name);
        let rec = self.existing(&key)?;
        let items = parse_metadata_items(body)?;
        match body.get("fingerprint").and_then(opt_str) {
            Some(fp) if fp == rec.metadata_fingerprint => {}
            _ => {
                return Err(ApiError::condition_not_met(
                    "Supplied fingerprint does not match current metadata fingerprint.",
                ));
            }
        }
        Ok(self.launch(key, rec.id, "setMetadata", OpKind::SetMetadata(items)))
    }

    /// `instances.setLabels`: the whole label set, guarded by `labelFingerprint` (required,
    /// as Compute Engine requires it), with Compute Engine's rules for keys and values.
    pub fn set_labels(&self, project: &str, zone: &str, name: &str, body: &Value) -> Result<Value, ApiError> {
        let key = Self::key(project, zone, name);
        let rec = self.existing(&key)?;
        let labels = parse_labels(body.get("labels"))?;
        match body.get("labelFingerprint").and_then(opt_str) {
            Some(fp) if fp == rec.label_fingerprint => {}
            Some(_) => {
                return Err(ApiError::condition_not_met(
                    "Labels fingerprint either invalid or resource labels have changed",
                ));
            }
            None => return Err(ApiError::invalid("Required field 'labelFingerprint' not specified")),
        }
        Ok(self.launch(key, rec.id, "setLabels", OpKind::SetLabels(labels)))
    }

    pub fn guest_attributes(
        &self,
        project: &str,
        zone: &str,
        name: &str,
        query_path: Option<&str>,
        variable_key: Option<&str>,
    ) -> Result<Value, ApiError> {
        let key = Self::key(project, zone, name);
        let rec = self.existing(&key)?;
        let path = query_path.or(variable_key).unwrap_or("");
        let not_found = || ApiError::not_found(&format!("{}/guestAttributes/{path}", rec.resource()));
        if !rec.guest_attributes_enabled() || rec.guest_attributes.is_empty() {
            return Err(not_found());
        }
        let self_link = format!("{}/guestAttributes/{path}", rec.self_link());
        if let Some(vk) = variable_key.filter(|_| query_path.is_none()) {
            let (ns, k) = vk.split_once('/').unwrap_or((vk, ""));
            let a = rec.guest_attributes.iter().find(|a| a.namespace == ns && a.key == k).ok_or_else(not_found)?;
            return Ok(json!({
                "kind": "compute#guestAttributes",
                "selfLink": self_link,
                "variableKey": vk,
                "variableValue": a.value,
            }));
        }
        let qp = query_path.unwrap_or("");
        let (ns, k) = qp.split_once('/').unwrap_or((qp, ""));
        let items: Vec<&GuestAttribute> = rec
            .guest_attributes
            .iter()
            .filter(|a| ns.is_empty() || a.namespace == ns)
            .filter(|a| k.is_empty() || a.key == k)
            .collect();
        if items.is_empty() {
            return Err(not_found());
        }
        Ok(json!({
            "kind": "compute#guestAttributes",
            "selfLink": self_link,
            "queryPath": qp,
            "queryValue": {"items": items},
        }))
    }

    pub fn get_operation(&self, project: &str, zone: &str, op: &str) -> Result<Value, ApiError> {
        let st = self.inner.state.lock().expect("lock");
        st.operations
            .get(&(project.to_string(), zone.to_string(), op.to_string()))
            .map(|o| o.to_json())
            .ok_or_else(|| ApiError::not_found(&format!("projects/{project}/zones/{zone}/operations/{op}")))
    }

    pub async fn wait_operation(&self, project: &str, zone: &str, op: &str) -> Result<Value, ApiError> {
        let deadline = tokio::time::Instant::now() + self.inner.cfg.operation_wait_timeout;
        let mut rx = self.inner.changed.subscribe();
        loop {
            rx.borrow_and_update();
            let v = self.get_operation(project, zone, op)?;
            if v["status"] == "DONE" {
                return Ok(v);
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return Ok(v);
            }
        }
    }

    // ---- admin ----

    fn count_request(&self, method: &str, resource: &str) {
        let instance = requests::instance_of(resource).or_else(|| {
            let key = requests::operation_of(resource)?;
            let st = self.inner.state.lock().expect("lock");
            st.operations.get(&key).map(|o| format!("{}/{}/{}", o.project, o.zone, o.target_name))
        });
        self.inner.requests.lock().expect("lock").record(method, instance);
    }

    /// The Compute API calls served so far, per method and per instance.
    pub fn requests(&self) -> RequestCounts {
        self.inner.requests.lock().expect("lock").clone()
    }

    /// Zero the request counters.
    pub fn reset_requests(&self) {
        *self.inner.requests.lock().expect("lock") = RequestCounts::default();
    }

    pub fn faults(&self) -> Faults {
        self.inner.faults.lock().expect("lock").clone()
    }

    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) -> Faults {
        let mut faults = self.inner.faults.lock().expect("lock");
        f(&mut faults);
        tracing::info!(faults = ?*faults, "faults changed");
        faults.clone()
    }

    /// Every instance's key, taken under the state lock and released before any per-instance
    /// work.
    fn instance_keys(&self) -> Vec<MachineKey> {
        self.inner.state.lock().expect("lock").instances.keys().cloned().collect()
    }

    /// Make running machines follow the booting fault (hold or release `/run/nologin`);
    /// machines that boot later read the knob as they boot.
    pub async fn apply_booting(&self) {
        for key in self.instance_keys() {
            let lock = self.lock_for(&key);
            let _g = lock.lock().await;
            let Ok(rec) = self.existing(&key) else {
                continue;
            };
            if !matches!(rec.status, InstanceStatus::Running | InstanceStatus::Staging) {
                continue;
            }
            let on = self.inner.faults.lock().expect("lock").holds_booting(&key.name);
            let spec = Self::spec_of(&rec);
            if let Err(e) = self.blocking(move |b| b.set_booting(&spec, on)).await {
                tracing::warn!(instance = %key.name, error = %e, "booting fault not applied");
            }
        }
    }

    /// Let stuck operations go on.
    pub fn unstick(&self) {
        self.inner.unstick.send_modify(|n| *n += 1);
    }

    /// Everything, with what stands behind each instance.
    pub fn inspect(&self) -> Value {
        let recs: Vec<InstanceRecord> = {
            let st = self.inner.state.lock().expect("lock");
            st.instances.values().cloned().collect()
        };
        let items: Vec<Value> = recs
            .iter()
            .map(|r| {
                json!({
                    "project": r.project,
                    "zone": r.zone,
                    "name": r.name,
                    "id": r.id.to_string(),
                    "status": r.status.as_str(),
                    "machineType": r.machine_type,
                    "address": r.address.to_string(),
                    "machine": self.inner.backend.inspect(&Self::spec_of(r)),
                })
            })
            .collect();
        json!({ "backend": self.inner.backend.kind(), "instances": items })
    }

    pub fn operations(&self) -> Value {
        let st = self.inner.state.lock().expect("lock");
        let mut ops: Vec<&OperationRecord> = st.operations.values().collect();
        ops.sort_by(|a, b| a.insert_time.cmp(&b.insert_time));
        json!({ "operations": ops.iter().map(|o| o.to_json()).collect::<Vec<_>>() })
    }

    /// Clear faults, release stuck operations, and with `delete_instances` delete all.
    pub async fn reset(&self, delete_instances: bool) {
        *self.inner.faults.lock().expect("lock") = Faults::default();
        self.unstick();
        self.apply_booting().await;
        if delete_instances {
            for key in self.instance_keys() {
                let lock = self.lock_for(&key);
                let _g = lock.lock().await;
                if let Err(e) = self.do_delete(&key).await {
                    tracing::warn!(instance = %key.name, error = %e.message, "reset: delete failed");
                }
            }
            let mut st = self.inner.state.lock().expect("lock");
            st.operations.clear();
            st.zones.clear();
        }
    }

    /// Power off all machines; with `cleanup` delete them too.
    pub async fn shutdown(&self, cleanup: bool) {
        self.unstick();
        let recs: Vec<InstanceRecord> = {
            let st = self.inner.state.lock().expect("lock");
            st.instances.values().cloned().collect()
        };
        for rec in recs {
            let key = Self::key(&rec.project, &rec.zone, &rec.name);
            let spec = Self::spec_of(&rec);
            if cleanup {
                let res = self.blocking(move |b| b.destroy(&spec)).await;
                match res {
                    Ok(()) => {
                        self.inner.backend.release_address(rec.address);
                        let mut st = self.inner.state.lock().expect("lock");
                        st.instances.remove(&key);
                        self.persist(&st);
                    }
                    Err(e) => tracing::warn!(instance = %rec.name, error = %e, "cleanup failed"),
                }
            } else {
                let was_running = rec.status != InstanceStatus::Terminated;
                if let Err(e) = self.blocking(move |b| b.release(&spec)).await {
                    tracing::warn!(instance = %rec.name, error = %e, "release failed");
                }
                self.update_instance(&key, |r| {
                    if was_running {
                        r.status = InstanceStatus::Terminated;
                        r.last_stop_timestamp = Some(timestamp());
                    }
                    r.guest_attributes.clear();
                });
            }
        }
    }
}
