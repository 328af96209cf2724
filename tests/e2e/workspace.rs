//! Workspaces end to end: a public repository opened in a real browser, and a private one
//! whose token must never show up anywhere but the helper file on the VM.

use crate::bed::{Bed, Browser, READY_TIMEOUT, artifacts, base64_decode, bed, operator_shared, repo_root};

/// The example manifest, pointed at this test's namespace.
fn example(file: &str) -> String {
    std::fs::read_to_string(repo_root().join("examples").join(file)).unwrap()
}

fn without_namespace(yaml: &str) -> String {
    yaml.lines().filter(|l| !l.trim_start().starts_with("namespace:")).collect::<Vec<_>>().join("\n")
}

fn first_name(yaml: &str, kind: &str) -> String {
    let mut in_kind = false;
    for doc in yaml.split("\n---") {
        in_kind = doc.contains(&format!("kind: {kind}"));
        if in_kind {
            let v: serde_yaml::Value = serde_yaml::from_str(doc).unwrap();
            return v["metadata"]["name"].as_str().unwrap().to_string();
        }
    }
    assert!(in_kind, "no {kind} in example");
    unreachable!()
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn public_workspace_opens_in_a_browser() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-ws-public");
    let yaml = without_namespace(&example("workspace-public.yaml"));
    let name = first_name(&yaml, "Workspace");
    b.apply(&ns, &yaml);
    b.wait_condition(&ns, "ws", &name, "Ready", READY_TIMEOUT);
    let obj = b.get(&ns, "ws", &name);
    for c in ["InstanceReady", "RepositoryCloned", "CodeServerConfigured", "Healthy", "Routed", "Ready"] {
        assert_eq!(Bed::condition(&obj, c).unwrap()["status"], "True", "{c}");
    }
    let url = obj["status"]["url"].as_str().expect("status.url").to_string();
    assert!(url.starts_with("http://10.213.0."), "{url}");

    // The route: a Service and an EndpointSlice pointing at the VM.
    let slice = route_slice(b, &ns, &format!("{name}-workspace"));
    let slice = slice_address(b, &ns, &slice).unwrap_or_default();
    assert!(!slice.is_empty() && url.contains(&slice), "slice {slice} vs url {url}");

    // A person opens the URL, logs in with the generated password, sees the README.
    let pw_b64 =
        b.kubectl(&["-n", &ns, "get", "secret", &format!("{name}-code-server"), "-o", "jsonpath={.data.password}"]);
    let password = String::from_utf8(base64_decode(pw_b64.trim())).unwrap();
    let shot = artifacts().join("workspace-public.png");
    let browser = Browser {
        url: &url,
        password: Some(&password),
        expected: "README.md",
        screenshot: &shot,
        stay_seconds: None,
        env: Vec::new(),
    };
    if let Err(e) = browser.open() {
        panic!("browser did not see README.md at {url}: {e}\n(screenshot: {})", shot.display());
    }
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "screenshot is empty");

    let uid = obj["metadata"]["uid"].as_str().unwrap().to_string();
    b.kubectl(&["-n", &ns, "delete", "ws", &name, "--timeout=180s"]);
    assert!(b.instances_of(&uid).is_empty());
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn private_workspace_clones_with_a_token_that_never_leaks() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-ws-private");
    let token = b.git_token();
    let yaml = without_namespace(&example("workspace-private.yaml"));
    let name = first_name(&yaml, "Workspace");
    let secret_name = first_name(&yaml, "Secret");
    b.apply(&ns, &yaml);
    // The example carries a placeholder; put the real token in, as a user would.
    let secret = b.kubectl_output(
        &[
            "-n",
            &ns,
            "create",
            "secret",
            "generic",
            &secret_name,
            "--from-file=token=/dev/stdin",
            "--dry-run=client",
            "-o",
            "yaml",
        ],
        Some(&token),
    );
    b.apply(&ns, &String::from_utf8_lossy(&secret.stdout));
    b.kubectl(&["-n", &ns, "label", "secret", &secret_name, "projectvm.dev/allowed=true", "--overwrite"]);
    b.wait_condition(&ns, "ws", &name, "Ready", READY_TIMEOUT);
    let obj = b.get(&ns, "ws", &name);
    assert_eq!(Bed::condition(&obj, "CredentialsCurrent").unwrap()["status"], "True");
    let main = b.refs("private")["main"].clone();
    assert_eq!(obj["status"]["repository"]["commit"], main.as_str());

    // The helper file: the VM user's alone.
    let (code, out) =
        b.ssh(&ns, "ws", &name, "stat -c '%a %U' ~/.config/projectvm ~/.config/projectvm/git-credential-helper");
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["700 project", "700 project"], "{out}");

    // Nowhere else: not in any process's arguments, nor in logs or the journal on the VM.
    // The token goes to the VM on stdin and into a pattern file, so this check itself
    // puts it on no command line.
    let probe = "f=$(mktemp); cat > \"$f\"; \
        echo ps=$(ps -eo args | grep -c -F -f \"$f\"); \
        echo files=$(sudo grep -rlF -f \"$f\" /var/log /etc /tmp /root 2>/dev/null | grep -v \"^$f$\" | wc -l); \
        echo journal=$(sudo journalctl --no-pager 2>/dev/null | grep -c -F -f \"$f\"); rm -f \"$f\"";
    let (code, found) = b.ssh_stdin(&ns, "ws", &name, probe, &token);
    assert_eq!(code, 0, "{found}");
    for expected in ["ps=0", "files=0", "journal=0"] {
        assert!(found.lines().any(|l| l == expected), "token found on the VM: {found}");
    }
    // ... nor in the operator's log, events, or the resource's status.
    assert!(!b.operator_log().contains(&token), "token in the operator log");
    let events = b.kubectl(&["-n", &ns, "get", "events", "-o", "json"]);
    assert!(!events.contains(&token), "token in events");
    assert!(!serde_json::to_string(&obj).unwrap().contains(&token), "token in the resource");
    b.delete_namespace(&ns);
}

