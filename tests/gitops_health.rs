//! The Argo CD health check in docs/argocd-health.lua, run by a real Lua interpreter (`lua5.4`,
//! installed by testbed/scripts/install-host-deps.sh) on sample ProjectVM and Workspace objects,
//! the way Argo CD runs it: the object as the global `obj`, the result a {status, message} table.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs")
}

/// A Lua string literal holding `s` exactly.
fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\{:03}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The JSON value as a Lua table constructor, the shape Argo CD hands its scripts
/// (objects become keyed tables, arrays 1-based sequences, null nil).
fn lua_value(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!("{{{}}}", items.iter().map(lua_value).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter().map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_value(v))).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Starts `lua5.4` (never skipped: the test fails when the interpreter is missing).
fn lua(args: &[&str]) -> Child {
    Command::new("lua5.4")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("lua5.4 does not run ({e}): install it with testbed/scripts/install-host-deps.sh"))
}

/// Runs the health script on `obj`; returns (status, message).
fn health(obj: &Value) -> (String, String) {
    let script = docs().join("argocd-health.lua");
    let driver = format!(
        "obj = {}\nlocal hs = dofile({})\nio.write(tostring(hs.status), \"\\n\", tostring(hs.message))\n",
        lua_value(obj),
        lua_string(script.to_str().unwrap())
    );
    let mut child = lua(&["-"]);
    child.stdin.take().unwrap().write_all(driver.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the health script failed: {}\n{driver}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\n').expect("status and message");
    (status.to_string(), message.to_string())
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "observedGeneration": generation, "lastTransitionTime": "2026-12-01T10:00:00Z"
    })
}

fn object(kind: &str, generation: i64, status: Option<Value>) -> Value {
    let mut o = json!({
        "apiVersion": "projectvm.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "demo", "namespace": "team-a", "generation": generation, "uid": "0f1e"},
        "spec": {"size": "small", "repository": {"url": "https://git.pvm.test/public/demo.git"}}
    });
    if let Some(s) = status {
        o["status"] = s;
    }
    o
}

#[test]
fn lua_literals_round_trip_awkward_strings() {
    // The converter itself: quotes, backslashes, newlines, control and non-ASCII characters.
    let s = "a \"quoted\" \\path\\\nline\ttab \u{1} é ✓ ]]";
    let driver = format!("io.write({})", lua_string(s));
    let out = lua(&["-e", &driver]).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
}

