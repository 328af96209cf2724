#!/usr/bin/env bash
# Scale benchmark: the operator's real reconcile against N ProjectVMs and N/5 Workspaces,
# through a real kube-apiserver + etcd (testbed/scripts/control-plane.sh, loopback, free
# ports: no network namespaces, no bed lock) and the Compute Engine emulator with its `none`
# backend. The guest work (SSH steps, health and activity probes) is answered by scripted
# guests (benches/scale_operator.rs: `projectvm::run_with_vms` with a fake VM edge). The
# operator runs as its own process, so its memory and CPU are its own.
#
#   testbed/bench-scale.sh [SIZES...]          default: 100 300 1000
#   testbed/bench-scale.sh --report OUT_DIR    re-print the table of earlier runs
#
# For each size, on a fresh control plane and emulator: apply the objects at once, wait until
# every one is Ready (time: from the first apply to the last Ready condition's
# lastTransitionTime), let them settle (SETTLE, default 60 s), then measure over a rest window
# (WINDOW seconds, default 600; WINDOW_<N> overrides one size, e.g. WINDOW_100=300):
#   - operator peak RSS (VmHWM, whole run) and RSS at the end;
#   - CPU share of one core at rest: utime+stime of the operator process over the window;
#   - status writes per object-hour: delta of projectvm_status_writes_total;
#   - Compute Engine calls per object-hour, per method, as the emulator counted them (calls
#     naming an instance) and instances.list pages per zone per resync (60 s);
#   - Kubernetes API requests per second: delta of projectvm_kubernetes_requests_total, at rest
#     and over the provisioning phase.
# Then prints one table across sizes, with the targets.
#
# Tunables: OUT (results dir, default /tmp/bench-scale), PROFILE (release | debug, default
# release), BENCH_GUEST_LATENCY_MS (scripted step duration, default 200), BOOT_DELAY_MS
# (emulator STAGING→RUNNING, default 200), READY_TIMEOUT (default 2400 s), OPERATOR_FLAGS
# (extra operator flags, e.g. "--compute-qps 50").
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-/tmp/bench-scale}
PROFILE=${PROFILE:-release}
SETTLE=${SETTLE:-60}
READY_TIMEOUT=${READY_TIMEOUT:-2400}
BOOT_DELAY_MS=${BOOT_DELAY_MS:-200}
export BENCH_GUEST_LATENCY_MS=${BENCH_GUEST_LATENCY_MS:-200}
NS=bench
log() { echo "bench-scale: $(date -u +%H:%M:%S) $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

report() { # OUT_DIR
  python3 - "$1" <<'PY'
import json, sys, glob, os
rows = []
for f in sorted(glob.glob(os.path.join(sys.argv[1], "n*/result.json")), key=lambda p: int(p.split("/n")[-1].split("/")[0])):
    rows.append(json.load(open(f)))
if not rows:
    sys.exit("no results")
def col(label, fmt, key, target=""):
    vals = []
    for r in rows:
        v = key(r)
        vals.append("-" if v is None else fmt.format(v))
    print(f"{label:<46}" + "".join(f"{v:>14}" for v in vals) + (f"   target {target}" if target else ""))
print()
print(f"{'':<46}" + "".join(f"{str(r['projectvms'])+'+'+str(r['workspaces']):>14}" for r in rows))
col("objects (ProjectVMs+Workspaces)", "{}", lambda r: r["objects"])
col("operator build", "{}", lambda r: r["profile"])
col("rest window (s)", "{:.0f}", lambda r: r["window_s"])
col("time until all Ready (s)", "{:.0f}", lambda r: r["ready_s"])
col("objects Ready at the end", "{}", lambda r: r["ready_at_end"])
col("operator peak RSS, VmHWM (MiB)", "{:.1f}", lambda r: r["vmhwm_mib"], "< 150")
col("operator RSS at the end (MiB)", "{:.1f}", lambda r: r["vmrss_mib"])
col("CPU at rest (% of one core)", "{:.2f}", lambda r: r["cpu_rest_pct"], "< 2")
col("CPU while provisioning (% of one core)", "{:.1f}", lambda r: r["cpu_provision_pct"])
col("status writes / object-hour at rest", "{:.2f}", lambda r: r["status_writes_per_obj_h"], "<= 6")
col("GCE calls naming an instance / object-hour", "{:.2f}", lambda r: r["gce_per_obj_h"], "<= 1")
methods = sorted({m for r in rows for m in r["gce_per_obj_h_by_method"]})
for m in methods:
    col(f"  {m}", "{:.2f}", lambda r, m=m: r["gce_per_obj_h_by_method"].get(m, 0.0))
col("instances.list pages at rest / zone / 60 s", "{:.2f}", lambda r: r["list_pages_per_resync"])
col("  pages per list (500 per page)", "{}", lambda r: r["pages_per_list"])
col("  = lists / zone / resync", "{:.2f}", lambda r: r["lists_per_resync"], "1")
col("GCE calls while provisioning (all methods)", "{}", lambda r: r["gce_provision_total"])
col("  of them instances.list pages", "{}", lambda r: r["gce_provision_list_pages"])
col("GCE calls refused/throttled (429/403 rate)", "{}", lambda r: r["gce_rate_limited"])
col("API requests/s from the operator at rest", "{:.3f}", lambda r: r["kube_rps_rest"])
col("  of them watch starts / s", "{:.3f}", lambda r: r["kube_rest_by_verb"].get("watch", 0) / r["window_s"])
col("  of them patch / s", "{:.3f}", lambda r: r["kube_rest_by_verb"].get("patch", 0) / r["window_s"])
col("  of them get / s", "{:.3f}", lambda r: r["kube_rest_by_verb"].get("get", 0) / r["window_s"])
col("  of them update (lease) / s", "{:.3f}", lambda r: r["kube_rest_by_verb"].get("update", 0) / r["window_s"])
col("API requests/s while provisioning", "{:.1f}", lambda r: r["kube_rps_provision"])
col("reconciles / object-hour at rest", "{:.1f}", lambda r: r["reconciles_per_obj_h"])
print()
base = rows[0]
if len(rows) > 1:
    print("growth from the smallest size (x objects: x figure)")
    for key, label in [("vmhwm_mib", "peak RSS"), ("cpu_rest_pct", "CPU at rest"), ("ready_s", "time to Ready"),
                       ("kube_rps_rest", "API req/s at rest")]:
        print(f"  {label:<20}" + "".join(
            f"  {r['objects']/base['objects']:.0f}x objects: {(r[key]/base[key] if base[key] else float('nan')):.2f}x" for r in rows[1:]))
PY
}

if [[ ${1:-} == --report ]]; then
  report "${2:?usage: bench-scale.sh --report OUT_DIR}"
  exit 0
fi
SIZES=("$@")
[[ ${#SIZES[@]} -gt 0 ]] || SIZES=(100 300 1000)

# --- build ------------------------------------------------------------------------------------
cd "$ROOT"
log "building ($PROFILE): gce-emulator and the bench operator"
T=${CARGO_TARGET_DIR:-$ROOT/target}
# One cargo invocation for both: built apart, the two packages unify dependency features
# differently and each build would recompile half the dependency tree.
if [[ $PROFILE == release ]]; then
  nice -n 19 cargo build --quiet --locked --release -p projectvm -p projectvm-testbed --features projectvm/scale-bench --bins
  EMU=$T/release/gce-emulator OP=$T/release/scale-operator
else
  nice -n 19 cargo build --quiet --locked -p projectvm -p projectvm-testbed --features projectvm/scale-bench --bins
  EMU=$T/debug/gce-emulator OP=$T/debug/scale-operator
fi
[[ -x $EMU && -x ${OP:-/nonexistent} ]] || die "build did not produce the emulator ($EMU) or the bench operator (${OP:-?})"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
clk=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
kv() { grep "^$2:" "/proc/$1/status" | awk '{print $2}'; } # kB

PIDS=()
CP=""
cleanup() {
  local p
  for p in ${PIDS[@]+"${PIDS[@]}"}; do kill -TERM "$p" 2>/dev/null || true; done
  for p in ${PIDS[@]+"${PIDS[@]}"}; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$p" 2>/dev/null || true
  done
  PIDS=()
  [[ -z $CP ]] || "$ROOT/testbed/scripts/control-plane.sh" down "$CP" >/dev/null 2>&1 || true
  CP=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

manifests() { # N_PVM N_WS
  python3 - "$1" "$2" "$NS" <<'PY'
import sys
npvm, nws, ns = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
out = []
for i in range(npvm):
    out.append(f"""apiVersion: projectvm.dev/v1alpha1
kind: ProjectVM
metadata: {{name: p{i:04d}, namespace: {ns}}}
spec:
  size: small
  runStrategy: Always
  repository: {{url: 'https://git.bench.test/acme/p{i:04d}.git'}}
""")
for i in range(nws):
    out.append(f"""apiVersion: projectvm.dev/v1alpha1
kind: Workspace
metadata: {{name: w{i:04d}, namespace: {ns}}}
spec:
  size: small
  runStrategy: Always
  repository: {{url: 'https://git.bench.test/acme/w{i:04d}.git'}}
""")
print("---\n".join(out))
PY
}

metric_sum() { # FILE NAME [LABEL_FILTER_REGEX]
  python3 - "$@" <<'PY'
import sys, re
f, name = sys.argv[1], sys.argv[2]
flt = re.compile(sys.argv[3]) if len(sys.argv) > 3 else None
tot = 0.0
for l in open(f):
    if l.startswith("#"):
        continue
    m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)', l)
    if m and m.group(1) == name and (flt is None or flt.search(m.group(2) or "")):
        tot += float(m.group(3))
print(tot)
PY
}

ready_count() {
  local kind=$1
  kubectl get "$kind" -n "$NS" -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null |
    grep -c '^True$' || true
}

run_size() { # N
  local n=$1 nws=$(($1 / 5)) total work emu_addr mport op_pid emu_pid
  total=$((n + nws))
  work=$OUT/n$n
  rm -rf "$work"; mkdir -p "$work"
  local window_var=WINDOW_$n window=${WINDOW:-600}
  window=${!window_var:-$window}
  log "size $n ProjectVMs + $nws Workspaces; rest window ${window}s; results in $work"

  CP=$work/cp
  "$ROOT/testbed/scripts/control-plane.sh" up "$CP" 2>"$work/control-plane.log" || die "control plane did not start (see $work/control-plane.log)"
  eval "$("$ROOT/testbed/scripts/control-plane.sh" env "$CP")"
  kubectl apply -f "$ROOT/crds/" >/dev/null
  kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
  kubectl create namespace "$NS" >/dev/null

  setsid "$EMU" --listen 127.0.0.1:0 --backend none --boot-delay-ms "$BOOT_DELAY_MS" --last-address 10.213.255.250 \
    --ready-file "$work/emulator.addr" >"$work/emulator.log" 2>&1 </dev/null &
  emu_pid=$!; PIDS+=("$emu_pid")
  for _ in $(seq 100); do [[ -s $work/emulator.addr ]] && break; sleep 0.1; done
  emu_addr=$(<"$work/emulator.addr")
  local emu=http://$emu_addr

  mport=$(free_port)
  # shellcheck disable=SC2086
  POD_NAMESPACE=default RUST_LOG=${RUST_LOG:-info} setsid "$OP" --gcp-project bench --cluster-name bench \
    --compute-endpoint "$emu" --credentials anonymous --metrics-addr "127.0.0.1:$mport" \
    --default-zone us-central1-a --log-format json ${OPERATOR_FLAGS:-} >"$work/operator.log" 2>&1 </dev/null &
  op_pid=$!; PIDS+=("$op_pid")
  local m=http://127.0.0.1:$mport
  for _ in $(seq 300); do curl -sf "$m/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -sf "$m/readyz" >/dev/null || die "the operator is not ready (see $work/operator.log)"

  manifests "$n" "$nws" >"$work/objects.yaml"
  local t_apply cpu0 t_ready
  t_apply=$(date +%s.%N)
  cpu0=$(cpu_ticks "$op_pid")
  kubectl create -f "$work/objects.yaml" >/dev/null
  log "applied $total objects in $(python3 -c "import time; print(round(time.time()-$t_apply,1))") s; waiting for Ready"
  local deadline=$((SECONDS + READY_TIMEOUT)) r_p r_w last=-1
  while :; do
    kill -0 "$op_pid" 2>/dev/null || die "the operator exited (see $work/operator.log)"
    r_p=$(ready_count projectvms); r_w=$(ready_count workspaces)
    if [[ $((r_p + r_w)) -ne $last ]]; then log "Ready: $r_p/$n ProjectVMs, $r_w/$nws Workspaces"; last=$((r_p + r_w)); fi
    [[ $((r_p + r_w)) -lt $total ]] || break
    ((SECONDS < deadline)) || { log "not all Ready after ${READY_TIMEOUT}s; measuring anyway"; break; }
    sleep 10
  done
  t_ready=$(date +%s.%N)
  local cpu_ready; cpu_ready=$(cpu_ticks "$op_pid")
  curl -s "$m/metrics" >"$work/metrics.ready"
  curl -s "$emu/emulator/v1/requests" >"$work/emu.ready.json"
  kubectl get projectvms,workspaces -n "$NS" -o json >"$work/objects.ready.json"
  log "settling ${SETTLE}s"
  sleep "$SETTLE"

  # --- rest window ---
  curl -s "$m/metrics" >"$work/metrics.0"
  curl -s "$emu/emulator/v1/requests" >"$work/emu.0.json"
  curl -s "$emu/emulator/v1/requests/instances" >"$work/emu-inst.0.json"
  kubectl get --raw /metrics | grep '^apiserver_request_total{' >"$work/apiserver.0" || true
  local c0 t0 c1 t1
  c0=$(cpu_ticks "$op_pid"); t0=$(date +%s.%N)
  log "rest window ${window}s"
  sleep "$window"
  c1=$(cpu_ticks "$op_pid"); t1=$(date +%s.%N)
  curl -s "$m/metrics" >"$work/metrics.1"
  curl -s "$emu/emulator/v1/requests" >"$work/emu.1.json"
  curl -s "$emu/emulator/v1/requests/instances" >"$work/emu-inst.1.json"
  kubectl get --raw /metrics | grep '^apiserver_request_total{' >"$work/apiserver.1" || true
  local hwm rss
  hwm=$(kv "$op_pid" VmHWM); rss=$(kv "$op_pid" VmRSS)
  r_p=$(ready_count projectvms); r_w=$(ready_count workspaces)

  python3 - "$work" "$n" "$nws" "$PROFILE" "$t_apply" "$t_ready" "$t0" "$t1" "$c0" "$c1" "$cpu0" "$cpu_ready" "$clk" \
    "$hwm" "$rss" "$((r_p + r_w))" <<'PY'
import json, sys, re, math, datetime, collections
(work, n, nws, profile, t_apply, t_ready, t0, t1, c0, c1, cpu0, cpu_ready, clk, hwm, rss, ready_end) = sys.argv[1:]
n, nws, clk = int(n), int(nws), int(clk)
t_apply, t_ready, t0, t1 = map(float, (t_apply, t_ready, t0, t1))
objs = n + nws
win = t1 - t0
hours = win / 3600
def metrics(f):
    out = collections.defaultdict(float)
    for l in open(f"{work}/{f}"):
        if l.startswith("#"): continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)', l)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out[(m.group(1), tuple(sorted(labels.items())))] += float(m.group(3))
    return out
def delta(a, b, name, **match):
    tot = 0.0
    for (nm, labels), v in b.items():
        if nm != name: continue
        d = dict(labels)
        if any(d.get(k) != val for k, val in match.items()): continue
        tot += v - a.get((nm, labels), 0.0)
    return tot
def by_label(a, b, name, label):
    out = collections.Counter()
    for (nm, labels), v in b.items():
        if nm != name: continue
        out[dict(labels).get(label, "")] += v - a.get((nm, labels), 0.0)
    return dict(out)
m0, m1, mr = metrics("metrics.0"), metrics("metrics.1"), metrics("metrics.ready")
empty = collections.defaultdict(float)
ready_times = []
for o in json.load(open(f"{work}/objects.ready.json"))["items"]:
    for c in (o.get("status") or {}).get("conditions", []):
        if c["type"] == "Ready" and c["status"] == "True":
            ready_times.append(datetime.datetime.fromisoformat(c["lastTransitionTime"].replace("Z", "+00:00")).timestamp())
last_ready = max(ready_times) if len(ready_times) == objs else t_ready
e0, e1 = json.load(open(f"{work}/emu.0.json")), json.load(open(f"{work}/emu.1.json"))
er = json.load(open(f"{work}/emu.ready.json"))
i0, i1 = json.load(open(f"{work}/emu-inst.0.json")), json.load(open(f"{work}/emu-inst.1.json"))
def methods(x):
    return x.get("methods", x)
def inst(x):
    return x.get("instances", x)
per_method = collections.Counter()
for key, ms in inst(i1).items():
    for meth, v in ms.items():
        per_method[meth] += v - inst(i0).get(key, {}).get(meth, 0)
list_pages = methods(e1).get("instances.list", 0) - methods(e0).get("instances.list", 0)
pages_per_list = max(1, math.ceil(objs / 500))
resyncs = win / 60.0
kube_rest = by_label(m0, m1, "projectvm_kubernetes_requests_total", "verb")
kube_prov = sum(by_label(empty, mr, "projectvm_kubernetes_requests_total", "verb").values())
rate_limited = sum(v for (nm, labels), v in m1.items() if nm == "projectvm_compute_requests_total" and dict(labels).get("code") in ("429", "403", "throttled"))
res = {
    "projectvms": n, "workspaces": nws, "objects": objs, "profile": profile, "window_s": win,
    "ready_s": last_ready - t_apply, "ready_at_end": int(ready_end),
    "vmhwm_mib": int(hwm) / 1024, "vmrss_mib": int(rss) / 1024,
    "cpu_rest_pct": 100 * (int(c1) - int(c0)) / clk / win,
    "cpu_provision_pct": 100 * (int(cpu_ready) - int(cpu0)) / clk / max(1e-9, t_ready - t_apply),
    "status_writes_per_obj_h": delta(m0, m1, "projectvm_status_writes_total") / objs / hours,
    "gce_per_obj_h": sum(per_method.values()) / objs / hours,
    "gce_per_obj_h_by_method": {k: v / objs / hours for k, v in per_method.items() if v},
    "list_pages_per_resync": list_pages / resyncs, "pages_per_list": pages_per_list,
    "lists_per_resync": list_pages / pages_per_list / resyncs,
    "gce_provision_total": sum(methods(er).values()),
    "gce_provision_list_pages": methods(er).get("instances.list", 0),
    "gce_rate_limited": rate_limited,
    "kube_rps_rest": sum(kube_rest.values()) / win, "kube_rest_by_verb": kube_rest,
    "kube_rps_provision": kube_prov / max(1e-9, t_ready - t_apply),
    "reconciles_per_obj_h": delta(m0, m1, "projectvm_reconciles_total") / objs / hours,
}
# What the API server served at rest, by resource and verb (the operator is its only busy
# client then; kube-controller-manager adds little).
def apiserver(f):
    out = collections.Counter()
    try:
        for l in open(f"{work}/{f}"):
            m = re.match(r'^apiserver_request_total(\{[^}]*\})\s+(\S+)', l)
            if m:
                d = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
                out[f"{d.get('verb')} {d.get('resource')}{'/' + d['subresource'] if d.get('subresource') else ''}"] += float(m.group(2))
    except FileNotFoundError:
        pass
    return out
a0, a1 = apiserver("apiserver.0"), apiserver("apiserver.1")
res["apiserver_rest_per_s"] = {k: round((a1[k] - a0.get(k, 0)) / win, 3) for k in a1 if a1[k] - a0.get(k, 0) > 0}
json.dump(res, open(f"{work}/result.json", "w"), indent=1)
print(json.dumps(res, indent=1))
PY
  cleanup
}

mkdir -p "$OUT"
for n in "${SIZES[@]}"; do
  run_size "$n"
done
report "$OUT"