/// The name of the EndpointSlice behind a route's Service.
fn route_slice(b: &Bed, ns: &str, service: &str) -> String {
    let name = b.kubectl(&[
        "-n",
        ns,
        "get",
        "endpointslices",
        "-l",
        &format!("kubernetes.io/service-name={service}"),
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    name.trim().to_string()
}

/// The EndpointSlice's first address, or `None` while there is no slice.
fn slice_address(b: &Bed, ns: &str, slice: &str) -> Option<String> {
    let out = b.kubectl_output(
        &["-n", ns, "get", "endpointslice", slice, "-o", "jsonpath={.endpoints[0].addresses[0]}"],
        None,
    );
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn a_deleted_or_edited_route_comes_back() {
    // The operator keeps what it last wrote of a route and skips re-applying an unchanged
    // one; its watch of the route objects must still see someone delete or edit them.
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-ws-route");
    let name = "route";
    b.apply(
        &ns,
        &format!(
            "apiVersion: projectvm.dev/v1alpha1\nkind: Workspace\nmetadata:\n  name: {name}\nspec:\n  repository:\n    url: https://git.pvm.test/public/demo.git\n"
        ),
    );
    b.wait_condition(&ns, "ws", name, "Ready", READY_TIMEOUT);
    let service = format!("{name}-workspace");
    let slice = route_slice(b, &ns, &service);
    let address = slice_address(b, &ns, &slice).expect("the route's EndpointSlice");
    let service_uid = b.kubectl(&["-n", &ns, "get", "service", &service, "-o", "jsonpath={.metadata.uid}"]);

    // Someone deletes the Service and points the EndpointSlice elsewhere.
    b.kubectl(&["-n", &ns, "delete", "service", &service, "--wait=false"]);
    b.kubectl(&[
        "-n",
        &ns,
        "patch",
        "endpointslice",
        &slice,
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/endpoints/0/addresses/0","value":"10.213.0.254"}]"#,
    ]);

    // Both come back as the operator made them.
    let back = b.eventually("the Service made again", READY_TIMEOUT, || {
        let out = b.kubectl_output(&["-n", &ns, "get", "service", &service, "-o", "jsonpath={.metadata.uid}"], None);
        let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !uid.is_empty() && uid != service_uid.trim()).then_some(uid)
    });
    assert!(!back.is_empty());
    b.eventually("the EndpointSlice pointed at the VM again", READY_TIMEOUT, || {
        (slice_address(b, &ns, &slice).as_deref() == Some(address.as_str())).then_some(())
    });
    let obj = b.get(&ns, "ws", name);
    assert_eq!(Bed::condition(&obj, "Ready").unwrap()["status"], "True", "{obj}");
    b.delete_namespace(&ns);
}
