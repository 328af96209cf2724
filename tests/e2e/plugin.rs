//! The `kubectl projectvm` plugin, found by the real kubectl on PATH as a user installs it:
//! status, stop and start of a Manual ProjectVM, open on a Workspace, cost, logs of a Run.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::bed::{Bed, READY_TIMEOUT, base64_decode, bed, operator_shared};

/// `kubectl projectvm ARGS`, with the plugin's directory first on PATH.
fn plugin(b: &Bed, args: &[&str]) -> (bool, String) {
    let bin = Path::new(env!("CARGO_BIN_EXE_kubectl-projectvm"));
    let path = format!("{}:{}", bin.parent().unwrap().display(), b.var("PATH"));
    let mut c = Command::new("kubectl");
    for (k, v) in &b.env {
        c.env(k, v);
    }
    let out = c.env("PATH", path).arg("projectvm").args(args).output().expect("kubectl runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn ok(b: &Bed, args: &[&str]) -> String {
    let (success, text) = plugin(b, args);
    assert!(success, "kubectl projectvm {args:?} failed:\n{text}");
    text
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn the_kubectl_plugin_opens_starts_stops_and_reports() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-plugin");
    b.apply(
        &ns,
        "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata: {name: box}\nspec:\n  size: small\n  runStrategy: Manual\n  repository: {url: 'https://git.pvm.test/public/demo.git', depth: 1}\n  prerequisites: {packages: [git]}\n---\napiVersion: projectvm.dev/v1alpha1\nkind: Workspace\nmetadata: {name: desk}\nspec:\n  size: small\n  repository: {url: 'https://git.pvm.test/public/demo.git'}\n",
    );
    b.wait_condition(&ns, "pvm", "box", "Ready", READY_TIMEOUT);

    let status = ok(b, &["-n", &ns, "status", "box"]);
    assert!(status.starts_with(&format!("ProjectVM {ns}/box: Ready")), "{status}");
    assert!(status.contains("RepositorySynced") && status.contains("True"), "{status}");

    // stop and start: the annotations, acted upon by the operator.
    let said = ok(b, &["-n", &ns, "stop", "box"]);
    assert!(said.contains("stop requested"), "{said}");
    let stopped = b.eventually("the stop request", Duration::from_secs(120), || {
        let p = b.get(&ns, "pvm", "box");
        (p["status"]["phase"] == "Stopped").then_some(p)
    });
    let ready = Bed::condition(&stopped, "InstanceReady").unwrap();
    assert!(ready["message"].as_str().unwrap().contains("stopped on request"), "{ready}");
    assert!(ok(b, &["-n", &ns, "status", "box"]).contains("Stopped"));
    ok(b, &["-n", &ns, "start", "box"]);
    b.wait_condition(&ns, "pvm", "box", "Ready", READY_TIMEOUT);

    // open: the URL and the generated password, as jsonpath and base64 would give them.
    b.wait_condition(&ns, "ws", "desk", "Ready", READY_TIMEOUT);
    let ws = b.get(&ns, "ws", "desk");
    let url = ws["status"]["url"].as_str().unwrap().to_string();
    let secret = ws["status"]["objects"]["passwordSecret"].as_str().unwrap().to_string();
    let pw = b.kubectl(&["-n", &ns, "get", "secret", &secret, "-o", "jsonpath={.data.password}"]);
    let pw = String::from_utf8(base64_decode(pw.trim())).unwrap();
    let open = ok(b, &["-n", &ns, "open", "desk"]);
    assert!(open.contains(&format!("URL:       {url}")), "{open}");
    assert!(open.contains(&format!("Password:  {pw}")), "{open}");

    // cost: both, and a total.
    let cost = ok(b, &["-n", &ns, "cost"]);
    assert!(cost.contains("box") && cost.contains("desk"), "{cost}");
    assert!(cost.lines().last().unwrap().starts_with("TOTAL") && cost.contains("2 resource(s)"), "{cost}");

    // cost -f: an estimate of the examples before they are applied, with no cluster needed.
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/projectvm.yaml");
    let estimate = ok(b, &["cost", "-f", examples]);
    assert!(estimate.contains("EST. MONTHLY") && estimate.lines().any(|l| l.starts_with("TOTAL")), "{estimate}");

    // logs: a Run's output, followed to its end.
    b.apply(
        &ns,
        "apiVersion: projectvm.dev/v1alpha1\nkind: Run\nmetadata: {name: hello}\nspec:\n  projectVMRef: {name: box}\n  script: |\n    echo first line\n    sleep 6\n    echo last line\n",
    );
    let logs = ok(b, &["-n", &ns, "logs", "hello", "-f"]);
    assert!(logs.contains("first line") && logs.contains("last line"), "{logs}");
    assert_eq!(logs.matches("first line").count(), 1, "each line once: {logs}");
    assert!(logs.contains("--- Succeeded, exit code 0"), "{logs}");

    // The category: one `kubectl get` lists every kind; -o wide adds the reason.
    let all = b.kubectl(&["-n", &ns, "get", "projectvm"]);
    for what in ["projectvm.projectvm.dev/box", "workspace.projectvm.dev/desk", "run.projectvm.dev/hello"] {
        assert!(all.contains(what), "{what} in:\n{all}");
    }
    let wide = b.kubectl(&["-n", &ns, "get", "pvmrun", "hello", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().contains("REASON") && wide.contains("Succeeded"), "{wide}");

    // Unknown names fail with a message, not a panic.
    let (success, text) = plugin(b, &["-n", &ns, "status", "nothing-here"]);
    assert!(!success && text.contains("no ProjectVM, Workspace or Run"), "{text}");
    b.delete_namespace(&ns);
}
