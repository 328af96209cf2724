//! The chart rendered by the real `helm template` (from testbed/scripts/k8s-binaries.sh, the
//! bed's cached build) with everything switched on: every document is valid YAML; the CRDs
//! are exactly crdgen's, with Helm's keep policy; the optional objects appear only when asked
//! for; the Grafana dashboard parses and every panel query is valid PromQL; the alert rules
//! pass `promtool check rules` and fire (and stay silent) as intended under `promtool test
//! rules` (promtool: Debian's prometheus package, from testbed/scripts/install-host-deps.sh);
//! and files/metrics.txt lists exactly the metrics the dashboard and the alerts use.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("charts/projectvm-operator")
}

/// helm from the bed's cached binaries (built once from its Go module; never skipped).
fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let out = Command::new(root().join("testbed/scripts/k8s-binaries.sh")).output().expect("k8s-binaries.sh runs");
        assert!(out.status.success(), "k8s-binaries.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let bin = PathBuf::from(stdout.lines().last().expect("k8s-binaries.sh prints the bin dir").trim());
        let helm = bin.join("helm");
        assert!(helm.is_file(), "no helm in {}", bin.display());
        helm
    })
}

/// `helm template` with `set`; all documents, each of which must parse.
fn render(set: &[&str]) -> Vec<Yaml> {
    let mut c = Command::new(helm());
    c.args(["template", "rel"]).arg(chart()).args(["-n", "ops", "--set", "gcp.project=my-project"]);
    for s in set {
        c.args(["--set", s]);
    }
    let out = c.output().expect("helm runs");
    assert!(out.status.success(), "helm template {set:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.split("\n---")
        .map(|doc| serde_yaml::from_str::<Yaml>(doc).unwrap_or_else(|e| panic!("invalid YAML ({e}):\n{doc}")))
        .filter(|v| v.get("kind").is_some())
        .collect()
}

fn of_kind<'a>(docs: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

const EVERYTHING: &[&str] = &[
    "replicas=2",
    "podDisruptionBudget.enabled=true",
    "networkPolicy.enabled=true",
    "grafana.dashboard.enabled=true",
    "prometheusRule.enabled=true",
    "topologySpreadConstraints[0].maxSkew=1",
    "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
    "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
    // Not the defaults, so the test sees the values reach the rules.
    "prometheusRule.notReadyFor=20m",
    "prometheusRule.idleGraceFor=10m",
    "prometheusRule.reconcileErrorRatio=0.25",
    "prometheusRule.reconcileErrorsFor=5m",
    "prometheusRule.namespaceSpendDollars=50",
    "prometheusRule.namespaceSpendWindow=1d",
];

fn everything() -> &'static [Yaml] {
    static DOCS: OnceLock<Vec<Yaml>> = OnceLock::new();
    DOCS.get_or_init(|| render(EVERYTHING))
}

fn dashboard() -> Json {
    let cms = of_kind(everything(), "ConfigMap");
    let cm = cms.iter().find(|c| c["metadata"]["name"] == "rel-projectvm-operator-dashboard").expect("dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1", "the sidecar's label");
    let text = cm["data"]["projectvm.json"].as_str().expect("projectvm.json in the ConfigMap");
    serde_json::from_str(text).expect("the dashboard is JSON")
}

/// Every panel query (rows hold no queries here), with its panel's title.
fn panel_queries(d: &Json) -> Vec<(String, String)> {
    let mut out = vec![];
    for p in d["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().expect("panel title").to_string();
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {title} has no targets"));
        assert!(!targets.is_empty(), "panel {title} has no queries");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default().trim().to_string();
            assert!(!expr.is_empty(), "panel {title} has an empty query");
            out.push((title.clone(), expr));
        }
    }
    out
}

fn rule_groups() -> Yaml {
    let rules = of_kind(everything(), "PrometheusRule");
    assert_eq!(rules.len(), 1);
    rules[0]["spec"].clone()
}

fn alert_exprs() -> Vec<(String, String)> {
    let spec = rule_groups();
    let mut out = vec![];
    for g in spec["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            let name = r["alert"].as_str().expect("alert name").to_string();
            let expr = r["expr"].as_str().unwrap_or_default().trim().to_string();
            assert!(!expr.is_empty(), "alert {name} has an empty expr");
            out.push((name, expr));
        }
    }
    out
}

