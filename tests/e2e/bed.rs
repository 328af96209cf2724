//! Access to the running test bed for the end-to-end tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Tests that restart the operator take this for writing; all others for reading.
pub static OPERATOR: RwLock<()> = RwLock::new(());

/// A shared hold on the operator: one failed test must not poison the others.
pub fn operator_shared() -> std::sync::RwLockReadGuard<'static, ()> {
    OPERATOR.read().unwrap_or_else(|e| e.into_inner())
}

/// An exclusive hold, for tests that restart the operator or inject cloud faults.
pub fn operator_exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    OPERATOR.write().unwrap_or_else(|e| e.into_inner())
}

pub struct Bed {
    pub state: PathBuf,
    pub env: HashMap<String, String>,
}

pub fn bed() -> &'static Bed {
    static BED: OnceLock<Bed> = OnceLock::new();
    BED.get_or_init(|| {
        let state = PathBuf::from(
            std::env::var("PROJECTVM_TESTBED")
                .expect("PROJECTVM_TESTBED is not set: run ./scripts/test.sh, which brings the test bed up"),
        );
        let text = std::fs::read_to_string(state.join("env")).expect("test bed env file");
        let mut env = HashMap::new();
        for line in text.lines() {
            if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                let v = v.replace("$PATH", &std::env::var("PATH").unwrap_or_default());
                env.insert(k.to_string(), v);
            }
        }
        Bed { state, env }
    })
}

