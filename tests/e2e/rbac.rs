//! Least privilege: the chart grants the operator exactly the verbs its code uses, cluster-wide
//! or — with `watchNamespace` — through Roles in the watched namespaces only; the operator
//! works with the namespaced chart's credentials; people bound to the built-in edit/view
//! roles can manage/see both kinds through the chart's aggregated ClusterRoles.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_yaml::Value as Yaml;

use crate::bed::{Bed, READY_TIMEOUT, bed, operator_exclusive, repo_root, tempdir};

/// Verbs by resource (`name[.group][/subresource]`, as `kubectl auth can-i --list` prints them).
type Grants = BTreeMap<String, BTreeSet<String>>;

/// What the operator's code calls in a namespace it watches (see the comments in the chart's
/// templates/_rbac.tpl for where each verb is used).
const OPERATOR: &[(&str, &[&str])] = &[
    ("projectvms.projectvm.dev", &["get", "list", "watch", "patch"]),
    ("workspaces.projectvm.dev", &["list", "watch", "patch"]),
    ("runs.projectvm.dev", &["list", "watch", "patch", "delete"]),
    ("projectvms.projectvm.dev/status", &["patch"]),
    ("workspaces.projectvm.dev/status", &["patch"]),
    ("runs.projectvm.dev/status", &["patch"]),
    ("projectvms.projectvm.dev/finalizers", &["update"]),
    ("workspaces.projectvm.dev/finalizers", &["update"]),
    ("runs.projectvm.dev/finalizers", &["update"]),
    ("secrets", &["get", "list", "watch", "create", "patch"]),
    ("services", &["get", "list", "watch", "create", "patch"]),
    ("endpointslices.discovery.k8s.io", &["get", "list", "watch", "create", "patch"]),
    ("ingresses.networking.k8s.io", &["get", "list", "watch", "create", "patch", "delete"]),
    ("events.events.k8s.io", &["create", "patch"]),
];

/// Cluster-scoped grants, which `can-i --list` shows in every namespace: only the read of the
/// kube-system Namespace that names the cluster, when the chart has that template
/// (templates/clusterrole-cluster-identity.yaml, rendered while `clusterName` is empty).
fn cluster_scoped() -> Grants {
    let identity = repo_root().join("charts/projectvm-operator/templates/clusterrole-cluster-identity.yaml");
    if identity.exists() { grants(&[&[("namespaces[kube-system]", &["get"])]]) } else { Grants::new() }
}

/// ... and in the release namespace, for leader election.
const LEADER: &[(&str, &[&str])] = &[("leases.coordination.k8s.io", &["get", "create", "update"])];

fn grants(sets: &[&[(&str, &[&str])]]) -> Grants {
    let mut g = Grants::new();
    for set in sets {
        for (resource, verbs) in *set {
            g.entry(resource.to_string()).or_default().extend(verbs.iter().map(|v| v.to_string()));
        }
    }
    g
}

/// `sets` plus the cluster-scoped grants: what a ServiceAccount of the chart may do.
fn with_cluster(sets: &[&[(&str, &[&str])]]) -> Grants {
    let mut g = grants(sets);
    for (k, v) in cluster_scoped() {
        g.entry(k).or_default().extend(v);
    }
    g
}