/// `projectvm_*` names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("projectvm_") {
        let preceded_by_ident = rest[..i].chars().last().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        if !preceded_by_ident {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// The value with every number as a float, so 1 and 1.0 compare equal (as they do in JSON).
fn numbers_as_f64(v: &Yaml) -> Yaml {
    match v {
        Yaml::Number(n) => Yaml::from(n.as_f64().expect("a finite number")),
        Yaml::Sequence(s) => Yaml::Sequence(s.iter().map(numbers_as_f64).collect()),
        Yaml::Mapping(m) => Yaml::Mapping(m.iter().map(|(k, v)| (k.clone(), numbers_as_f64(v))).collect()),
        other => other.clone(),
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pvm-chart-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// promtool from PATH (never skipped: the test fails when it is missing).
fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool").args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!(
            "promtool does not run ({e}): install it with testbed/scripts/install-host-deps.sh (Debian's prometheus)"
        )
    });
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{said}");
    said
}

#[test]
fn everything_enabled_renders_valid_objects() {
    let docs = everything();
    let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for k in ["CustomResourceDefinition", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap", "PrometheusRule"] {
        assert!(kinds.contains(k), "{k} missing from {kinds:?}");
    }

    let pdb = of_kind(docs, "PodDisruptionBudget")[0];
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let deployment = of_kind(docs, "Deployment")[0];
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        pod_labels["app.kubernetes.io/instance"]
    );
    let spread = &deployment["spec"]["template"]["spec"]["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "topology.kubernetes.io/zone");
    assert_eq!(spread["labelSelector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"], "{spread:?}");

    // Egress exactly where the operator goes.
    let np = of_kind(docs, "NetworkPolicy")[0];
    let egress = np["spec"]["egress"].as_sequence().expect("egress rules");
    let reaches = |cidr: Option<&str>, port: u64| {
        egress.iter().any(|r| {
            let to_ok = match cidr {
                None => true,
                Some(c) => r["to"].as_sequence().is_some_and(|to| to.iter().any(|p| p["ipBlock"]["cidr"] == c)),
            };
            to_ok && r["ports"].as_sequence().is_some_and(|ps| ps.iter().any(|p| p["port"] == port))
        })
    };
    for (cidr, port) in [
        (None, 443),  // API server
        (None, 6443), // API server on its usual non-443 port
        (Some("0.0.0.0/0"), 443),
        (Some("169.254.169.254/32"), 80),
        (Some("169.254.169.252/32"), 988),
        (Some("0.0.0.0/0"), 22),
        (Some("0.0.0.0/0"), 8080),
        (None, 53),
    ] {
        assert!(reaches(cidr, port), "no egress to {cidr:?}:{port} in {egress:?}");
    }
    assert!(!reaches(None, 25), "nothing else: {egress:?}");
    let dns: BTreeSet<&str> = egress
        .iter()
        .flat_map(|r| r["ports"].as_sequence().into_iter().flatten())
        .filter(|p| p["port"] == 53)
        .filter_map(|p| p["protocol"].as_str())
        .collect();
    assert_eq!(dns, BTreeSet::from(["TCP", "UDP"]));
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], "metrics");
}