#[test]
fn argocd_health_check_judges_both_kinds() {
    for kind in ["ProjectVM", "Workspace"] {
        // Ready, and the operator has seen the current generation.
        let ready = object(
            kind,
            3,
            Some(json!({
                "phase": "Ready", "observedGeneration": 3,
                "conditions": [
                    condition("Reconciling", "False", "Succeeded", "", 3),
                    condition("Stalled", "False", "Succeeded", "", 3),
                    condition("Ready", "True", "Ready", "the VM is ready", 3),
                ]
            })),
        );
        assert_eq!(health(&ready), ("Healthy".into(), "the VM is ready".into()), "{kind}");

        // Ready, but from an older generation: the new spec has not been acted on yet.
        let stale = object(
            kind,
            4,
            Some(json!({
                "observedGeneration": 3,
                "conditions": [condition("Ready", "True", "Ready", "the VM is ready", 3)]
            })),
        );
        let (status, message) = health(&stale);
        assert_eq!(status, "Progressing", "{kind}: {message}");
        assert!(message.contains("generation 4"), "{kind}: {message}");

        // The status was written for the current generation but Ready still speaks of the last.
        let stale_ready = object(
            kind,
            4,
            Some(json!({
                "observedGeneration": 4,
                "conditions": [condition("Ready", "True", "Ready", "the VM is ready", 3)]
            })),
        );
        let (status, message) = health(&stale_ready);
        assert_eq!(status, "Progressing", "{kind}: {message}");
        assert!(message.contains("generation 4"), "{kind}: {message}");

        // A terminal reason: Degraded, with the Stalled condition's message.
        let missing = "repository https://git.pvm.test/public/does-not-exist.git not found";
        let stalled = object(
            kind,
            1,
            Some(json!({
                "phase": "Failed", "observedGeneration": 1,
                "conditions": [
                    condition("Ready", "False", "RepositoryNotFound", "not ready", 1),
                    condition("Reconciling", "False", "RepositoryNotFound", "", 1),
                    condition("Stalled", "True", "RepositoryNotFound", missing, 1),
                ]
            })),
        );
        assert_eq!(health(&stalled), ("Degraded".into(), missing.into()), "{kind}");
        // A fixed spec the operator has not looked at yet is progress, not the old failure.
        let mut fixed = stalled.clone();
        fixed["metadata"]["generation"] = json!(2);
        assert_eq!(health(&fixed).0, "Progressing", "{kind}");

        // Paused on purpose (annotation projectvm.dev/paused=true).
        let paused = object(
            kind,
            2,
            Some(json!({
                "observedGeneration": 2,
                "conditions": [condition("Ready", "False", "Paused", "reconciling paused", 2)]
            })),
        );
        assert_eq!(health(&paused), ("Suspended".into(), "reconciling paused".into()), "{kind}");
        // ... and stays Suspended when the spec changes meanwhile (the operator will not look).
        let mut edited = paused.clone();
        edited["metadata"]["generation"] = json!(3);
        assert_eq!(health(&edited).0, "Suspended", "{kind}");

        // Stopped on purpose (runStrategy Halted, idleTimeout): resting, not progressing...
        for (reason, message) in
            [("Stopped", "InstanceReady: stopped: runStrategy is Halted"), ("IdleTimeout", "InstanceReady: idle")]
        {
            let stopped = object(
                kind,
                5,
                Some(json!({
                    "phase": "Stopped", "observedGeneration": 5,
                    "conditions": [
                        condition("Reconciling", "False", reason, "nothing pending: VM is stopped", 5),
                        condition("Ready", "False", reason, message, 5),
                    ]
                })),
            );
            assert_eq!(health(&stopped), ("Suspended".into(), message.into()), "{kind}");
            // ... until a new spec (say runStrategy Always) is there for the operator to act on.
            let mut restarting = stopped.clone();
            restarting["metadata"]["generation"] = json!(6);
            assert_eq!(health(&restarting).0, "Progressing", "{kind}");
        }

        // Freshly applied: no status yet.
        assert_eq!(health(&object(kind, 1, None)).0, "Progressing", "{kind}");

        // Work under way: the message says what is happening.
        let working = object(
            kind,
            1,
            Some(json!({
                "observedGeneration": 1,
                "conditions": [
                    condition("Reconciling", "True", "Cloning", "cloning the repository (40%)", 1),
                    condition("Ready", "False", "Cloning", "waiting for the clone", 1),
                ]
            })),
        );
        assert_eq!(health(&working), ("Progressing".into(), "cloning the repository (40%)".into()), "{kind}");

        // Transient trouble is progress with Ready's message, never Degraded.
        let retrying = object(
            kind,
            1,
            Some(json!({
                "observedGeneration": 1,
                "conditions": [condition("Ready", "False", "SSHUnavailable", "the VM does not accept SSH yet", 1)]
            })),
        );
        assert_eq!(health(&retrying), ("Progressing".into(), "the VM does not accept SSH yet".into()), "{kind}");
    }
}

#[test]
fn docs_carry_the_tested_script() {
    // docs/gitops.md embeds docs/argocd-health.lua in the argocd-cm example, indented by 4.
    let script = std::fs::read_to_string(docs().join("argocd-health.lua")).unwrap();
    let page = std::fs::read_to_string(docs().join("gitops.md")).unwrap();
    let indented: String =
        script.lines().map(|l| if l.is_empty() { "\n".to_string() } else { format!("    {l}\n") }).collect();
    assert!(page.contains(&indented), "docs/gitops.md does not embed docs/argocd-health.lua verbatim");
    for key in [
        "resource.customizations.health.projectvm.dev_ProjectVM",
        "resource.customizations.health.projectvm.dev_Workspace",
    ] {
        assert!(page.contains(key), "docs/gitops.md lacks {key}");
    }
}
