//! The chart as an administrator runs it from release to release: an upgrade from 0.1.0
//! (whose CRDs came from Helm's install-only crds/ directory) to this chart upgrades the CRDs,
//! following the README's one-time adoption step, so a field added since survives; and the
//! operator exports every metric the chart's Grafana dashboard and alerts query.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::bed::{Bed, ControlPlane, READY_TIMEOUT, bed, operator_shared, repo_root, tempdir};

const RELEASE: &str = "projectvm-operator";
const NS: &str = "projectvm-system";
const CRDS: [&str; 3] = ["projectvms.projectvm.dev", "workspaces.projectvm.dev", "runs.projectvm.dev"];

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn must(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The previous release's chart as it was published (`helm package` of tag v0.1.0, kept in
/// `tests/fixtures` so a clone without tags or history can run this), unpacked.
fn released_chart(version: &str, into: &Path) -> String {
    let package = repo_root().join(format!("tests/fixtures/projectvm-operator-{version}.tgz"));
    assert!(package.is_file(), "{} is missing", package.display());
    must(Command::new("tar").arg("-xzf").arg(&package).arg("-C").arg(into).output().unwrap(), "tar -xz");
    let chart = into.join("projectvm-operator");
    let meta = std::fs::read_to_string(chart.join("Chart.yaml")).unwrap();
    assert!(meta.lines().any(|l| l.trim() == format!("version: {version}")), "{package:?} is {version}:\n{meta}");
    assert!(chart.join("crds").is_dir(), "{version}'s chart ships its CRDs in crds/");
    chart.display().to_string()
}

/// The README's "From 0.1.x" block, as written.
fn readme_adoption_block() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme.split("### From 0.1.x").nth(1).expect("README has a \"From 0.1.x\" section");
    let block = section.split("```sh\n").nth(1).and_then(|b| b.split("```").next()).expect("a sh block in it");
    assert!(block.contains("meta.helm.sh/release-name") && block.contains("helm upgrade"), "{block}");
    block.to_string()
}

fn projectvm(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  repository:\n    url: https://git.pvm.test/public/demo.git\n{extra}"
    )
}

fn workspace(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: projectvm.dev/v1alpha1\nkind: Workspace\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  repository:\n    url: https://git.pvm.test/public/demo.git\n{extra}"
    )
}

fn spec_field(cp: &ControlPlane, kind: &str, name: &str, field: &str) -> Option<String> {
    cp.get("default", kind, name)["spec"][field].as_str().map(String::from)
}

