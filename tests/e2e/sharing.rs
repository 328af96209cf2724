//! One operator shared by many teams: referenced Secrets are used only when they opt in and
//! only for the repository's exact https origin, route objects somebody else made are left
//! alone, and code-server is never served without a password where the internet can reach it.

use std::time::Duration;

use crate::bed::{Bed, READY_TIMEOUT, bed, operator_exclusive, operator_shared};

const OPT_IN: &str = "projectvm.dev/allowed";

fn projectvm(name: &str, url: &str, secret: &str, key: &str) -> String {
    format!(
        "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata:\n  name: {name}\nspec:\n  size: small\n  repository:\n    url: {url}\n    credentialsSecretRef: {{name: {secret}, key: {key}}}\n  prerequisites: {{packages: []}}\n"
    )
}

fn workspace(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: projectvm.dev/v1alpha1\nkind: Workspace\nmetadata:\n  name: {name}\nspec:\n  size: small\n  repository:\n    url: https://git.pvm.test/public/demo.git\n{extra}"
    )
}

/// A Secret holding `value` under `key`, created from stdin so the value is on no command line.
fn secret(b: &Bed, ns: &str, name: &str, key: &str, value: &str, labels: &[&str]) {
    let from = format!("--from-file={key}=/dev/stdin");
    let out = b.kubectl_output(
        &["-n", ns, "create", "secret", "generic", name, &from, "--dry-run=client", "-o", "yaml"],
        Some(value),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    b.apply(ns, &String::from_utf8_lossy(&out.stdout));
    for l in labels {
        b.kubectl(&["-n", ns, "label", "secret", name, l, "--overwrite"]);
    }
}

/// Waits for `condition` to be False with `reason`; returns its message.
fn wait_reason(b: &Bed, ns: &str, kind: &str, name: &str, condition: &str, reason: &str) -> String {
    b.eventually(&format!("{kind}/{name}: {condition}={reason}"), READY_TIMEOUT, || {
        let o = b.get(ns, kind, name);
        let c = Bed::condition(&o, condition)?;
        (c["status"] == "False" && c["reason"] == reason).then(|| c["message"].as_str().unwrap_or("").to_string())
    })
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn secrets_are_used_only_when_opted_in_and_only_for_the_exact_https_origin() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-secret-refs");
    let token = b.git_token();
    let private = "https://git.pvm.test/private/demo.git";

    // The attack: a Secret of the namespace that never meant to be a repository token (here
    // it holds a value the git host accepts, so using it would visibly succeed).
    secret(b, &ns, "db-creds", "password", &token, &[]);
    b.apply(&ns, &projectvm("exfil", private, "db-creds", "password"));
    // A service-account token Secret is never used, even labelled.
    b.apply(
        &ns,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: sa-token\n  labels: {{{OPT_IN}: 'true'}}\n  annotations: {{kubernetes.io/service-account.name: default}}\ntype: kubernetes.io/service-account-token\n"
        ),
    );
    b.apply(&ns, &projectvm("sa", private, "sa-token", "token"));
    // A repository on a non-default port gets its token (git names it host:port).
    secret(b, &ns, "git-token", "token", &token, &[&format!("{OPT_IN}=true")]);
    b.apply(&ns, &projectvm("port", "https://git.pvm.test:8443/private/demo.git", "git-token", "token"));

    let m = wait_reason(b, &ns, "pvm", "exfil", "RepositorySynced", "SecretNotAllowed");
    assert!(m.contains(&format!("{ns}/db-creds")) && m.contains(&format!("{OPT_IN}=true")), "{m}");
    assert!(b.event_reasons(&ns, Some("exfil")).iter().any(|r| r == "SecretNotAllowed"), "no event");
    assert_eq!(b.kstatus(&ns, "pvm", "exfil").0, "Failed", "kstatus sees it stalled");
    // Nothing of it reached the VM.
    let (code, out) = b.ssh(&ns, "pvm", "exfil", "test -e ~/.config/projectvm/git-credential-helper; echo $?");
    assert_eq!((code, out.trim()), (0, "1"), "a credential helper was written");
    let m = wait_reason(b, &ns, "pvm", "sa", "RepositorySynced", "SecretNotAllowed");
    assert!(m.contains("service-account token"), "{m}");

    b.wait_condition(&ns, "pvm", "port", "Ready", READY_TIMEOUT);
    let main = b.refs("private")["main"].clone();
    assert_eq!(b.get(&ns, "pvm", "port")["status"]["repository"]["commit"], main.as_str());

    // The Secret's owner opts in: the ProjectVM goes on by itself (the Secret watch).
    b.kubectl(&["-n", &ns, "label", "secret", "db-creds", &format!("{OPT_IN}=true")]);
    b.wait_condition(&ns, "pvm", "exfil", "Ready", READY_TIMEOUT);

    for text in [b.operator_log(), b.kubectl(&["-n", &ns, "get", "events,pvm", "-o", "json"])] {
        assert!(!text.contains(&token), "the token leaked");
    }
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn route_objects_somebody_else_made_are_never_taken_over_or_deleted() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-route-owners");
    // A team's own Service and Ingress that happen to carry the names routes would use.
    b.apply(
        &ns,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: taken-workspace\nspec:\n  selector: {app: theirs}\n  ports: [{port: 80}]\n",
    );
    b.apply(
        &ns,
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: free-workspace\nspec:\n  defaultBackend:\n    service: {name: theirs, port: {number: 80}}\n",
    );
    b.apply(&ns, &workspace("taken", ""));
    b.apply(&ns, &workspace("free", ""));
    b.apply(&ns, &workspace("first", "  ingress: {host: shared.pvm.test}\n"));

    let m = wait_reason(b, &ns, "ws", "taken", "Routed", "RouteConflict");
    assert!(m.contains(&format!("Service {ns}/taken-workspace")), "{m}");
    assert!(b.event_reasons(&ns, Some("taken")).iter().any(|r| r == "RouteConflict"), "no event");
    let svc = b.get(&ns, "service", "taken-workspace");
    assert!(svc["metadata"]["ownerReferences"].is_null(), "their Service was taken over: {svc}");
    assert_eq!(svc["spec"]["selector"]["app"], "theirs", "their Service was changed");

    b.wait_condition(&ns, "ws", "free", "Ready", READY_TIMEOUT);
    b.wait_condition(&ns, "ws", "first", "Ready", READY_TIMEOUT);
    // A second Workspace may not claim the host the first one serves.
    b.apply(&ns, &workspace("second", "  ingress: {host: shared.pvm.test}\n"));
    let m = wait_reason(b, &ns, "ws", "second", "Routed", "RouteConflict");
    assert!(m.contains("shared.pvm.test") && m.contains(&format!("{ns}/first")), "{m}");
    assert!(b.kubectl_output(&["-n", &ns, "get", "ingress", "second-workspace"], None).status.code() != Some(0));
    // Give the operator passes to misbehave in, then look again: their Ingress is still there.
    std::thread::sleep(Duration::from_secs(3));
    let ing = b.get(&ns, "ingress", "free-workspace");
    assert!(ing["metadata"]["ownerReferences"].is_null(), "{ing}");
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn code_server_is_not_served_without_auth_and_plain_http_on_a_public_address_is_flagged() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-exposure");
    b.apply(&ns, &workspace("open", "  codeServer: {auth: none}\n"));
    b.apply(&ns, &workspace("exposed", ""));
    let m = wait_reason(b, &ns, "ws", "open", "CodeServerConfigured", "AuthNoneNotAllowed");
    assert!(m.contains("codeServer.allowAuthNone"), "{m}");
    b.wait_condition(&ns, "ws", "exposed", "Ready", READY_TIMEOUT);
    let o = b.get(&ns, "ws", "exposed");
    let routed = Bed::condition(&o, "Routed").unwrap();
    assert!(routed["message"].as_str().unwrap().contains("plain HTTP on the VM's external address"), "{routed}");
    // `kubectl describe` shows it, as a Warning event.
    let described = b.kubectl(&["-n", &ns, "describe", "ws", "exposed"]);
    assert!(described.contains("PlainHTTPOnPublicAddress"), "{described}");
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn the_production_setting_makes_vms_without_external_addresses() {
    // Another operator configuration: the bed's operator makes way for one with
    // gcp.useInternalIp and codeServer.allowAuthNone, then comes back.
    let _guard = operator_exclusive();
    let b = bed();
    struct Restore<'a>(&'a Bed);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            self.0.operator_restart();
        }
    }
    b.operator_kill();
    let _restore = Restore(b);
    let _internal = b.spawn_operator(
        "internal-ip",
        &[
            ("PROJECTVM_USE_INTERNAL_IP", "true"),
            ("PROJECTVM_ALLOW_AUTH_NONE", "true"),
            ("PROJECTVM_LEADER_ELECTION", "false"),
        ],
    );
    let ns = b.namespace("e2e-internal-ip");
    b.apply(&ns, &workspace("private", "  codeServer: {auth: none}\n"));
    b.wait_condition(&ns, "ws", "private", "Ready", READY_TIMEOUT);
    let o = b.get(&ns, "ws", "private");
    let name = o["status"]["instance"]["name"].as_str().unwrap().to_string();
    let inst = b.instance_named(&name).expect("instance");
    assert_eq!(
        inst["networkInterfaces"][0]["accessConfigs"].as_array().map(Vec::len),
        Some(0),
        "the instance has an access config: {inst}"
    );
    assert!(o["status"]["instance"]["externalIp"].is_null(), "{}", o["status"]["instance"]);
    let routed = Bed::condition(&o, "Routed").unwrap();
    assert!(!routed["message"].as_str().unwrap().contains("warning"), "{routed}");
    b.delete_namespace(&ns);
}
