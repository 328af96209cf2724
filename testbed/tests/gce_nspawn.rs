//! Real machines: the `gce-emulator` binary with the nspawn backend, driven through the
//! official client; SSH in with a host key pinned from guest attributes; stop, start
//! (same disk), guest poweroff, delete (nothing left behind); the "booting" fault knob
//! refusing non-root logins the way a machine still booting does.
//!
//! Needs root and `PROJECTVM_ROOTFS` (testbed/scripts/build-rootfs.sh prints the path);
//! without them it prints why and passes without doing anything.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use google_cloud_compute_v1::client::{Instances, ZoneOperations};
use google_cloud_compute_v1::model::{self, Instance, Metadata, Operation};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const P: &str = "pvm-nspawn";
const Z: &str = "us-central1-a";
const NAME: &str = "pvm-nspawn-test";

struct Emulator {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: SIGTERM to the emulator we spawned; it powers off and deletes machines.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    match std::env::var("PROJECTVM_ROOTFS") {
        Err(_) => Some("PROJECTVM_ROOTFS is not set".into()),
        Ok(p) if !Path::new(&p).join("etc/os-release").exists() => {
            Some(format!("PROJECTVM_ROOTFS={p} is not a root filesystem"))
        }
        Ok(_) => None,
    }
}

async fn admin(addr: &str, method: &str, path: &str) -> serde_json::Value {
    admin_with(addr, method, path, "").await
}

async fn admin_with(addr: &str, method: &str, path: &str, body: &str) -> serde_json::Value {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (_, rest) = text.split_once("\r\n\r\n").unwrap();
    let start = rest.find('{').unwrap_or(0);
    let end = rest.rfind('}').map(|e| e + 1).unwrap_or(rest.len());
    serde_json::from_str(&rest[start..end]).unwrap()
}

async fn poll_done(ops: &ZoneOperations, op: &Operation, limit: Duration) -> Operation {
    let name = op.name.clone().unwrap();
    let deadline = Instant::now() + limit;
    loop {
        let cur = ops.get().set_project(P).set_zone(Z).set_operation(&name).send().await.unwrap();
        if cur.status == Some(model::operation::Status::Done) {
            assert!(cur.error.is_none(), "operation failed: {cur:?}");
            return cur;
        }
        assert!(Instant::now() < deadline, "operation {name} not DONE in {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ssh(key: &Path, known_hosts: &Path, ip: &str, user: &str, cmd: &str) -> (bool, String) {
    ssh_logging(key, known_hosts, ip, user, cmd, "ERROR")
}

/// As [`ssh`], with the client's LogLevel: at INFO and above it prints the server's
/// authentication banners (where sshd puts PAM's account messages, e.g. pam_nologin's).
fn ssh_logging(key: &Path, known_hosts: &Path, ip: &str, user: &str, cmd: &str, level: &str) -> (bool, String) {
    let out = Command::new("ssh")
        .arg("-i")
        .arg(key)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "HostKeyAlgorithms=ssh-ed25519",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
        ])
        .arg("-o")
        .arg(format!("LogLevel={level}"))
        .arg(format!("{user}@{ip}"))
        .arg(cmd)
        .stdin(Stdio::null())
        .output()
        .expect("ssh client");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text.trim().to_string())
}

fn keygen(path: &Path) -> String {
    let ok =
        Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(path).status().unwrap().success();
    assert!(ok);
    std::fs::read_to_string(path.with_extension("pub")).unwrap().trim().to_string()
}

async fn get(c: &Instances) -> Result<Instance, google_cloud_gax::error::Error> {
    c.get().set_project(P).set_zone(Z).set_instance(NAME).send().await
}

