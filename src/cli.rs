//! What the `kubectl projectvm` plugin prints, from the objects it read: pure, so every view
//! is a unit test. The binary (`src/bin/kubectl-projectvm.rs`) only reads and writes.

use crate::api::{Condition, ConditionStatus, CostStatus, RunStatus, VmStatus};
use crate::conditions::Reason;

/// The kinds the plugin knows, as the API server names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ProjectVM,
    Workspace,
    Run,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::ProjectVM => "ProjectVM",
            Kind::Workspace => "Workspace",
            Kind::Run => "Run",
        }
    }
}

/// A table with left-aligned columns, two spaces apart; cells are cut to `max` characters.
pub fn table(header: &[&str], rows: &[Vec<String>], max: usize) -> String {
    let cut = |s: &str| {
        let one_line = s.lines().next().unwrap_or("");
        if one_line.chars().count() > max || s.contains('\n') {
            let mut t: String = one_line.chars().take(max.saturating_sub(1)).collect();
            t.push('…');
            t
        } else {
            one_line.to_string()
        }
    };
    let cells: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(rows.iter().map(|r| r.iter().map(|c| cut(c)).collect()))
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| cells.iter().map(|r| r.get(i).map_or(0, |c| c.chars().count())).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| if i + 1 == row.len() { c.clone() } else { format!("{c:<w$}", w = widths[i]) })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn status_word(s: ConditionStatus) -> &'static str {
    match s {
        ConditionStatus::True => "True",
        ConditionStatus::False => "False",
        ConditionStatus::Unknown => "Unknown",
    }
}

/// `status NAME`: the phase, the conditions as a table, and the failing step's whole message.
pub fn status_view(kind: Kind, namespace: &str, name: &str, phase: Option<String>, conditions: &[Condition]) -> String {
    let mut out =
        format!("{} {namespace}/{name}: {}\n\n", kind.name(), phase.unwrap_or_else(|| "(no status yet)".into()));
    let rows: Vec<Vec<String>> = conditions
        .iter()
        .map(|c| vec![c.type_.clone(), status_word(c.status).into(), c.reason.clone(), c.message.clone()])
        .collect();
    out.push_str(&table(&["CONDITION", "STATUS", "REASON", "MESSAGE"], &rows, 90));
    // The first condition held back by trouble (not the kstatus summaries, not Ready, which
    // repeat it), with its message in full.
    let failing = conditions.iter().find(|c| {
        let trouble = Reason::parse(&c.reason).is_some_and(Reason::is_trouble);
        let summary = matches!(c.type_.as_str(), "Ready" | "Reconciling" | "Stalled" | "Complete" | "Failed");
        trouble && !summary && c.status != ConditionStatus::True
    });
    let failing =
        failing.or_else(|| conditions.iter().find(|c| c.type_ == "Stalled" && c.status == ConditionStatus::True));
    if let Some(c) = failing {
        out.push_str(&format!("\n{} ({}):\n  {}\n", c.type_, c.reason, c.message.replace('\n', "\n  ")));
    }
    out
}

/// One resource's cost figures for `cost`.
pub struct CostRow {
    pub kind: Kind,
    pub name: String,
    pub phase: String,
    pub cost: Option<CostStatus>,
}

/// `cost`: per resource and the namespace total.
pub fn cost_view(namespace: &str, rows: &[CostRow]) -> String {
    let money = |v: f64| format!("${v:.2}");
    let (mut hourly, mut accrued, mut monthly) = (0.0, 0.0, 0.0);
    let mut lines: Vec<Vec<String>> = Vec::new();
    for r in rows {
        let c = r.cost.clone().unwrap_or_default();
        let running = r.phase == "Ready";
        if running {
            hourly += c.hourly_rate;
        }
        accrued += c.accrued;
        monthly += c.estimated_monthly;
        lines.push(vec![
            r.kind.name().into(),
            r.name.clone(),
            r.phase.clone(),
            format!("{}/h", money(c.hourly_rate)),
            money(c.accrued),
            money(c.estimated_monthly),
        ]);
    }
    lines.push(vec![
        "TOTAL".into(),
        format!("{} resource(s) in {namespace}", rows.len()),
        String::new(),
        format!("{}/h now", money(hourly)),
        money(accrued),
        money(monthly),
    ]);
    table(&["KIND", "NAME", "PHASE", "RATE", "ACCRUED", "EST. MONTHLY"], &lines, 60)
}