#[test]
#[ignore = "needs the test bed's helm, kubectl and control-plane binaries: ./scripts/test.sh"]
fn crds_upgrade_from_v0_1_0_keeps_new_fields() {
    let b = bed();
    // CRDs are cluster-wide: this test's releases live on a control plane of their own, so
    // the bed's CRDs (and the tests running beside this one) never see them change.
    let cp = ControlPlane::up(b, "chart-upgrade");
    let dir = tempdir("chart-upgrade");
    let old_chart = released_chart("0.1.0", &dir);
    let helm = |args: &[&str]| cp.output("helm", args, None);

    // 0.1.0, installed as its README said.
    must(
        helm(&[
            "install",
            RELEASE,
            &old_chart,
            "-n",
            NS,
            "--create-namespace",
            "--set",
            "gcp.project=testbed",
            "--wait=false",
        ]),
        "helm install of 0.1.0",
    );
    let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    let crd_refs: Vec<String> = CRDS.iter().map(|c| format!("crd/{c}")).collect();
    wait.extend(crd_refs.iter().map(String::as_str));
    cp.kubectl(&wait);
    must(cp.kubectl_output(&["apply", "-f", "-"], Some(&workspace("before", ""))), "a Workspace under 0.1.0");

    // The old schema lacks the new field: a write with it loses it (the API server prunes
    // it; with field validation off, silently). This is what an upgrade must not leave.
    let pruned = cp.kubectl_output(
        &["apply", "--validate=false", "-f", "-"],
        Some(&projectvm("pruned", "  runStrategy: Manual\n  maxRunningTime: 12h\n")),
    );
    assert!(pruned.status.success(), "{}", text(&pruned));
    assert_eq!(spec_field(&cp, "pvm", "pruned", "maxRunningTime"), None, "0.1.0's CRD has no maxRunningTime");

    // Without the one-time adoption, Helm refuses to take over 0.1.0's CRDs.
    let chart = repo_root().join("charts/projectvm-operator").display().to_string();
    let refused = helm(&["upgrade", RELEASE, &chart, "-n", NS, "--reset-then-reuse-values"]);
    assert!(!refused.status.success(), "helm upgrade adopted CRDs without ownership metadata:\n{}", text(&refused));
    assert!(text(&refused).contains("invalid ownership metadata"), "{}", text(&refused));

    // The README's block, as written, from the repository root.
    let mut c = cp.command("bash");
    c.current_dir(repo_root()).args(["-euo", "pipefail", "-c", &readme_adoption_block()]);
    must(c.output().unwrap(), "the README's From 0.1.x block");
    let status = must(helm(&["status", RELEASE, "-n", NS, "-o", "json"]), "helm status");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["info"]["status"], "deployed", "{}", status["info"]);
    assert_eq!(status["version"], 2, "one upgrade on top of 0.1.0");

    // The CRDs now belong to the release, are kept on uninstall, and have the new schema.
    for crd in CRDS {
        let o: serde_json::Value = serde_json::from_str(&cp.kubectl(&["get", "crd", crd, "-o", "json"])).unwrap();
        let meta = &o["metadata"];
        assert_eq!(meta["labels"]["app.kubernetes.io/managed-by"], "Helm", "{crd}");
        assert_eq!(meta["labels"]["helm.sh/chart"], "projectvm-operator-0.2.0", "{crd}: rendered by this chart");
        assert_eq!(meta["annotations"]["meta.helm.sh/release-name"], RELEASE, "{crd}");
        assert_eq!(meta["annotations"]["helm.sh/resource-policy"], "keep", "{crd}");
    }
    cp.kubectl(&["wait", "--for=condition=Established", "--timeout=60s", "crd/projectvms.projectvm.dev"]);

    // The new field survives now, on both kinds, with strict field validation (kubectl's
    // default) — the API server would refuse it if the schema did not know it.
    for (kind, manifest) in [
        ("pvm", projectvm("after", "  runStrategy: Manual\n  maxRunningTime: 12h\n")),
        ("ws", workspace("after", "  runStrategy: Manual\n  maxRunningTime: 12h\n")),
    ] {
        let out = cp.kubectl_output(&["apply", "-f", "-"], Some(&manifest));
        assert!(out.status.success(), "{kind} with maxRunningTime after the upgrade: {}", text(&out));
        assert_eq!(spec_field(&cp, kind, "after", "maxRunningTime").as_deref(), Some("12h"), "{kind}");
    }
    // And the object made under 0.1.0 is still there.
    assert_eq!(cp.get("default", "ws", "before")["metadata"]["name"], "before");

    // The optional objects, rendered with everything on, are valid for a real API server
    // (kubectl's strict field validation; the PrometheusRule needs prometheus-operator's CRD,
    // which this cluster lacks: tests/chart_render.rs checks it with promtool).
    let everything = [
        "gcp.project=testbed",
        "replicas=2",
        "podDisruptionBudget.enabled=true",
        "networkPolicy.enabled=true",
        "networkPolicy.apiServer.cidrs={127.0.0.1/32}",
        "grafana.dashboard.enabled=true",
        "topologySpreadConstraints[0].maxSkew=1",
        "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
        "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
    ];
    let mut args = vec!["template", RELEASE, chart.as_str(), "-n", NS];
    for s in &everything {
        args.extend(["--set", s]);
    }
    let rendered = must(helm(&args), "helm template with everything on");
    for kind in ["PodDisruptionBudget", "NetworkPolicy", "ConfigMap", "Deployment"] {
        assert!(rendered.contains(&format!("\nkind: {kind}\n")), "{kind} not rendered");
    }
    let dry = cp.kubectl_output(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered));
    assert!(dry.status.success(), "the API server refused the chart's objects:\n{}", text(&dry));

    // Uninstalling leaves the CRDs and every resource (crds.keep).
    must(helm(&["uninstall", RELEASE, "-n", NS, "--wait", "--timeout=60s"]), "helm uninstall");
    for crd in CRDS {
        cp.kubectl(&["get", "crd", crd]);
    }
    assert_eq!(spec_field(&cp, "pvm", "after", "maxRunningTime").as_deref(), Some("12h"));
}