/// A program from the bed's PATH (helm, kubectl) with the bed's environment.
fn run(b: &Bed, program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut c = Command::new(program);
    c.envs(&b.env).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = c.spawn().unwrap_or_else(|e| panic!("{program} does not run from the bed's PATH: {e}"));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn ok(b: &Bed, program: &str, args: &[&str]) -> String {
    let out = run(b, program, args, None);
    assert!(out.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn chart() -> String {
    repo_root().join("charts/projectvm-operator").display().to_string()
}

/// `helm template` of the chart with the bed's values plus `set`, as YAML documents.
fn render(b: &Bed, set: &[&str]) -> Vec<Yaml> {
    let chart = chart();
    let mut args = vec!["template", "rel", chart.as_str(), "-n", "ops", "--set", "gcp.project=testbed"];
    for s in set {
        args.extend(["--set", s]);
    }
    let text = ok(b, "helm", &args);
    text.split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<Yaml>(doc).ok())
        .filter(|v| v.get("kind").is_some())
        .collect()
}

fn docs<'a>(all: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    all.iter().filter(|d| d["kind"] == kind).collect()
}

fn name_ns(d: &Yaml) -> (String, String) {
    let s = |k: &str| d["metadata"][k].as_str().unwrap_or_default().to_string();
    (s("name"), s("namespace"))
}

/// A Role's or ClusterRole's rules, by resource as can-i names them.
fn rules_of(role: &Yaml) -> Grants {
    let mut g = Grants::new();
    for rule in role["rules"].as_sequence().expect("rules") {
        let list = |k: &str| -> Vec<String> {
            rule[k]
                .as_sequence()
                .map(|s| s.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        };
        assert!(rule.get("nonResourceURLs").is_none(), "{rule:?}");
        let names = list("resourceNames");
        for group in list("apiGroups") {
            for resource in list("resources") {
                let (name, sub) = resource.split_once('/').map_or((resource.as_str(), None), |(n, s)| (n, Some(s)));
                let mut key = if group.is_empty() { name.to_string() } else { format!("{name}.{group}") };
                if let Some(sub) = sub {
                    key = format!("{key}/{sub}");
                }
                if !names.is_empty() {
                    key = format!("{key}[{}]", names.join(" "));
                }
                g.entry(key).or_default().extend(list("verbs"));
            }
        }
    }
    g
}

/// The rules the operator's ServiceAccount gets from ClusterRoleBindings.
fn cluster_bound(all: &[Yaml]) -> Grants {
    let mut g = Grants::new();
    for crb in docs(all, "ClusterRoleBinding") {
        let ours = crb["subjects"].as_sequence().unwrap().iter().any(|s| s["name"] == "rel-projectvm-operator");
        if !ours {
            continue;
        }
        let role = docs(all, "ClusterRole").into_iter().find(|r| r["metadata"]["name"] == crb["roleRef"]["name"]);
        for (k, v) in rules_of(role.expect("bound ClusterRole is in the chart")) {
            g.entry(k).or_default().extend(v);
        }
    }
    g
}

fn env_of(deployment: &Yaml, name: &str) -> Option<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(String::from))
}