/// The emulator process with the nspawn backend, and clients for it.
async fn start_emulator(test: &str) -> (Emulator, Instances, ZoneOperations) {
    let rootfs = std::env::var("PROJECTVM_ROOTFS").unwrap();
    let dir = std::env::temp_dir().join(format!("pvm-nspawn-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ready = dir.join("ready");
    let child = Command::new(env!("CARGO_BIN_EXE_gce-emulator"))
        .args(["--listen", "127.0.0.1:0", "--backend", "nspawn", "--rootfs", &rootfs])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--ready-file")
        .arg(&ready)
        .arg("--cleanup-on-exit")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("emulator.log")).unwrap())
        .spawn()
        .unwrap();
    let mut emu = Emulator { child, addr: String::new(), dir: dir.clone() };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "emulator did not become ready");
        assert!(emu.child.try_wait().unwrap().is_none(), "emulator exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    emu.addr = std::fs::read_to_string(&ready).unwrap().trim().to_string();
    let endpoint = format!("http://{}", emu.addr);
    let creds = || google_cloud_auth::credentials::anonymous::Builder::new().build();
    let c = Instances::builder().with_endpoint(&endpoint).with_credentials(creds()).build().await.unwrap();
    let ops = ZoneOperations::builder().with_endpoint(&endpoint).with_credentials(creds()).build().await.unwrap();
    (emu, c, ops)
}