/// Series names with at least one sample in a Prometheus text exposition.
fn exported_series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(String::from)
        .collect()
}

fn listed_metrics() -> Vec<String> {
    std::fs::read_to_string(repo_root().join("charts/projectvm-operator/files/metrics.txt"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn every_dashboard_and_alert_metric_is_exported() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-chart-metrics");
    // A Ready VM with an idle timeout (Manual: idle shutdown needs it), and one that fails
    // (a repository that does not exist), so per-object, idle and failure series all exist
    // (a family without a sample is not rendered at all).
    b.apply(
        &ns,
        "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata:\n  name: watched\nspec:\n  size: small\n  runStrategy: Manual\n  idleTimeout: 1h\n  repository:\n    url: https://git.pvm.test/public/demo.git\n    depth: 1\n",
    );
    b.apply(
        &ns,
        "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata:\n  name: failing\nspec:\n  size: small\n  repository:\n    url: https://git.pvm.test/public/does-not-exist.git\n",
    );
    // And one whose reconciles fail: its namespace allows no Secrets, so the operator cannot
    // store its SSH key (the API server refuses it: a reconcile error, retried).
    let refused = b.namespace("e2e-chart-errors");
    b.kubectl(&["-n", &refused, "create", "quota", "no-secrets", "--hard=secrets=0"]);
    b.apply(
        &refused,
        "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata:\n  name: refused\nspec:\n  size: small\n  repository:\n    url: https://git.pvm.test/public/demo.git\n",
    );
    b.wait_condition(&ns, "pvm", "watched", "Ready", READY_TIMEOUT);
    b.eventually("failing to report RepositoryNotFound", READY_TIMEOUT, || {
        let c = Bed::condition(&b.get(&ns, "pvm", "failing"), "RepositorySynced")?;
        (c["reason"] == "RepositoryNotFound").then_some(())
    });

    // Someone working on the VM (a process of its user for longer than the activity probe's
    // 30 s period at this idle timeout) gives it a last activity time.
    let (code, _) = b.ssh(&ns, "pvm", "watched", "sleep 40");
    assert_eq!(code, 0, "ssh to the VM");

    let wanted = listed_metrics();
    assert!(wanted.len() >= 10, "{wanted:?}");
    let mut missing = vec![];
    // Gauges are set as the controllers get to them: give them a bounded while.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let exported = exported_series(&b.metrics());
        missing = wanted.iter().filter(|m| !exported.contains(*m)).cloned().collect::<Vec<_>>();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        missing.is_empty(),
        "the dashboard or the alerts query series the operator does not export: {missing:?}\n/metrics:\n{}",
        b.metrics()
    );
    // The per-object series carry the labels the dashboard and alerts group by.
    let metrics = b.metrics();
    let line = format!("projectvm_ready{{kind=\"projectvm\",namespace=\"{ns}\",name=\"watched\"}} 1");
    assert!(metrics.lines().any(|l| l == line), "no {line} in /metrics:\n{metrics}");
    b.delete_namespace(&ns);
    b.delete_namespace(&refused);
}

#[test]
fn series_names_are_read_from_the_exposition() {
    let text = "# HELP projectvm_ready x\n# TYPE projectvm_ready gauge\nprojectvm_ready{kind=\"a\"} 1\nprojectvm_tasks_running 0\n# TYPE projectvm_failures counter\n";
    let got = exported_series(text);
    assert_eq!(got, BTreeSet::from(["projectvm_ready".to_string(), "projectvm_tasks_running".to_string()]));
}