/// The largest manifest `cost -f` reads.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// `cost -f FILE`: what each ProjectVM and Workspace in a manifest would cost, before it is
/// applied (documents of other kinds are skipped), and the total.
pub fn estimate_view(manifest: &str, rates: &crate::cost::Rates) -> anyhow::Result<String> {
    use serde::Deserialize as _;
    let money = |v: f64| format!("${v:.2}");
    let mut lines: Vec<Vec<String>> = Vec::new();
    let mut monthly = 0.0;
    for (i, doc) in serde_yaml::Deserializer::from_str(manifest).enumerate() {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| anyhow::anyhow!("document {}: {e}", i + 1))?;
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
        let group = value.get("apiVersion").and_then(|k| k.as_str()).unwrap_or_default();
        if !group.starts_with("projectvm.dev/") {
            continue;
        }
        let name = value.get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or("?");
        let machine = match kind {
            "ProjectVM" => serde_yaml::from_value::<crate::api::ProjectVM>(value.clone()).map(|o| o.spec.machine),
            "Workspace" => serde_yaml::from_value::<crate::api::Workspace>(value.clone()).map(|o| o.spec.machine),
            _ => continue,
        }
        .map_err(|e| anyhow::anyhow!("{kind} {name}: {e}"))?;
        let machine_type = machine.desired_machine_type();
        let will_run = machine.run_strategy != crate::api::RunStrategy::Halted;
        let compute = rates.compute_hourly(&machine_type);
        let disk = rates.disk_hourly(machine.disk_size_gb);
        let e = crate::cost::estimate(compute, disk, will_run, chrono::Utc::now());
        monthly += e.estimated_monthly;
        let known = if rates.machine_types.contains_key(&machine_type) { "" } else { " (no rate known)" };
        lines.push(vec![
            kind.into(),
            name.into(),
            format!("{machine_type}{known}"),
            format!("{} GB", machine.disk_size_gb),
            format!("{}/h", money(e.hourly_rate)),
            money(e.estimated_monthly),
        ]);
    }
    if lines.is_empty() {
        anyhow::bail!("the manifest has no ProjectVM or Workspace");
    }
    lines.push(vec![
        "TOTAL".into(),
        format!("{} resource(s)", lines.len()),
        String::new(),
        String::new(),
        String::new(),
        money(monthly),
    ]);
    let mut out = table(&["KIND", "NAME", "MACHINE TYPE", "DISK", "RATE", "EST. MONTHLY"], &lines, 60);
    out.push_str(
        "Estimates assume running all month (Halted: disk only); idle shutdown and maxRunningTime lower them.\n",
    );
    Ok(out)
}

/// `open NAME`: where to go and how to log in.
pub fn open_view(url: Option<&str>, password: Option<&str>, password_source: &str, ready: bool) -> String {
    let mut out = String::new();
    match url {
        Some(u) => out.push_str(&format!("URL:       {u}\n")),
        None => out.push_str("URL:       (none yet)\n"),
    }
    match password {
        Some(p) => out.push_str(&format!("Password:  {p}\n")),
        None => out.push_str(&format!("Password:  {password_source}\n")),
    }
    if !ready {
        out.push_str("(the Workspace is not Ready yet: `kubectl projectvm status NAME` says why)\n");
    }
    out
}

/// `logs RUN`: what is new in the log tail since `seen` (the tail may have moved past it),
/// so `--follow` prints each line once.
pub fn new_log_lines<'a>(seen: &str, tail: &'a str) -> &'a str {
    if seen.is_empty() {
        return tail;
    }
    if let Some(rest) = tail.strip_prefix(seen) {
        return rest.trim_start_matches('\n');
    }
    // The tail is a window: find where the last line seen ends in it.
    let last = seen.lines().last().unwrap_or("");
    match tail.rfind(last) {
        Some(i) if !last.is_empty() => tail[i + last.len()..].trim_start_matches('\n'),
        _ => tail,
    }
}

/// The end of `logs RUN`: how the Run ended and where its artifacts are.
pub fn run_summary(status: &RunStatus) -> String {
    let mut out = String::new();
    if let Some(p) = status.phase {
        out.push_str(&format!("--- {p:?}"));
        if let Some(code) = status.exit_code {
            out.push_str(&format!(", exit code {code}"));
        }
        if let Some(d) = &status.duration {
            out.push_str(&format!(", {d}"));
        }
        out.push('\n');
    }
    for a in &status.artifacts {
        out.push_str(&format!("artifact {} ({} bytes, sha256 {}): {}\n", a.name, a.size, a.sha256, a.url));
    }
    out
}