/// Its ed25519 host key from guest attributes, pinned in a known_hosts file.
async fn pin_host_key(c: &Instances, name: &str, ip: &str, kh: &Path) {
    let ga = c
        .get_guest_attributes()
        .set_project(P)
        .set_zone(Z)
        .set_instance(name)
        .set_query_path("hostkeys/")
        .send()
        .await
        .unwrap();
    let items = ga.query_value.unwrap().items;
    let host_key = items
        .iter()
        .find(|e| e.key.as_deref() == Some("ssh-ed25519"))
        .and_then(|e| e.value.clone())
        .expect("ed25519 host key published");
    std::fs::write(kh, format!("{ip} ssh-ed25519 {host_key}\n")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_machine_lifecycle() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED gce_nspawn::real_machine_lifecycle: {why}");
        return;
    }
    let (emu, c, ops) = start_emulator("lifecycle").await;
    let dir = emu.dir.clone();

    let key = dir.join("id_ed25519");
    let pubkey = keygen(&key);
    let body = Instance::new()
        .set_name(NAME)
        .set_machine_type(format!("zones/{Z}/machineTypes/e2-medium"))
        .set_labels([("managed-by", "projectvm")])
        .set_metadata(Metadata::new().set_items([
            model::metadata::Items::new().set_key("enable-guest-attributes").set_value("TRUE"),
            model::metadata::Items::new().set_key("ssh-keys").set_value(format!("tester:{pubkey}")),
        ]));

    // insert → RUNNING
    let t0 = Instant::now();
    let op = c.insert().set_project(P).set_zone(Z).set_body(body).send().await.unwrap();
    poll_done(&ops, &op, Duration::from_secs(120)).await;
    eprintln!("TIMING insert → RUNNING: {:?}", t0.elapsed());
    let inst = get(&c).await.unwrap();
    assert_eq!(inst.status, Some(model::instance::Status::Running));
    // Inserted without an access config: the machine is reached on its network address.
    let ip = inst.network_interfaces[0].network_ip.clone().unwrap();
    assert!(inst.network_interfaces[0].access_configs.is_empty(), "no access config asked for, none made");

    // pin the host key from guest attributes
    let kh = dir.join("known_hosts");
    pin_host_key(&c, NAME, &ip, &kh).await;

    // a wrong pin is refused: the pin is what lets us in
    let wrong = dir.join("wrong_known_hosts");
    let other = keygen(&dir.join("other"));
    let other_blob = other.split_whitespace().nth(1).unwrap();
    std::fs::write(&wrong, format!("{ip} ssh-ed25519 {other_blob}\n")).unwrap();
    let (ok, out) = ssh(&key, &wrong, &ip, "tester", "true");
    assert!(!ok, "ssh must fail with a wrong pinned host key: {out}");

    let (ok, out) = ssh(
        &key,
        &kh,
        &ip,
        "tester",
        "systemctl is-system-running --wait; hostname; sudo -n id -u; echo persisted > ~/marker",
    );
    assert!(ok, "ssh failed: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "running", "{out}");
    assert_eq!(lines[1], NAME);
    assert_eq!(lines[2], "0", "passwordless sudo");

    let view = admin(&emu.addr, "GET", "/emulator/v1/instances").await;
    let m = view["instances"][0]["machine"].clone();
    let pid = m["pid"].as_u64().expect("machine pid") as i32;
    let netns = m["netns"].as_str().unwrap().to_string();
    let veth = m["veth"].as_str().unwrap().to_string();
    let disk = m["diskDir"].as_str().unwrap().to_string();

    // stop → TERMINATED, the machine's process is gone
    let t0 = Instant::now();
    let op = c.stop().set_project(P).set_zone(Z).set_instance(NAME).send().await.unwrap();
    poll_done(&ops, &op, Duration::from_secs(60)).await;
    eprintln!("TIMING stop → TERMINATED: {:?}", t0.elapsed());
    let inst = get(&c).await.unwrap();
    assert_eq!(inst.status, Some(model::instance::Status::Terminated));
    assert!(inst.last_stop_timestamp.is_some());
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "nspawn {pid} still there");

    // start → RUNNING on the same disk, with the same host key
    let t0 = Instant::now();
    let op = c.start().set_project(P).set_zone(Z).set_instance(NAME).send().await.unwrap();
    poll_done(&ops, &op, Duration::from_secs(120)).await;
    eprintln!("TIMING start → RUNNING: {:?}", t0.elapsed());
    let (ok, out) = ssh(&key, &kh, &ip, "tester", "cat ~/marker");
    assert!(ok, "{out}");
    assert_eq!(out, "persisted");

    // poweroff inside the guest is noticed: TERMINATED
    let before = get(&c).await.unwrap().last_stop_timestamp;
    let _ = ssh(&key, &kh, &ip, "tester", "sudo systemctl poweroff --no-block");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let inst = get(&c).await.unwrap();
        if inst.status == Some(model::instance::Status::Terminated) {
            assert_ne!(inst.last_stop_timestamp, before);
            break;
        }
        assert!(Instant::now() < deadline, "guest poweroff not noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // delete → gone, with its disk, namespace and link
    let op = c.delete().set_project(P).set_zone(Z).set_instance(NAME).send().await.unwrap();
    poll_done(&ops, &op, Duration::from_secs(60)).await;
    let e = get(&c).await.unwrap_err();
    assert_eq!(e.http_status_code(), Some(404));
    let view = admin(&emu.addr, "GET", "/emulator/v1/instances").await;
    assert_eq!(view["instances"].as_array().unwrap().len(), 0);
    assert!(!Path::new(&disk).exists(), "disk dir left: {disk}");
    assert!(!Path::new("/run/netns").join(&netns).exists(), "netns left");
    let link =
        Command::new("ip").args(["link", "show", &veth]).stderr(Stdio::null()).stdout(Stdio::null()).status().unwrap();
    assert!(!link.success(), "veth {veth} left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&disk), "overlay still mounted");
}

/// The machine's init (systemd), as the host sees it: the child of the instance's nspawn.
async fn machine_init(addr: &str, name: &str) -> u32 {
    let view = admin(addr, "GET", "/emulator/v1/instances").await;
    let m = view["instances"].as_array().unwrap().iter().find(|i| i["name"] == name).unwrap()["machine"].clone();
    let pid = m["pid"].as_u64().expect("machine pid");
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    children.split_whitespace().next().expect("nspawn has a child").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booting_knob_refuses_non_root_logins_until_cleared() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED gce_nspawn::booting_knob_refuses_non_root_logins_until_cleared: {why}");
        return;
    }
    const BOOTING: &str = "pvm-nspawn-booting";
    const REFUSED: &str = "System is booting up. Unprivileged users are not permitted to log in yet";
    let (emu, c, ops) = start_emulator("booting").await;
    let dir = emu.dir.clone();
    let key = dir.join("id_ed25519");
    let pubkey = keygen(&key);

    // set before the machine exists: its first boot is held
    let f =
        admin_with(&emu.addr, "PUT", "/emulator/v1/faults/booting", &format!(r#"{{"instances":["{BOOTING}"]}}"#)).await;
    assert_eq!(f["booting"]["instances"][0], BOOTING, "{f}");
    let body = Instance::new()
        .set_name(BOOTING)
        .set_machine_type(format!("zones/{Z}/machineTypes/e2-small"))
        .set_metadata(Metadata::new().set_items([
            model::metadata::Items::new().set_key("enable-guest-attributes").set_value("TRUE"),
            model::metadata::Items::new().set_key("ssh-keys").set_value(format!("tester:{pubkey}")),
        ]));
    let op = c.insert().set_project(P).set_zone(Z).set_body(body).send().await.unwrap();
    poll_done(&ops, &op, Duration::from_secs(120)).await;
    let inst = c.get().set_project(P).set_zone(Z).set_instance(BOOTING).send().await.unwrap();
    assert_eq!(inst.status, Some(model::instance::Status::Running), "held machines are RUNNING");
    // Inserted without an access config: the machine is reached on its network address.
    let ip = inst.network_interfaces[0].network_ip.clone().unwrap();
    assert!(inst.network_interfaces[0].access_configs.is_empty(), "no access config asked for, none made");
    let kh = dir.join("known_hosts");
    pin_host_key(&c, BOOTING, &ip, &kh).await;

    // however long one waits: the boot never lets users in
    let init = machine_init(&emu.addr, BOOTING).await;
    let run = |args: &[&str]| {
        let out = Command::new("nsenter").arg("-t").arg(init.to_string()).arg("-a").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(run(&["systemctl", "is-system-running", "--wait"]), "running", "the boot itself is not degraded");
    let nologin = format!("/proc/{init}/root/run/nologin");
    assert!(Path::new(&nologin).exists(), "/run/nologin left in place");
    for _ in 0..2 {
        let (ok, out) = ssh_logging(&key, &kh, &ip, "tester", "true", "INFO");
        assert!(!ok, "a non-root login must be refused while held: {out}");
        assert!(out.contains(REFUSED), "pam_nologin's answer: {out}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let view = admin(&emu.addr, "GET", "/emulator/v1/instances").await;
    assert_eq!(view["instances"][0]["machine"]["bootingHeld"], true, "{view}");

    // cleared: logins work at once
    let f = admin(&emu.addr, "DELETE", "/emulator/v1/faults/booting").await;
    assert!(f["booting"].is_null(), "{f}");
    assert!(!Path::new(&nologin).exists(), "/run/nologin removed as a finished boot does");
    let (ok, out) = ssh(&key, &kh, &ip, "tester", "id -un");
    assert!(ok, "login after clearing: {out}");
    assert_eq!(out, "tester");

    // set on a running machine: refused again; cleared again: in again
    admin_with(&emu.addr, "PUT", "/emulator/v1/faults/booting", r#"{"instances":["pvm-nspawn-boot"]}"#).await;
    let (ok, out) = ssh_logging(&key, &kh, &ip, "tester", "true", "INFO");
    assert!(!ok && out.contains(REFUSED), "held at run time: {out}");
    admin(&emu.addr, "DELETE", "/emulator/v1/faults/booting").await;
    let (ok, out) = ssh(&key, &kh, &ip, "tester", "true");
    assert!(ok, "{out}");

    // a later boot without the knob is a normal one (nothing of the fault left on the disk)
    let op = c.stop().set_project(P).set_zone(Z).set_instance(BOOTING).send().await.unwrap();
    poll_done(&ops, &op, Duration::from_secs(60)).await;
    let op = c.start().set_project(P).set_zone(Z).set_instance(BOOTING).send().await.unwrap();
    poll_done(&ops, &op, Duration::from_secs(120)).await;
    // (sshd may answer a moment before this real boot lets users in)
    let deadline = Instant::now() + Duration::from_secs(30);
    let (ok, out) = loop {
        let (ok, out) = ssh_logging(
            &key,
            &kh,
            &ip,
            "tester",
            "systemctl is-system-running --wait; test ! -e /run/nologin && echo open",
            "INFO",
        );
        if ok || !out.contains(REFUSED) || Instant::now() > deadline {
            break (ok, out);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(ok, "{out}");
    assert_eq!(out, "running\nopen");

    let op = c.delete().set_project(P).set_zone(Z).set_instance(BOOTING).send().await.unwrap();
    poll_done(&ops, &op, Duration::from_secs(60)).await;
}
