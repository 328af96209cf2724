//! HTTPS through a real ingress controller: the bed's Traefik (testbed/scripts/traefik.sh, at
//! INGRESS_ADDR, IngressClass `traefik`) routes a Workspace's Ingress to its VM with the
//! Workspace's own TLS Secret, and a browser that trusts the bed's CA (and nothing more)
//! works in code-server through it: login, files over the WebSocket, the heartbeat.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::bed::{Bed, Browser, READY_TIMEOUT, artifacts, base64_decode, bed, epoch_seconds, operator_shared, tempdir};

const HOST: &str = "demo.ws.pvm.test";
const TLS_SECRET: &str = "demo-ws-tls";

/// A Chromium home whose NSS database trusts the bed CA as an issuer of server
/// certificates: the way a person's browser trusts a company CA. Chromium on Linux reads
/// `$HOME/.pki/nssdb`; nothing else about certificate checking changes.
fn home_trusting(ca: &Path) -> std::path::PathBuf {
    let home = tempdir("ingress-home");
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db_arg = format!("sql:{}", db.display());
    let run = |args: &[&str]| {
        let out = Command::new("certutil").args(args).output().expect("certutil (libnss3-tools) runs");
        assert!(out.status.success(), "certutil {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["-N", "-d", &db_arg, "--empty-password"]);
    run(&["-A", "-d", &db_arg, "-n", "projectvm test CA", "-t", "C,,", "-i", ca.to_str().unwrap()]);
    home
}

/// `curl` with the bed CA as its only trust anchor and the host resolved to the ingress.
fn curl_status(ingress: &str, ca: &str, path: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            ca,
            "--resolve",
            &format!("{HOST}:443:{ingress}"),
            &format!("https://{HOST}{path}"),
        ])
        .output()
        .expect("curl runs");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn workspace_over_https_through_traefik() {
    let _guard = operator_shared();
    let b = bed();
    let ingress = b.var("INGRESS_ADDR").to_string();
    let ca = b.var("TESTBED_CA").to_string();
    let tls_dir = b.var("INGRESS_TLS_DIR").to_string();
    let ns = b.namespace("e2e-ingress");

    // The certificate a user would get for their Workspace hosts (here the bed CA's
    // *.ws.pvm.test), in the TLS Secret the Workspace names.
    b.kubectl(&[
        "-n",
        &ns,
        "create",
        "secret",
        "tls",
        TLS_SECRET,
        &format!("--cert={tls_dir}/tls.crt"),
        &format!("--key={tls_dir}/tls.key"),
    ]);
    // Manual + idleTimeout: the operator reads code-server's heartbeat every 30 s.
    b.apply(
        &ns,
        &format!(
            "apiVersion: projectvm.dev/v1alpha1\nkind: Workspace\nmetadata:\n  name: demo\nspec:\n  runStrategy: Manual\n  idleTimeout: 2h\n  repository:\n    url: https://git.pvm.test/public/demo.git\n  ingress:\n    host: {HOST}\n    className: traefik\n    path: /\n    tlsSecretName: {TLS_SECRET}\n"
        ),
    );
    b.wait_condition(&ns, "ws", "demo", "Ready", READY_TIMEOUT);
    let obj = b.get(&ns, "ws", "demo");
    assert_eq!(Bed::condition(&obj, "Routed").unwrap()["status"], "True");
    let url = obj["status"]["url"].as_str().expect("status.url").to_string();
    assert_eq!(url, format!("https://{HOST}/"));

    // Traefik took the Ingress (it publishes its address in the Ingress status) ...
    let ing_name = obj["status"]["objects"]["ingress"].as_str().unwrap_or("demo-workspace").to_string();
    let class = b.kubectl(&["-n", &ns, "get", "ingress", &ing_name, "-o", "jsonpath={.spec.ingressClassName}"]);
    assert_eq!(class.trim(), "traefik");
    b.eventually("Traefik to publish its address on the Ingress", Duration::from_secs(60), || {
        let ip =
            b.kubectl(&["-n", &ns, "get", "ingress", &ing_name, "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}"]);
        (ip.trim() == ingress).then_some(())
    });
    // ... and routes the host, with the Secret's certificate, to code-server on the VM
    // (through the selector-less Service and the EndpointSlice the operator made).
    let mut last = String::new();
    b.eventually("https://demo.ws.pvm.test/healthz through Traefik", Duration::from_secs(60), || {
        last = curl_status(&ingress, &ca, "/healthz");
        (last == "200").then_some(())
    });

    // A person opens the URL in a browser that trusts the bed CA, logs in, sees the files
    // (the explorer is filled over the WebSocket) and works a while.
    let pw_b64 = b.kubectl(&["-n", &ns, "get", "secret", "demo-code-server", "-o", "jsonpath={.data.password}"]);
    let password = String::from_utf8(base64_decode(pw_b64.trim())).unwrap();
    let home = home_trusting(Path::new(&ca));
    let shot = artifacts().join("workspace-ingress.png");
    let resolver = format!("--host-resolver-rules=MAP {HOST} {ingress}");
    let before = chrono_now();
    let started = Instant::now();
    let browser = Browser {
        url: &url,
        password: Some(&password),
        expected: "README.md",
        screenshot: &shot,
        stay_seconds: Some(40),
        env: vec![
            ("HOME", home.display().to_string()),
            ("CHROMIUM_EXTRA_ARGS", serde_json::json!([resolver]).to_string()),
            ("REQUIRE_SECURE_CONTEXT", "1".to_string()),
        ],
    };
    let said = browser
        .open()
        .unwrap_or_else(|e| panic!("browser through the ingress at {url}: {e}\n(screenshot: {})", shot.display()));
    assert!(said.contains("secure context, no insecure-context notice"), "{said}");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "screenshot is empty");
    eprintln!("browser session through the ingress: {:.0?}", started.elapsed());

    // The WebSocket went through Traefik: code-server's connection (`reconnectionToken=`),
    // upgraded over HTTP/1.1 (everything else went over HTTP/2). Traefik logs an upgraded
    // connection when it closes, with status 101, or 0 once the connection was taken over.
    let websocket =
        |l: &str| l.contains("reconnectionToken=") && (l.contains("HTTP/1.1\" 101 ") || l.contains("HTTP/1.1\" 0 "));
    let deadline = Instant::now() + Duration::from_secs(15);
    let access = loop {
        let access = std::fs::read_to_string(b.state.join("ingress/access.log")).unwrap_or_default();
        if access.lines().any(websocket) || Instant::now() > deadline {
            break access;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        access.lines().any(websocket),
        "no WebSocket connection in Traefik's access log:\n{}",
        access.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    // ... and the password through nobody's log.
    let traefik_log = std::fs::read_to_string(b.state.join("traefik.log")).unwrap_or_default();
    assert!(!access.contains(&password) && !traefik_log.contains(&password), "password in Traefik's logs");

    // code-server's heartbeat (kept going by the page, through the proxy) reaches the status.
    b.eventually("status.lastActivityAt to move after the page was used", Duration::from_secs(120), || {
        let o = b.get(&ns, "ws", "demo");
        let at = o["status"]["lastActivityAt"].as_str()?.to_string();
        (epoch_seconds(&at) >= before - 1.0).then_some(())
    });

    b.kubectl(&["-n", &ns, "delete", "ws", "demo", "--timeout=180s"]);
    b.delete_namespace(&ns);
    let _ = std::fs::remove_dir_all(&home);
}

fn chrono_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