#[test]
#[ignore = "needs the test bed's helm: ./scripts/test.sh"]
fn chart_grants_only_what_the_code_uses_in_both_modes() {
    let b = bed();

    // Cluster-wide (the default): one ClusterRole with exactly the operator's verbs, the
    // Lease Role in the release namespace, no other Role.
    let all = render(b, &[]);
    let cluster_roles = docs(&all, "ClusterRole");
    let op = cluster_roles.iter().find(|r| name_ns(r).0 == "rel-projectvm-operator").expect("the ClusterRole");
    assert_eq!(rules_of(op), grants(&[OPERATOR]));
    assert_eq!(cluster_bound(&all), with_cluster(&[OPERATOR]));
    let roles = docs(&all, "Role");
    assert_eq!(roles.len(), 1, "only the Lease Role: {roles:?}");
    assert_eq!(name_ns(roles[0]), ("rel-projectvm-operator-leader-election".into(), "ops".into()));
    assert_eq!(rules_of(roles[0]), grants(&[LEADER]));
    let crb = docs(&all, "ClusterRoleBinding");
    let crb = crb.iter().find(|r| name_ns(r).0 == "rel-projectvm-operator").expect("the ClusterRoleBinding");
    assert_eq!(crb["subjects"][0]["name"], "rel-projectvm-operator");
    assert_eq!(crb["subjects"][0]["namespace"], "ops");
    assert_eq!(env_of(docs(&all, "Deployment")[0], "PROJECTVM_WATCH_NAMESPACE"), None);

    // Namespaced, as a list or a comma-separated string: a Role and RoleBinding in each
    // watched namespace, nothing cluster-wide for the operator.
    for set in ["watchNamespace={team-a,team-b}", "watchNamespace=team-a\\, team-b"] {
        let all = render(b, &[set]);
        let cluster_roles: Vec<String> = docs(&all, "ClusterRole").iter().map(|r| name_ns(r).0).collect();
        assert!(!cluster_roles.contains(&"rel-projectvm-operator".to_string()), "{set}: {cluster_roles:?}");
        assert_eq!(cluster_bound(&all), cluster_scoped(), "{set}: nothing cluster-wide for the operator");
        let roles: BTreeMap<(String, String), Grants> =
            docs(&all, "Role").iter().map(|r| (name_ns(r), rules_of(r))).collect();
        let expected: BTreeMap<(String, String), Grants> = [
            (("rel-projectvm-operator".into(), "team-a".into()), grants(&[OPERATOR])),
            (("rel-projectvm-operator".into(), "team-b".into()), grants(&[OPERATOR])),
            (("rel-projectvm-operator-leader-election".into(), "ops".into()), grants(&[LEADER])),
        ]
        .into();
        assert_eq!(roles, expected, "{set}");
        let bindings: BTreeSet<(String, String)> = docs(&all, "RoleBinding")
            .iter()
            .map(|rb| {
                assert_eq!(rb["roleRef"]["kind"], "Role");
                assert_eq!(rb["roleRef"]["name"], rb["metadata"]["name"]);
                assert_eq!(rb["subjects"][0]["name"], "rel-projectvm-operator");
                assert_eq!(rb["subjects"][0]["namespace"], "ops");
                name_ns(rb)
            })
            .collect();
        assert_eq!(bindings, expected.keys().cloned().collect(), "{set}");
        let deployment = docs(&all, "Deployment")[0];
        assert_eq!(env_of(deployment, "PROJECTVM_WATCH_NAMESPACE").as_deref(), Some("team-a,team-b"), "{set}");
    }

    // The aggregated roles for people.
    let agg = |name: &str| *cluster_roles.iter().find(|r| name_ns(r).0 == name).unwrap();
    let edit = agg("rel-projectvm-operator-edit");
    assert_eq!(edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"], "true");
    assert_eq!(edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"], "true");
    let all_verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
    assert_eq!(
        rules_of(edit),
        grants(&[&[
            ("projectvms.projectvm.dev", &all_verbs),
            ("workspaces.projectvm.dev", &all_verbs),
            ("runs.projectvm.dev", &all_verbs)
        ]])
    );
    let view = agg("rel-projectvm-operator-view");
    assert_eq!(view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"], "true");
    let read: &[&str] = &["get", "list", "watch"];
    assert_eq!(
        rules_of(view),
        grants(&[&[
            ("projectvms.projectvm.dev", read),
            ("workspaces.projectvm.dev", read),
            ("runs.projectvm.dev", read),
            ("projectvms.projectvm.dev/status", read),
            ("workspaces.projectvm.dev/status", read),
            ("runs.projectvm.dev/status", read),
        ]])
    );
    let without: Vec<String> =
        docs(&render(b, &["rbac.aggregatedRoles=false"]), "ClusterRole").iter().map(|r| name_ns(r).0).collect();
    assert!(without.iter().all(|n| !n.ends_with("-edit") && !n.ends_with("-view")), "{without:?}");

    // Without leader election (one replica) there is no Lease grant at all.
    let all = render(b, &["leaderElection.enabled=false"]);
    assert!(docs(&all, "Role").is_empty() && docs(&all, "RoleBinding").is_empty());
    // A namespace name the API server would refuse is refused at install time.
    let chart = chart();
    let out = run(
        b,
        "helm",
        &["template", "rel", &chart, "--set", "gcp.project=testbed", "--set", "watchNamespace=Team_A"],
        None,
    );
    assert!(!out.status.success(), "an invalid namespace must not render");
}

/// `kubectl auth can-i --list` for `user` in `ns`, minus what any service account may do
/// (the self-review APIs of system:basic-user and friends).
fn can_i_list(b: &Bed, user: &str, ns: &str) -> Grants {
    let parse = |text: &str| -> Grants {
        let mut g = Grants::new();
        for line in text.lines().skip(1) {
            // Non-resource rows have an empty first column.
            if line.starts_with(char::is_whitespace) || line.trim().is_empty() {
                continue;
            }
            let resource = line.split_whitespace().next().unwrap().to_string();
            let groups: Vec<&str> = line.split('[').skip(1).map(|s| s.split(']').next().unwrap()).collect();
            assert_eq!(groups.len(), 3, "unexpected can-i line: {line}");
            let key = if groups[1].is_empty() { resource } else { format!("{resource}[{}]", groups[1]) };
            g.entry(key).or_default().extend(groups[2].split_whitespace().map(String::from));
        }
        g
    };
    let list = |who: &str| parse(&ok(b, "kubectl", &["auth", "can-i", "--list", "-n", ns, &format!("--as={who}")]));
    let baseline = list(&format!("system:serviceaccount:{ns}:rbac-baseline-nobody"));
    let mut g = list(user);
    for (resource, verbs) in baseline {
        if let Some(v) = g.get_mut(&resource) {
            v.retain(|x| !verbs.contains(x));
            if v.is_empty() {
                g.remove(&resource);
            }
        }
    }
    g
}

const RELEASE: &str = "pvm-rbac";
const OP_NS: &str = "e2e-rbac-op";
const WATCHED: [&str; 2] = ["e2e-rbac-a", "e2e-rbac-b"];
const UNWATCHED: &str = "e2e-rbac-other";
const SA: &str = "pvm-rbac-projectvm-operator";

/// Puts the bed back whatever happens: the bed's operator restarted, the second release and
/// the test's namespaces gone.
struct Restore(&'static Bed);

impl Drop for Restore {
    fn drop(&mut self) {
        let b = self.0;
        for ns in WATCHED.iter().chain([&UNWATCHED]) {
            let _ = run(b, "kubectl", &["-n", ns, "delete", "pvm,ws", "--all", "--wait=false"], None);
        }
        // Not `operator_restart`, which asserts: a second panic here would abort the run.
        let restart = Command::new(repo_root().join("testbed/bed.sh"))
            .args(["operator-start", b.state.to_str().unwrap()])
            .output()
            .map(|o| o.status.success());
        if restart.ok() != Some(true) {
            eprintln!("rbac: RESTARTING THE BED'S OPERATOR FAILED; run testbed/bed.sh operator-start");
        }
        let _ = run(b, "helm", &["uninstall", RELEASE, "-n", OP_NS, "--wait"], None);
        for ns in WATCHED.iter().chain([&UNWATCHED, &OP_NS]) {
            b.delete_namespace(ns);
        }
    }
}

fn kubeconfig_for_service_account(b: &Bed) -> std::path::PathBuf {
    // As testbed/bed.sh does for the bed's operator: a token of the chart's ServiceAccount.
    let token = ok(b, "kubectl", &["-n", OP_NS, "create", "token", SA, "--duration=2h"]);
    let server = ok(b, "kubectl", &["config", "view", "--raw", "-o", "jsonpath={.clusters[0].cluster.server}"]);
    let ca = ok(
        b,
        "kubectl",
        &["config", "view", "--raw", "-o", "jsonpath={.clusters[0].cluster.certificate-authority-data}"],
    );
    let path = tempdir("rbac").join("operator.kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: bed, cluster: {{server: \"{server}\", certificate-authority-data: \"{ca}\"}}}}]\n\
         users: [{{name: operator, user: {{token: \"{}\"}}}}]\n\
         contexts: [{{name: bed, context: {{cluster: bed, user: operator, namespace: {OP_NS}}}}}]\ncurrent-context: bed\n",
        token.trim()
    );
    std::fs::write(&path, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn projectvm(name: &str) -> String {
    format!(
        "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata:\n  name: {name}\nspec:\n  size: small\n  repository:\n    url: https://git.pvm.test/public/demo.git\n    depth: 1\n"
    )
}

fn example_without_namespace(file: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("examples").join(file)).unwrap();
    text.lines().filter(|l| !l.trim_start().starts_with("namespace:")).collect::<Vec<_>>().join("\n")
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn namespaced_install_works_with_only_its_roles() {
    let _guard = operator_exclusive();
    let b = bed();
    for ns in WATCHED.iter().chain([&UNWATCHED, &OP_NS]) {
        b.namespace(ns);
    }
    let restore = Restore(b);

    // The bed's own install (cluster-wide) grants the operator's verbs in every namespace,
    // plus the Lease in its release namespace, and nothing else.
    let bed_sa = "system:serviceaccount:projectvm-system:projectvm-operator";
    assert_eq!(can_i_list(b, bed_sa, UNWATCHED), with_cluster(&[OPERATOR]), "cluster-wide install");
    assert_eq!(can_i_list(b, bed_sa, "projectvm-system"), with_cluster(&[OPERATOR, LEADER]), "cluster-wide install");

    // A second release of the chart, watching two namespaces, installed as a user would.
    let chart = chart();
    let endpoint = format!("gcp.computeEndpoint={}", b.var("EMULATOR_URL"));
    let watch = format!("watchNamespace={{{}}}", WATCHED.join(","));
    ok(
        b,
        "helm",
        &[
            "upgrade",
            "--install",
            RELEASE,
            &chart,
            "-n",
            OP_NS,
            "--set",
            "gcp.project=testbed",
            "--set",
            "gcp.credentials.mode=anonymous",
            "--set-string",
            &endpoint,
            "--set",
            &watch,
            "--set",
            "leaderElection.leaseName=pvm-rbac",
            // The CRDs belong to the bed's release; Helm would refuse to take them over.
            "--set",
            "crds.install=false",
            "--wait=false",
        ],
    );
    let sa = format!("system:serviceaccount:{OP_NS}:{SA}");

    // What its ServiceAccount may do: the operator's verbs in each watched namespace, the
    // Lease in its own, nothing anywhere else.
    for ns in WATCHED {
        assert_eq!(can_i_list(b, &sa, ns), with_cluster(&[OPERATOR]), "namespaced install in {ns}");
    }
    assert_eq!(can_i_list(b, &sa, OP_NS), with_cluster(&[LEADER]), "namespaced install in its release namespace");
    assert_eq!(can_i_list(b, &sa, UNWATCHED), cluster_scoped(), "namespaced install in an unwatched namespace");
    for (verb, what) in [("list", "secrets"), ("watch", "projectvms.projectvm.dev"), ("get", "namespaces")] {
        let out = run(b, "kubectl", &["auth", "can-i", verb, what, "--all-namespaces", &format!("--as={sa}")], None);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no", "{verb} {what} cluster-wide");
    }
    // The namespaced operator, with the chart ServiceAccount's credentials only, in place
    // of the bed's.
    let kubeconfig = kubeconfig_for_service_account(b);
    b.operator_kill();
    let watch_env = WATCHED.join(",");
    let op = b.spawn_operator(
        "operator-namespaced",
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("PROJECTVM_WATCH_NAMESPACE", &watch_env),
            ("PROJECTVM_LEASE_NAME", "pvm-rbac"),
            ("POD_NAMESPACE", OP_NS),
            // No periodic look at Ready resources during the test: a Secret change must
            // reach its Workspace through the Secret watch.
            ("PROJECTVM_RESYNC_SECONDS", "600"),
        ],
    );

    // A private Workspace with an Ingress in one watched namespace (referenced Secret, the
    // operator's own Secrets, the whole route, events), a ProjectVM in the other.
    let (ws_ns, pvm_ns) = (WATCHED[0], WATCHED[1]);
    b.apply(ws_ns, &example_without_namespace("workspace-private.yaml"));
    let token_b64 = {
        let out = run(b, "base64", &["-w0"], Some(&b.git_token()));
        String::from_utf8(out.stdout).unwrap()
    };
    let patch = format!("{{\"data\":{{\"token\":\"{token_b64}\"}}}}");
    let out = run(
        b,
        "kubectl",
        &["-n", ws_ns, "patch", "secret", "demo-private-token", "--type=merge", "--patch-file=/dev/stdin"],
        Some(&patch),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    b.kubectl(&[
        "-n",
        ws_ns,
        "patch",
        "ws",
        "demo-private",
        "--type=merge",
        "-p",
        r#"{"spec":{"ingress":{"host":"demo-private.rbac.pvm.test"}}}"#,
    ]);
    b.apply(pvm_ns, &projectvm("rbac"));
    b.apply(UNWATCHED, &projectvm("unwatched"));

    let wait_ready = |ns: &str, kind: &str, name: &str| {
        let out = b.kubectl_output(
            &[
                "-n",
                ns,
                "wait",
                "--for=condition=Ready",
                &format!("{kind}/{name}"),
                &format!("--timeout={}s", READY_TIMEOUT.as_secs()),
            ],
            None,
        );
        if !out.status.success() {
            let dump = b.kubectl_output(&["-n", ns, "get", kind, name, "-o", "yaml"], None);
            panic!(
                "{kind}/{name} not Ready: {}\n{}\nnamespaced operator log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&dump.stdout),
                tail(&op.log_text(), 60)
            );
        }
    };
    wait_ready(ws_ns, "ws", "demo-private");
    wait_ready(pvm_ns, "pvm", "rbac");
    let ws = b.get(ws_ns, "ws", "demo-private");
    assert_eq!(Bed::condition(&ws, "CredentialsCurrent").unwrap()["status"], "True", "{ws}");
    assert_eq!(ws["status"]["url"], "http://demo-private.rbac.pvm.test/");
    for (kind, name) in [
        ("secret", "demo-private-code-server"),
        ("secret", "demo-private-workspace-ssh"),
        ("service", "demo-private-workspace"),
        ("ingress", "demo-private-workspace"),
    ] {
        b.kubectl(&["-n", ws_ns, "get", kind, name]);
    }
    assert!(!b.event_reasons(ws_ns, Some("demo-private")).is_empty(), "events were published");

    // A refreshed token (a Secret change, seen through the metadata-only watch) reaches the
    // VM without anyone touching the Workspace.
    let before = Bed::condition(&ws, "CredentialsCurrent").unwrap()["message"].clone();
    b.kubectl(&["-n", ws_ns, "label", "secret", "demo-private-token", "rbac-e2e/touched=yes"]);
    b.eventually("the Secret change to reach the Workspace", Duration::from_secs(90), || {
        let c = Bed::condition(&b.get(ws_ns, "ws", "demo-private"), "CredentialsCurrent")?;
        (c["status"] == "True" && c["message"] != before).then_some(())
    });

    // Dropping the Ingress deletes it (the only delete the operator has).
    b.kubectl(&[
        "-n",
        ws_ns,
        "patch",
        "ws",
        "demo-private",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/ingress"}]"#,
    ]);
    b.eventually("the Ingress to be deleted", Duration::from_secs(120), || {
        let out = b.kubectl_output(&["-n", ws_ns, "get", "ingress", "demo-private-workspace"], None);
        (!out.status.success()).then_some(())
    });
    wait_ready(ws_ns, "ws", "demo-private");

    // The unwatched namespace's resource was never touched.
    let other = b.get(UNWATCHED, "pvm", "unwatched");
    assert!(other.get("status").is_none() && other["metadata"].get("finalizers").is_none(), "{other}");

    // Deletion (finalizers off) works too.
    b.kubectl(&["-n", ws_ns, "delete", "ws", "demo-private", "--timeout=180s"]);
    b.kubectl(&["-n", pvm_ns, "delete", "pvm", "rbac", "--timeout=180s"]);
    b.kubectl(&["-n", UNWATCHED, "delete", "pvm", "unwatched", "--timeout=60s"]);

    // Not one request was refused.
    let log = op.log_text();
    // (kube's errors carry `reason: "Forbidden", code: 403`.)
    let refused: Vec<&str> =
        log.lines().filter(|l| l.contains("code: 403") || l.to_lowercase().contains("forbidden")).collect();
    assert!(refused.is_empty(), "the namespaced operator was refused:\n{}", refused.join("\n"));
    assert!(log.contains("watching only these namespaces"), "{}", tail(&log, 20));

    // People: the built-in edit role manages both kinds, view only reads them (the chart's
    // aggregated ClusterRoles, filled in by kube-controller-manager).
    let ns = WATCHED[0];
    b.kubectl(&["-n", ns, "create", "rolebinding", "rbac-e2e-editor", "--clusterrole=edit", "--user=rbac-e2e-editor"]);
    b.kubectl(&["-n", ns, "create", "rolebinding", "rbac-e2e-viewer", "--clusterrole=view", "--user=rbac-e2e-viewer"]);
    // `what` is `resource[/subresource]` (can-i itself reads `a/b` as resource a, name b).
    let can = |user: &str, verb: &str, what: &str| {
        let (resource, sub) = what.split_once('/').unwrap_or((what, ""));
        let sub = format!("--subresource={sub}");
        let mut args = vec!["auth", "can-i", verb, resource, "-n", ns];
        if what.contains('/') {
            args.push(&sub);
        }
        let user = format!("--as={user}");
        args.push(&user);
        let out = run(b, "kubectl", &args, None);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    b.eventually("edit and view to aggregate the chart's roles", Duration::from_secs(60), || {
        (can("rbac-e2e-editor", "create", "projectvms.projectvm.dev")
            && can("rbac-e2e-viewer", "get", "workspaces.projectvm.dev"))
        .then_some(())
    });
    for what in ["projectvms.projectvm.dev", "workspaces.projectvm.dev", "runs.projectvm.dev"] {
        for verb in ["get", "list", "watch", "create", "update", "patch", "delete"] {
            assert!(can("rbac-e2e-editor", verb, what), "edit: {verb} {what}");
        }
        for verb in ["get", "list", "watch"] {
            assert!(can("rbac-e2e-viewer", verb, what), "view: {verb} {what}");
            assert!(can("rbac-e2e-viewer", verb, &format!("{what}/status")), "view: {verb} {what}/status");
        }
        for verb in ["create", "update", "patch", "delete"] {
            assert!(!can("rbac-e2e-viewer", verb, what), "view must not {verb} {what}");
        }
    }
    assert!(!can("rbac-e2e-editor", "patch", "projectvms.projectvm.dev/status"), "status is the operator's");

    drop(op);
    drop(restore);
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
