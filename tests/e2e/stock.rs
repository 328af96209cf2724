//! code-server on a stock image: the operator installs the pinned release itself (downloaded
//! by the VM from the bed's HTTPS host, checked by sha256) and serves the folder with the unit
//! it owns; a wrong sha256 is refused and named.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::bed::{Bed, READY_TIMEOUT, artifacts, base64_decode, bed, operator_exclusive, operator_shared, repo_root};

fn stock_workspace(b: &Bed, name: &str) -> String {
    format!(
        "apiVersion: projectvm.dev/v1alpha1
kind: Workspace
metadata:
  name: {name}
spec:
  size: small
  image:
    family: {family}
    project: testbed
  repository:
    url: https://git.pvm.test/public/demo.git
  codeServer:
    auth: password
",
        family = b.var("STOCK_IMAGE_FAMILY")
    )
}

/// The release URL the bed's operator installs from, for the version it wants.
fn release_url(b: &Bed) -> String {
    b.var("CODE_SERVER_URL").trim_matches('\'').replace("{version}", "4.100.3")
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn stock_image_gets_code_server_installed_and_opens_in_a_browser() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-ws-stock");
    let name = "stock";
    let t0 = Instant::now();
    b.apply(&ns, &stock_workspace(b, name));
    b.wait_condition(&ns, "ws", name, "Ready", READY_TIMEOUT);
    eprintln!("stock Workspace Ready in {:.0} s", t0.elapsed().as_secs_f64());
    let obj = b.get(&ns, "ws", name);
    for c in ["InstanceReady", "RepositoryCloned", "CodeServerConfigured", "Healthy", "Routed", "Ready"] {
        assert_eq!(Bed::condition(&obj, c).unwrap()["status"], "True", "{c}: {obj}");
    }

    // The image had no code-server; the installed release serves, through the owned unit.
    let (code, out) = b.ssh(
        &ns,
        "ws",
        name,
        "test ! -e /usr/lib/code-server && systemctl is-active projectvm-code-server.service && \
         grep '^ExecStart=' /etc/systemd/system/projectvm-code-server.service && \
         test -e /usr/local/lib/code-server-4.100.3/.projectvm-installed && \
         ! systemctl is-enabled code-server@project.service 2>/dev/null",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ExecStart=/usr/local/lib/code-server-4.100.3/bin/code-server --config"), "{out}");

    let pw_b64 =
        b.kubectl(&["-n", &ns, "get", "secret", &format!("{name}-code-server"), "-o", "jsonpath={.data.password}"]);
    let password = String::from_utf8(base64_decode(pw_b64.trim())).unwrap();
    let url = obj["status"]["url"].as_str().expect("status.url").to_string();
    let shot = artifacts().join("workspace-stock.png");
    let out = Command::new("node")
        .current_dir(repo_root().join("tests/browser"))
        .args(["open-workspace.mjs", &url, &password, "README.md", shot.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "browser did not see README.md at {url}: {}{}\n(screenshot: {})",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        shot.display()
    );
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "screenshot is empty");
    b.kubectl(&["-n", &ns, "delete", "ws", name, "--timeout=180s"]);
    b.delete_namespace(&ns);
}

/// Restarts the bed's own operator when the test is done, whatever happened.
struct BedOperatorBack(&'static Bed);

impl Drop for BedOperatorBack {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("testbed/bed.sh"))
            .args(["operator-start", self.0.state.to_str().unwrap()])
            .output();
    }
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn a_wrong_sha256_fails_with_code_server_install_failed_naming_the_url() {
    let _guard = operator_exclusive();
    let b = bed();
    let ns = b.namespace("e2e-ws-badsha");
    let name = "badsha";
    b.operator_kill();
    let _back = BedOperatorBack(b);
    let wrong = "0".repeat(64);
    let op = b.spawn_operator("operator-bad-sha", &[("PROJECTVM_CODE_SERVER_SHA256", &wrong)]);
    b.apply(&ns, &stock_workspace(b, name));
    let failed = b.eventually("CodeServerInstallFailed", Duration::from_secs(300), || {
        let o = b.get(&ns, "ws", name);
        let c = Bed::condition(&o, "CodeServerConfigured")?;
        (c["reason"] == "CodeServerInstallFailed").then_some(c)
    });
    assert_eq!(failed["status"], "False");
    let message = failed["message"].as_str().unwrap();
    assert!(message.contains(&release_url(b)), "names the URL: {message}");
    assert!(message.contains("sha256 mismatch") && message.contains(&wrong), "says the sha256 is wrong: {message}");
    assert!(b.event_reasons(&ns, Some(name)).contains(&"CodeServerInstallFailed".to_string()));
    let _ = b.kubectl_output(&["-n", &ns, "delete", "ws", name, "--timeout=180s"], None);
    drop(op);
    b.delete_namespace(&ns);
}