#[test]
fn crds_are_crdgens_with_the_keep_policy_and_can_be_left_out() {
    let crds = of_kind(everything(), "CustomResourceDefinition");
    assert_eq!(crds.len(), 3);
    for crd in &crds {
        let name = crd["metadata"]["name"].as_str().unwrap();
        assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep", "{name}");
        assert_eq!(crd["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm", "{name}");
        // The same object as the generated file, apart from the metadata the chart adds.
        let file = format!("crds/projectvm.dev_{}.yaml", name.split('.').next().unwrap());
        let mut generated: Yaml = serde_yaml::from_str(&std::fs::read_to_string(root().join(&file)).unwrap()).unwrap();
        let mut rendered = (*crd).clone();
        for v in [&mut rendered, &mut generated] {
            let meta = v["metadata"].as_mapping_mut().unwrap();
            meta.remove("labels");
            meta.remove("annotations");
        }
        // Helm's fromYaml/toYaml round trip writes 65536.0 as 65536: the same JSON number.
        assert!(numbers_as_f64(&rendered) == numbers_as_f64(&generated), "the chart's {name} differs from {file}");
    }
    let kept_out = render(&["crds.install=false"]);
    assert!(of_kind(&kept_out, "CustomResourceDefinition").is_empty());
    let unkept = render(&["crds.keep=false"]);
    for crd in of_kind(&unkept, "CustomResourceDefinition") {
        assert!(crd["metadata"].get("annotations").is_none(), "{crd:?}");
    }
}

#[test]
fn optional_objects_only_when_asked_for() {
    let defaults = render(&[]);
    for kind in ["PodDisruptionBudget", "NetworkPolicy", "PrometheusRule"] {
        assert!(of_kind(&defaults, kind).is_empty(), "{kind} rendered by default");
    }
    assert!(of_kind(&defaults, "ConfigMap").is_empty(), "no dashboard (nor rates) by default");
    assert!(defaults.iter().all(|d| d["spec"]["template"]["spec"].get("topologySpreadConstraints").is_none()));
    // One replica: a PDB would block every drain.
    let single = render(&["podDisruptionBudget.enabled=true"]);
    assert!(of_kind(&single, "PodDisruptionBudget").is_empty());
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let d = dashboard();
    assert_eq!(d["uid"], "projectvm-operator");
    let vars: Vec<&str> =
        d["templating"]["list"].as_array().unwrap().iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(vars, ["datasource", "namespace"]);
    let queries = panel_queries(&d);
    assert!(queries.len() >= 15, "{queries:?}");
    // promtool parses each query as a recording rule, with Grafana's variables filled in.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        let expr = expr.replace("$__rate_interval", "5m").replace("$namespace", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tmp("dashboard");
    std::fs::write(dir.join("dashboard.yaml"), rules).unwrap();
    let said = promtool(&["check", "rules", "dashboard.yaml"], &dir);
    assert!(said.contains(&format!("{} rules found", queries.len())), "{said}");
}

#[test]
fn metrics_list_is_what_the_dashboard_and_alerts_use() {
    let listed: BTreeSet<String> = std::fs::read_to_string(chart().join("files/metrics.txt"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    let mut used = BTreeSet::new();
    for (_, expr) in panel_queries(&dashboard()).into_iter().chain(alert_exprs()) {
        used.extend(metric_names(&expr));
    }
    assert_eq!(listed, used, "files/metrics.txt must list exactly the metrics the dashboard and alerts query");
}

const RULE_TESTS: &str = r#"
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'projectvm_ready{kind="projectvm",namespace="a",name="stuck"}'
        values: '0x40'
      - series: 'projectvm_ready{kind="projectvm",namespace="a",name="fine"}'
        values: '1x40'
      - series: 'projectvm_ready{kind="workspace",namespace="a",name="brief"}'
        values: '0x10 1x30'
    alert_rule_test:
      - eval_time: 19m
        alertname: ProjectVMNotReady
        exp_alerts: []
      - eval_time: 21m
        alertname: ProjectVMNotReady
        exp_alerts:
          - exp_labels: {severity: warning, kind: projectvm, namespace: a, name: stuck}

  # Idle timeout 1h, no activity since t=0: past it from 60m on, firing 10m (idleGraceFor) later.
  - interval: 1m
    input_series:
      - series: 'projectvm_last_activity_timestamp_seconds{kind="workspace",namespace="a",name="idle"}'
        values: '0x100'
      - series: 'projectvm_idle_timeout_seconds{kind="workspace",namespace="a",name="idle"}'
        values: '3600x100'
      - series: 'projectvm_vm_running{kind="workspace",namespace="a",name="idle"}'
        values: '1x100'
      # Stopped: fine.
      - series: 'projectvm_last_activity_timestamp_seconds{kind="projectvm",namespace="a",name="stopped"}'
        values: '0x100'
      - series: 'projectvm_idle_timeout_seconds{kind="projectvm",namespace="a",name="stopped"}'
        values: '3600x100'
      - series: 'projectvm_vm_running{kind="projectvm",namespace="a",name="stopped"}'
        values: '0x100'
      # No idle timeout: fine however long it runs.
      - series: 'projectvm_last_activity_timestamp_seconds{kind="projectvm",namespace="a",name="always"}'
        values: '0x100'
      - series: 'projectvm_idle_timeout_seconds{kind="projectvm",namespace="a",name="always"}'
        values: '0x100'
      - series: 'projectvm_vm_running{kind="projectvm",namespace="a",name="always"}'
        values: '1x100'
      # In use: its last activity keeps up with the clock.
      - series: 'projectvm_last_activity_timestamp_seconds{kind="projectvm",namespace="a",name="busy"}'
        values: '0+60x100'
      - series: 'projectvm_idle_timeout_seconds{kind="projectvm",namespace="a",name="busy"}'
        values: '3600x100'
      - series: 'projectvm_vm_running{kind="projectvm",namespace="a",name="busy"}'
        values: '1x100'
    alert_rule_test:
      - eval_time: 68m
        alertname: ProjectVMRunningPastIdleTimeout
        exp_alerts: []
      - eval_time: 75m
        alertname: ProjectVMRunningPastIdleTimeout
        exp_alerts:
          - exp_labels: {severity: warning, kind: workspace, namespace: a, name: idle}

  # 30% of projectvm reconciles fail (over the 25% threshold), 10% of workspace ones.
  - interval: 1m
    input_series:
      - series: 'projectvm_reconciles_total{kind="projectvm"}'
        values: '0+10x60'
      - series: 'projectvm_reconcile_errors_total{kind="projectvm"}'
        values: '0+3x60'
      - series: 'projectvm_reconciles_total{kind="workspace"}'
        values: '0+10x60'
      - series: 'projectvm_reconcile_errors_total{kind="workspace"}'
        values: '0+1x60'
    alert_rule_test:
      - eval_time: 3m
        alertname: ProjectVMReconcileErrors
        exp_alerts: []
      - eval_time: 30m
        alertname: ProjectVMReconcileErrors
        exp_alerts:
          - exp_labels: {severity: warning, kind: projectvm}

  # Namespace big spends 10 USD a minute (with an operator restart resetting its counter),
  # small 0.01 (14.40 a day, under the 50 USD threshold).
  - interval: 1m
    input_series:
      - series: 'projectvm_namespace_cost_dollars_total{namespace="big"}'
        values: '0+10x300 0+10x300'
      - series: 'projectvm_namespace_cost_dollars_total{namespace="small"}'
        values: '0+0.01x1500'
    alert_rule_test:
      - eval_time: 3m
        alertname: ProjectVMNamespaceSpend
        exp_alerts: []
      - eval_time: 10h
        alertname: ProjectVMNamespaceSpend
        exp_alerts:
          - exp_labels: {severity: info, namespace: big}
"#;

#[test]
fn alert_rules_pass_promtool_and_fire_as_intended() {
    let alerts = alert_exprs();
    let names: BTreeSet<&str> = alerts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "ProjectVMNotReady",
            "ProjectVMRunningPastIdleTimeout",
            "ProjectVMReconcileErrors",
            "ProjectVMNamespaceSpend"
        ])
    );
    let mut spec = rule_groups();
    let group = &spec["groups"][0];
    let not_ready = group["rules"].as_sequence().unwrap().iter().find(|r| r["alert"] == "ProjectVMNotReady").unwrap();
    assert_eq!(not_ready["for"], "20m");
    // Prometheus's templates got through Helm untouched.
    let summary = not_ready["annotations"]["summary"].as_str().unwrap();
    assert!(summary.contains("{{ $labels.namespace }}/{{ $labels.name }}"), "{summary}");

    let dir = tmp("rules");
    std::fs::write(dir.join("rules.yaml"), serde_yaml::to_string(&spec).unwrap()).unwrap();
    promtool(&["check", "rules", "rules.yaml"], &dir);
    // The unit tests compare labels; annotations (checked above and by `check rules`) are
    // left out so they need not be spelled out for each alert.
    for g in spec["groups"].as_sequence_mut().unwrap() {
        for r in g["rules"].as_sequence_mut().unwrap() {
            r.as_mapping_mut().unwrap().remove("annotations");
        }
    }
    std::fs::write(dir.join("rules.yaml"), serde_yaml::to_string(&spec).unwrap()).unwrap();
    std::fs::write(dir.join("tests.yaml"), RULE_TESTS).unwrap();
    promtool(&["test", "rules", "tests.yaml"], &dir);
}