/// The phase of a VM kind's status, as text.
pub fn vm_phase(status: Option<&VmStatus>) -> String {
    status.and_then(|s| s.phase).map(|p| format!("{p:?}")).unwrap_or_else(|| "Pending".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(t: &str, s: ConditionStatus, r: &str, m: &str) -> Condition {
        Condition { type_: t.into(), status: s, reason: r.into(), message: m.into(), ..Default::default() }
    }

    #[test]
    fn status_names_the_failing_step_in_full() {
        let conds = [
            cond("InstanceReady", ConditionStatus::True, "Running", "instance is running at 10.0.0.2"),
            cond(
                "RepositorySynced",
                ConditionStatus::False,
                "AuthenticationFailed",
                "token rejected\nrefresh Secret n/tok",
            ),
            cond("Ready", ConditionStatus::False, "AuthenticationFailed", "token rejected"),
            cond("Stalled", ConditionStatus::True, "AuthenticationFailed", "token rejected"),
        ];
        let v = status_view(Kind::ProjectVM, "n", "api", Some("Failed".into()), &conds);
        assert!(v.starts_with("ProjectVM n/api: Failed\n"), "{v}");
        assert!(v.contains("RepositorySynced  False   AuthenticationFailed  token rejected…"), "{v}");
        assert!(
            v.ends_with("RepositorySynced (AuthenticationFailed):\n  token rejected\n  refresh Secret n/tok\n"),
            "{v}"
        );
        let healthy = status_view(Kind::Run, "n", "r", None, &conds[..1]);
        assert!(!healthy.contains("):\n"), "nothing failing: {healthy}");
    }

    #[test]
    fn estimates_a_manifest_before_it_is_applied() {
        let manifest = "apiVersion: v1\nkind: Secret\nmetadata: {name: t}\n---\napiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata: {name: big}\nspec:\n  size: xlarge\n  diskSizeGb: 200\n  repository: {url: https://git.example/a.git}\n---\napiVersion: projectvm.dev/v1alpha1\nkind: Workspace\nmetadata: {name: parked}\nspec:\n  runStrategy: Halted\n  repository: {url: https://git.example/b.git}\n";
        let v = estimate_view(manifest, &crate::cost::Rates::default()).unwrap();
        assert!(v.contains("e2-standard-8"), "{v}");
        assert!(v.contains("$203.66"), "xlarge all month with 200 GB: {v}");
        assert!(v.contains("$2.00"), "a Halted Workspace pays its 50 GB disk only: {v}");
        assert!(v.contains("$205.66"), "total: {v}");
        assert!(!v.contains("Secret"), "{v}");
        assert!(estimate_view("apiVersion: v1\nkind: ConfigMap\n", &crate::cost::Rates::default()).is_err());
        let bad = estimate_view(
            "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata: {name: x}\nspec: {size: huge}\n",
            &crate::cost::Rates::default(),
        );
        assert!(bad.unwrap_err().to_string().contains("ProjectVM x"));
    }

    #[test]
    fn cost_totals_the_namespace() {
        let c = |rate: f64, acc: f64, month: f64| CostStatus {
            hourly_rate: rate,
            accrued: acc,
            estimated_monthly: month,
            ..Default::default()
        };
        let rows = [
            CostRow { kind: Kind::ProjectVM, name: "a".into(), phase: "Ready".into(), cost: Some(c(0.05, 1.0, 30.0)) },
            CostRow { kind: Kind::Workspace, name: "b".into(), phase: "Stopped".into(), cost: Some(c(0.1, 2.5, 10.0)) },
            CostRow { kind: Kind::Workspace, name: "c".into(), phase: "Pending".into(), cost: None },
        ];
        let v = cost_view("team", &rows);
        let total = v.lines().last().unwrap();
        assert!(total.starts_with("TOTAL") && total.contains("3 resource(s) in team"), "{v}");
        assert!(total.contains("$0.05/h now") && total.contains("$3.50") && total.contains("$40.00"), "{total}");
    }

    #[test]
    fn follow_prints_each_line_once() {
        assert_eq!(new_log_lines("", "a\nb"), "a\nb");
        assert_eq!(new_log_lines("a\nb", "a\nb\nc"), "c");
        assert_eq!(new_log_lines("x\ny\nz", "y\nz\nw\nv"), "w\nv", "the window moved");
        assert_eq!(new_log_lines("a", "a"), "");
    }

    #[test]
    fn tables_cut_long_and_multi_line_cells_on_characters() {
        let t = table(&["A", "B"], &[vec!["é".repeat(10), "x\ny".into()]], 5);
        assert_eq!(t, "A      B\néééé…  x…\n");
    }

    #[test]
    fn open_says_what_is_missing() {
        let v = open_view(Some("https://w.example/"), None, "generated Secret w-code-server not readable", false);
        assert!(v.contains("https://w.example/") && v.contains("not readable") && v.contains("not Ready"));
    }
}