impl Bed {
    pub fn var(&self, k: &str) -> &str {
        self.env.get(k).map(String::as_str).unwrap_or_else(|| panic!("{k} missing from the bed env"))
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs kubectl; returns the output whatever the exit status.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = self.command("kubectl");
        c.args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("kubectl runs");
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Runs kubectl and insists it succeeds.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_output(args, None);
        assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    pub fn apply(&self, ns: &str, yaml: &str) {
        let out = self.kubectl_output(&["-n", ns, "apply", "-f", "-"], Some(yaml));
        assert!(out.status.success(), "kubectl apply failed: {}\n{yaml}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn get(&self, ns: &str, kind: &str, name: &str) -> Value {
        serde_json::from_str(&self.kubectl(&["-n", ns, "get", kind, name, "-o", "json"])).unwrap()
    }

    /// `kubectl wait --for=condition=...`, with the resource dumped on failure.
    pub fn wait_condition(&self, ns: &str, kind: &str, name: &str, condition: &str, timeout: Duration) {
        let t = format!("--timeout={}s", timeout.as_secs());
        let cond = format!("--for=condition={condition}");
        let out = self.kubectl_output(&["-n", ns, "wait", &cond, &format!("{kind}/{name}"), &t], None);
        if !out.status.success() {
            let dump = self.kubectl_output(&["-n", ns, "get", kind, name, "-o", "yaml"], None);
            panic!(
                "{kind}/{name} did not reach {condition} in {timeout:?}: {}\n{}\noperator log tail:\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&dump.stdout),
                self.operator_log_tail(40)
            );
        }
    }

    /// Polls until `check` returns Some, or panics with the last object.
    pub fn eventually<T>(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check() {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\noperator log tail:\n{}",
                    self.operator_log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Reasons of the events in a namespace (optionally for one object), one per line.
    pub fn event_reasons(&self, ns: &str, object: Option<&str>) -> Vec<String> {
        let mut args = vec!["-n", ns, "get", "events", "-o", "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}"];
        let selector = object.map(|o| format!("involvedObject.name={o}"));
        if let Some(s) = &selector {
            args.extend(["--field-selector", s.as_str()]);
        }
        self.kubectl(&args).lines().map(String::from).collect()
    }

    pub fn condition(obj: &Value, type_: &str) -> Option<Value> {
        obj.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == type_).cloned()
    }

    pub fn namespace(&self, name: &str) -> String {
        let _ = self.kubectl_output(&["delete", "namespace", name, "--wait=true", "--timeout=120s"], None);
        self.kubectl(&["create", "namespace", name]);
        name.to_string()
    }

    pub fn delete_namespace(&self, name: &str) {
        let _ = self.kubectl_output(&["delete", "namespace", name, "--wait=false"], None);
    }

    pub fn operator_log(&self) -> String {
        std::fs::read_to_string(self.var("OPERATOR_LOG")).unwrap_or_default()
    }

    pub fn operator_log_tail(&self, n: usize) -> String {
        let log = self.operator_log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Everything the emulator knows about instances.
    pub fn emulator_instances(&self) -> Vec<Value> {
        let url = format!("{}/emulator/v1/instances", self.var("EMULATOR_URL"));
        let out = Command::new("curl").args(["-fsS", &url]).output().unwrap();
        assert!(out.status.success(), "emulator inspection failed");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        match v {
            Value::Array(a) => a,
            other => other.get("instances").and_then(|i| i.as_array()).cloned().unwrap_or_default(),
        }
    }

    /// Instances in the test zone carrying a resource's uid label, read through the
    /// Compute Engine API the operator uses (labels included).
    pub fn instances_of(&self, uid: &str) -> Vec<Value> {
        let url = format!("{}/compute/v1/projects/testbed/zones/us-central1-a/instances", self.var("EMULATOR_URL"));
        let filter = format!("filter=labels.projectvm-uid = \"{uid}\"");
        let out = Command::new("curl").args(["-fsS", "-G", &url, "--data-urlencode", &filter]).output().unwrap();
        assert!(out.status.success(), "emulator list failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let items = v.get("items").and_then(|i| i.as_array()).cloned().unwrap_or_default();
        assert!(items.iter().all(|i| i["labels"]["projectvm-uid"] == uid), "filter ignored: {items:?}");
        items
    }

    /// The instance with this name in the test zone, if it exists.
    pub fn instance_named(&self, name: &str) -> Option<Value> {
        let url =
            format!("{}/compute/v1/projects/testbed/zones/us-central1-a/instances/{name}", self.var("EMULATOR_URL"));
        let out = Command::new("curl").args(["-sS", "-w", "\n%{http_code}", &url]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        match code {
            "200" => Some(serde_json::from_str(body).unwrap()),
            "404" => None,
            other => panic!("emulator get {name}: HTTP {other} {body}"),
        }
    }

    /// Runs a command on the VM with `input` on its stdin (keeps secrets off command lines).
    pub fn ssh_stdin(&self, ns: &str, kind: &str, name: &str, command: &str, input: &str) -> (i32, String) {
        self.ssh_with(ns, kind, name, command, Some(input), None)
    }

    /// Runs a command on the VM with its stdout going to a local file (a plain copy).
    pub fn ssh_to_file(&self, ns: &str, kind: &str, name: &str, command: &str, file: &std::path::Path) -> i32 {
        self.ssh_with(ns, kind, name, command, None, Some(file)).0
    }

    pub fn emulator(&self, method: &str, path: &str, body: &str) {
        let url = format!("{}/emulator/v1/{path}", self.var("EMULATOR_URL"));
        let out = Command::new("curl")
            .args(["-fsS", "-X", method, "-H", "content-type: application/json", "--data", body, &url])
            .output()
            .unwrap();
        assert!(out.status.success(), "emulator {method} {path}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs a command on a resource's VM over SSH as the operator does: the operator's key
    /// from its Secret, the host key pinned from status. Returns (exit code, stdout).
    pub fn ssh(&self, ns: &str, kind: &str, name: &str, command: &str) -> (i32, String) {
        self.ssh_with(ns, kind, name, command, None, None)
    }

    fn ssh_with(
        &self,
        ns: &str,
        kind: &str,
        name: &str,
        command: &str,
        input: Option<&str>,
        stdout_to: Option<&std::path::Path>,
    ) -> (i32, String) {
        let obj = self.get(ns, kind, name);
        let ip = obj
            .pointer("/status/instance/externalIp")
            .or_else(|| obj.pointer("/status/instance/internalIp"))
            .and_then(|v| v.as_str())
            .expect("instance address")
            .to_string();
        let host_key =
            obj.pointer("/status/instance/hostKey").and_then(|v| v.as_str()).expect("pinned host key").to_string();
        let label = if kind.starts_with("pvm") || kind.starts_with("projectvm") { "projectvm" } else { "workspace" };
        let secret = obj
            .pointer("/status/objects/sshKeySecret")
            .and_then(|v| v.as_str())
            .map(String::from)
            .unwrap_or_else(|| format!("{name}-{label}-ssh"));
        let key_b64 = self.kubectl(&["-n", ns, "get", "secret", &secret, "-o", "jsonpath={.data.ssh-privatekey}"]);
        let dir = tempdir(&format!("ssh-{ns}-{}", crate::bed::short(name)));
        let key_path = dir.join("id");
        let key = base64_decode(key_b64.trim());
        std::fs::write(&key_path, key).unwrap();
        set_mode(&key_path, 0o600);
        let kh = dir.join("known_hosts");
        std::fs::write(&kh, format!("{ip} {host_key}\n")).unwrap();
        let mut child = Command::new("ssh")
            .args([
                "-i",
                key_path.to_str().unwrap(),
                "-o",
                &format!("UserKnownHostsFile={}", kh.display()),
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
            ])
            .arg(format!("project@{ip}"))
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(match stdout_to {
                Some(f) => Stdio::from(std::fs::File::create(f).unwrap()),
                None => Stdio::piped(),
            })
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if let Some(i) = input {
            stdin.write_all(i.as_bytes()).unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).to_string())
    }

    pub fn refs(&self, which: &str) -> HashMap<String, String> {
        let text = std::fs::read_to_string(format!("{}/{which}-demo.refs", self.var("GIT_STATE"))).unwrap();
        text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    pub fn git_token(&self) -> String {
        std::fs::read_to_string(self.var("GIT_TOKEN_FILE")).unwrap().lines().next().unwrap().trim().to_string()
    }

    pub fn set_git_tokens(&self, tokens: &[&str]) {
        std::fs::write(self.var("GIT_TOKEN_FILE"), tokens.join("\n") + "\n").unwrap();
    }

    pub fn operator_restart(&self) {
        let out = Command::new(repo_root().join("testbed/bed.sh"))
            .args(["operator-start", self.state.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "operator restart failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn operator_kill(&self) {
        let out = Command::new(repo_root().join("testbed/bed.sh"))
            .args(["operator-kill", self.state.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "operator kill failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The bed operator's pid (from `bed.sh`'s pid file).
    pub fn operator_pid(&self) -> u32 {
        std::fs::read_to_string(self.state.join("operator.pid")).unwrap().trim().parse().unwrap()
    }

    /// Signals the bed operator by name (`STOP`, `CONT`, `TERM`).
    pub fn operator_signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.operator_pid().to_string()]).status().unwrap();
        assert!(ok.success(), "kill -{sig} on the bed operator");
    }

    pub fn metrics(&self) -> String {
        let out =
            Command::new("curl").args(["-fsS", &format!("{}/metrics", self.var("METRICS_URL"))]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn artifacts() -> PathBuf {
    let d = repo_root().join("target/e2e-artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Records a measured figure for the closing report: printed, and appended to
/// `target/e2e-artifacts/figures.txt`.
pub fn record_figure(line: &str) {
    use std::io::Write;
    eprintln!("figure: {line}");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(artifacts().join("figures.txt")).unwrap();
    writeln!(f, "{line}").unwrap();
}

/// Seconds since the epoch of an RFC 3339 time.
pub fn epoch_seconds(ts: &str) -> f64 {
    let out = std::process::Command::new("date").args(["-d", ts, "+%s.%N"]).output().unwrap();
    assert!(out.status.success(), "not a time: {ts:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pvm-e2e-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn set_mode(p: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn base64_decode(s: &str) -> Vec<u8> {
    let out = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    out.stdout
}

pub const READY_TIMEOUT: Duration = Duration::from_secs(300);

impl Bed {
    /// The real kstatus library's verdict (`status.Compute` from sigs.k8s.io/cli-utils, built by
    /// testbed/scripts/kstatus.sh as `$KSTATUS`) on a live object: `kubectl get -o json` piped
    /// to it. Returns (status, message); status is one of InProgress, Current, Failed,
    /// Terminating, NotFound, Unknown.
    pub fn kstatus(&self, ns: &str, kind: &str, name: &str) -> (String, String) {
        self.kstatus_of(&self.get(ns, kind, name))
    }

    /// The kstatus verdict on an object already read (so a test can look at the same snapshot).
    pub fn kstatus_of(&self, obj: &Value) -> (String, String) {
        let json = serde_json::to_string(obj).unwrap();
        let mut child = Command::new(self.var("KSTATUS"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not run: {e}", self.var("KSTATUS")));
        child.stdin.take().unwrap().write_all(json.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kstatus refused the object: {}\n{json}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).expect("kstatus prints JSON");
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        (field("status"), field("message"))
    }
}

/// A name cut to a length that fits in a file name, for temporary directories.
pub fn short(name: &str) -> &str {
    &name[..name.len().min(40)]
}

/// Another operator process on the bed (a second replica, a second cluster's operator, a
/// namespaced install), started with the bed operator's environment (`STATE/operator.env`,
/// written by `bed.sh`) with `overrides` on top and its own metrics port. Killed on drop.
pub struct OperatorProcess {
    pub child: std::process::Child,
    pub log: PathBuf,
    pub metrics_url: String,
}

impl Bed {
    pub fn spawn_operator(&self, name: &str, overrides: &[(&str, &str)]) -> OperatorProcess {
        let text = std::fs::read_to_string(self.state.join("operator.env")).expect("bed operator.env");
        let mut env: Vec<(String, String)> =
            text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let mut set = |k: &str, v: &str| {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        };
        set("PROJECTVM_METRICS_ADDR", &addr);
        for (k, v) in overrides {
            set(k, v);
        }
        let bin = env.iter().find(|(k, _)| k == "OPERATOR_BIN").map(|(_, v)| v.clone()).expect("OPERATOR_BIN");
        let log = self.state.join(format!("{name}.log"));
        // This process's log alone: tests read all of it (an earlier run's lines must not count).
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().filter(|(k, _)| k != "OPERATOR_BIN").map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = cmd.spawn().expect("operator process starts");
        let p = OperatorProcess { child, log, metrics_url: format!("http://{addr}") };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Command::new("curl")
            .args(["-fsS", &format!("{}/healthz", p.metrics_url)])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "operator {name} did not serve /healthz:\n{}", p.log_text());
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }
}

impl OperatorProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`, `KILL`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status().unwrap();
        assert!(ok.success(), "kill -{sig} {}", self.pid());
    }

    /// Waits up to `timeout` for the process to exit; its exit status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Browser sessions [`Browser::open`] starts at most.
pub const BROWSER_SESSIONS: usize = 3;

/// One run of tests/browser/open-workspace.mjs: headless Chromium opens `url`, logs in with
/// `password` (handed over in the environment, never on a command line) and waits for
/// `expected` in the file explorer; the screenshot lands at `screenshot`.
pub struct Browser<'a> {
    pub url: &'a str,
    pub password: Option<&'a str>,
    pub expected: &'a str,
    pub screenshot: &'a std::path::Path,
    /// Keep using the page this long afterwards (code-server's heartbeat then shows activity).
    pub stay_seconds: Option<u32>,
    /// Further environment for the script (CHROMIUM_EXTRA_ARGS, REQUIRE_SECURE_CONTEXT, HOME).
    pub env: Vec<(&'a str, String)>,
}

impl Browser<'_> {
    /// Runs the script, bounded (its own waits plus the stay, plus a margin); Err with what
    /// it printed when it fails or overruns.
    /// One browser session, started again (at most [`BROWSER_SESSIONS`] in all) only when
    /// Chromium dropped it with `ERR_NETWORK_CHANGED`: the bed adds a network interface on
    /// the host whenever a machine of another test boots, and Chromium then aborts its loads
    /// and its WebSocket. Any other failure is returned at once.
    pub fn open(&self) -> Result<String, String> {
        let mut attempt = 1;
        loop {
            match self.session() {
                Err(e) if e.contains("ERR_NETWORK_CHANGED") && attempt < BROWSER_SESSIONS => {
                    eprintln!("browser session {attempt} dropped by a host network change; starting again");
                    std::thread::sleep(Duration::from_secs(2 * attempt as u64));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn session(&self) -> Result<String, String> {
        let mut c = Command::new("node");
        c.current_dir(repo_root().join("tests/browser")).arg("open-workspace.mjs").arg(self.url);
        match self.password {
            Some(p) => {
                c.arg("@env").env("WORKSPACE_PASSWORD", p);
            }
            None => {
                c.arg("-");
            }
        }
        c.arg(self.expected).arg(self.screenshot);
        if let Some(s) = self.stay_seconds {
            c.arg(s.to_string());
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        let limit = Duration::from_secs(240 + u64::from(self.stay_seconds.unwrap_or(0)));
        let out_path = self.screenshot.with_extension("log");
        let log = std::fs::File::create(&out_path).map_err(|e| format!("{}: {e}", out_path.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut child =
            c.stdin(Stdio::null()).stdout(log).stderr(err).spawn().map_err(|e| format!("node did not start: {e}"))?;
        let deadline = Instant::now() + limit;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                Ok(None) | Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let said = std::fs::read_to_string(&out_path).unwrap_or_default();
        match status {
            Some(s) if s.success() => Ok(said),
            Some(s) => Err(format!("browser exited with {s}: {said}")),
            None => Err(format!("browser did not finish within {limit:?}: {said}")),
        }
    }
}

/// A throwaway control plane (etcd + kube-apiserver + controller-manager on free loopback
/// ports, `testbed/scripts/control-plane.sh`, which waits a bounded time for readiness) in
/// `STATE/<name>`, for tests that need a cluster of their own: a second cluster, or cluster-
/// scoped objects (CRDs) the bed's other tests must not see change. Torn down on drop, pass
/// or fail.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: String,
}

impl ControlPlane {
    pub fn up(b: &Bed, name: &str) -> ControlPlane {
        let dir = b.state.join(name);
        let cluster = ControlPlane { kubeconfig: dir.join("admin.kubeconfig").display().to_string(), dir };
        // A previous run that died without its guard: start from nothing.
        cluster.script("down");
        let out = cluster.script("up");
        assert!(out.status.success(), "control plane {name} did not start: {}", String::from_utf8_lossy(&out.stderr));
        cluster
    }

    fn script(&self, cmd: &str) -> Output {
        let mut c = Command::new(repo_root().join("testbed/scripts/control-plane.sh"));
        c.args([cmd, &self.dir.display().to_string()]);
        for (k, v) in &bed().env {
            c.env(k, v);
        }
        c.stdin(Stdio::null()).output().expect("control-plane.sh runs")
    }

    /// A program from the bed's PATH (kubectl, helm) aimed at this control plane.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        for (k, v) in &bed().env {
            c.env(k, v);
        }
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    pub fn output(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = self.command(program);
        c.args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap_or_else(|e| panic!("{program} does not run from the bed's PATH: {e}"));
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.output("kubectl", args, stdin)
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_output(args, None);
        assert!(
            out.status.success(),
            "kubectl ({}) {args:?}: {}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    pub fn get(&self, ns: &str, kind: &str, name: &str) -> Value {
        serde_json::from_str(&self.kubectl(&["-n", ns, "get", kind, name, "-o", "json"])).unwrap()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let out = self.script("down");
        if !out.status.success() {
            eprintln!("control plane teardown ({}): {}", self.dir.display(), String::from_utf8_lossy(&out.stderr));
        }
    }
}