#[test]
fn metric_names_are_found_in_expressions() {
    let names =
        metric_names("sum by (kind) (rate(projectvm_reconciles_total[5m])) / x_projectvm_y{kind=\"projectvm\"}");
    assert_eq!(names, BTreeSet::from(["projectvm_reconciles_total".to_string()]));
}

/// The `matchLabels` of a selector as pairs.
fn match_labels(selector: &Yaml) -> Vec<(String, String)> {
    selector["matchLabels"]
        .as_mapping()
        .map(|m| m.iter().map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().unwrap().to_string())).collect())
        .unwrap_or_default()
}

fn selects(selector: &[(String, String)], labels: &Yaml) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels[k.as_str()].as_str() == Some(v.as_str()))
}

fn env_of(deployment: &Yaml, name: &str) -> Option<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(String::from))
}

#[test]
fn shards_get_a_deployment_lease_and_service_each_and_select_only_their_pods() {
    let docs = render(&[
        "sharding.shards={shard1,shard2}",
        "replicas=2",
        "podDisruptionBudget.enabled=true",
        "networkPolicy.enabled=true",
        "serviceMonitor.enabled=true",
    ]);
    let deployments = of_kind(&docs, "Deployment");
    let names: Vec<&str> = deployments.iter().map(|d| d["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["rel-projectvm-operator", "rel-projectvm-operator-shard1", "rel-projectvm-operator-shard2"]);
    let selectors: Vec<Option<String>> = deployments.iter().map(|d| env_of(d, "PROJECTVM_SHARD_SELECTOR")).collect();
    assert_eq!(
        selectors,
        [
            Some("!sharding.fluxcd.io/key".to_string()),
            Some("sharding.fluxcd.io/key in (shard1)".to_string()),
            Some("sharding.fluxcd.io/key in (shard2)".to_string()),
        ]
    );
    let leases: BTreeSet<String> = deployments.iter().map(|d| env_of(d, "PROJECTVM_LEASE_NAME").unwrap()).collect();
    assert_eq!(leases.len(), 3, "a Lease each: {leases:?}");

    // No Deployment, Service or PDB selects another Deployment's pods.
    let pods: Vec<&Yaml> = deployments.iter().map(|d| &d["spec"]["template"]["metadata"]["labels"]).collect();
    for (i, d) in deployments.iter().enumerate() {
        let sel = match_labels(&d["spec"]["selector"]);
        for (j, labels) in pods.iter().enumerate() {
            assert_eq!(selects(&sel, labels), i == j, "Deployment {i} vs pods of {j}");
        }
    }
    for kind in ["Service", "PodDisruptionBudget"] {
        let objs = of_kind(&docs, kind);
        assert_eq!(objs.len(), 3, "one {kind} per Deployment");
        for (i, o) in objs.iter().enumerate() {
            let sel = if kind == "Service" {
                o["spec"]["selector"]
                    .as_mapping()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().unwrap().to_string()))
                    .collect()
            } else {
                match_labels(&o["spec"]["selector"])
            };
            for (j, labels) in pods.iter().enumerate() {
                assert_eq!(selects(&sel, labels), i == j, "{kind} {i} vs pods of {j}");
            }
        }
    }
    // The ServiceMonitor scrapes all three Services; the NetworkPolicy covers all pods.
    let monitor = match_labels(&of_kind(&docs, "ServiceMonitor")[0]["spec"]["selector"]);
    assert!(of_kind(&docs, "Service").iter().all(|s| selects(&monitor, &s["metadata"]["labels"])));
    let policy = match_labels(&of_kind(&docs, "NetworkPolicy")[0]["spec"]["podSelector"]);
    assert!(pods.iter().all(|p| selects(&policy, p)));

    // Without shards: one Deployment taking everything.
    let plain = render(&[]);
    let only = of_kind(&plain, "Deployment");
    assert_eq!(only.len(), 1);
    assert_eq!(env_of(only[0], "PROJECTVM_SHARD_SELECTOR"), None);
}
