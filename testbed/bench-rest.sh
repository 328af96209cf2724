#!/usr/bin/env bash
# Benchmark: what Ready objects cost at rest. Applies N objects (half Workspaces, half
# ProjectVMs, size small, on the bed's public demo repository) in namespace bench-rest, waits
# until they are Ready, lets them settle, then over a window counts
#   - status writes: every MODIFIED watch event of each object (its own updates — a no-op
#     update makes none), split by what changed (status / metadata / spec, and which status
#     fields), next to the write requests the API server counted for the two kinds
#     (apiserver_request_total; no-op writes included);
#   - reconciles: delta of the operator's projectvm_reconciles_total, per kind;
#   - Compute API calls: delta of the emulator's /emulator/v1/requests, per method; "naming
#     an object's instance" are the calls that name one of the bench objects' instances (zone
#     operations count for the instance they target), "shared" the rest (zone lists,
#     aggregatedList), which do not grow with the number of objects;
# and prints them per object-hour (count / objects measured / window hours; per kind: over
# that kind's objects). Needs a bed: testbed/bed.sh up STATE_DIR.
#
#   testbed/bench-rest.sh STATE_DIR [N=20] [WINDOW_SECONDS=300]
#   testbed/bench-rest.sh --report DATA_DIR      re-print the table of a run kept with KEEP_WORK
#
# Objects are applied in batches (APPLY_BATCH, default 5, APPLY_GAP seconds apart, default 5:
# many machines booting at once sometimes come up degraded). Objects not Ready within
# READY_TIMEOUT (default 600 s), or once no object has become Ready for READY_STALL seconds
# (default 180), are deleted before the window and left out of the figures (the report names
# them). SETTLE (default 30 s) passes between all-Ready and the window. The namespace is
# deleted at the end, also on failure or Ctrl-C. KEEP_WORK=1 keeps the raw snapshots and
# watch events (the directory is logged). The operator requeues a Ready object about once a
# minute, so a window much shorter than a few minutes says little.
set -euo pipefail
usage="usage: bench-rest.sh STATE_DIR [N=20] [WINDOW_SECONDS=300] | bench-rest.sh --report DATA_DIR"

# --- the table, from a data directory -------------------------------------------------------
report() { # DATA_DIR
  python3 - "$1" <<'PY'
import json, re, sys, collections
work = sys.argv[1]
rd = lambda p: open(f"{work}/{p}").read()
P = json.loads(rd("params.json"))
t0, t1 = float(rd("start.t")), float(rd("end.t"))
secs = t1 - t0
hours = secs / 3600.0
objects = sorted({l.split()[0].lower() for l in rd("instances.txt").splitlines() if l.strip()})
measured = len(objects)
by_kind = collections.Counter(o.split("/")[0] for o in objects)

# status writes, from the watch events stamped inside the window
writes, parts, fields, other_events = (collections.Counter() for _ in range(4))
def flat(v, pre=""):
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            out.update(flat(x, f"{pre}.{k}" if pre else k))
        return out
    if isinstance(v, list) and v and all(isinstance(x, dict) and "type" in x for x in v):
        out = {}
        for x in v:  # conditions: keyed by type
            out.update(flat({k: y for k, y in x.items() if k != "type"}, f"{pre}[{x['type']}]"))
        return out
    return {pre: v}
def meta(o):
    m = dict(o.get("metadata") or {})
    for k in ("resourceVersion", "managedFields"):
        m.pop(k, None)
    return m
for plural in ("workspaces", "projectvms"):
    last = {}
    for line in open(f"{work}/watch-{plural}.jsonl"):
        ev = json.loads(line)
        o = ev.get("object") or {}
        name = f"{o.get('kind', plural).lower()}/{(o.get('metadata') or {}).get('name', '?')}"
        inside = t0 <= ev["t"] <= t1
        if ev["type"] == "MODIFIED" and inside:
            writes[name] += 1
            prev = last.get(name, {})
            if prev.get("status") != o.get("status"):
                parts["status"] += 1
                a, b = flat(prev.get("status") or {}), flat(o.get("status") or {})
                for k in sorted(set(a) | set(b)):
                    if a.get(k) != b.get(k):
                        fields[k] += 1
            if meta(prev) != meta(o):
                parts["metadata"] += 1
            if prev.get("spec") != o.get("spec"):
                parts["spec"] += 1
        elif inside and ev["type"] != "MODIFIED":
            other_events[ev["type"]] += 1
        if o:
            last[name] = o

# write requests the API server counted (no-op writes included)
def apiserver(p):
    c = collections.Counter()
    for line in rd(p).splitlines():
        m = re.match(r"apiserver_request_total\{(.*)\} (\S+)$", line)
        if not m:
            continue
        lab = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if lab.get("group") == "projectvm.dev" and lab.get("resource") in ("workspaces", "projectvms") \
                and lab.get("verb") in ("UPDATE", "PATCH", "APPLY") and not lab.get("dry_run"):
            c[(lab["resource"], lab.get("subresource") or "-", lab["verb"], lab.get("code", "?"))] += float(m.group(2))
    return c
aw0, aw1 = apiserver("start.apiserver"), apiserver("end.apiserver")
aw = {k: aw1[k] - aw0.get(k, 0) for k in aw1 if aw1[k] - aw0.get(k, 0) > 0}

# reconciles, per kind label
def metric(p, name):
    c = {}
    for line in rd(p).splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m:
            kind = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))).get("kind", m.group(1))
            c[kind] = c.get(kind, 0) + float(m.group(2))
    return c
rec = {}
for name in ("projectvm_reconciles_total", "projectvm_reconcile_errors_total"):
    a, b = metric("start.metrics", name), metric("end.metrics", name)
    rec[name] = {k: b[k] - a.get(k, 0) for k in b}

# Compute API calls
g0, g1 = json.loads(rd("start.gce.json")), json.loads(rd("end.gce.json"))
gce = {k: g1[k] - g0.get(k, 0) for k in g1 if g1[k] - g0.get(k, 0) > 0}
gi0, gi1 = json.loads(rd("start.gce-instances.json")), json.loads(rd("end.gce-instances.json"))
ours = set()
for l in rd("instances.txt").splitlines():
    f = l.split()
    if len(f) == 3:
        ours.add(f[1].rsplit("/", 1)[-1] + "/" + f[2])
per_obj = collections.Counter()
for inst, ms in gi1.items():
    if inst.split("/", 1)[-1] in ours:
        for m, v in ms.items():
            d = v - gi0.get(inst, {}).get(m, 0)
            if d > 0:
                per_obj[m] += d
gce_total, obj_total = sum(gce.values()), sum(per_obj.values())

print(f"bench-rest: {measured} Ready objects measured of {P['n']} applied "
      f"({(P['n'] + 1) // 2} Workspaces, {P['n'] // 2} ProjectVMs, size small; measured: "
      + ", ".join(f"{v} {k}s" for k, v in sorted(by_kind.items())) + ")")
print(f"  operator: {P.get('operator', '?')}")
print(f"  {measured} Ready {P['t_ready']}s after apply (polled every {P.get('poll', 5)} s); window {secs:.1f}s, "
      f"after {P['settle']}s settle; {P['ready_after']} still Ready at the end")
if P["not_ready"].strip():
    print(f"  left out (not Ready in time, deleted before the window): {' '.join(P['not_ready'].split())}")
if not ours:
    print("  warning: no object reports status.instance.name/zone; no GCE call is attributed to an object")
print()
print(f"{'per object-hour':<48} {'rate':>9} {'raw count':>10}")
def row(label, c, n=measured):
    print(f"{label:<48} {c / n / hours if n else float('nan'):>9.1f} {c:>10.0f}")
def per_kind(counter_of):
    for kind in sorted(by_kind):
        row(f"  {kind} ({by_kind[kind]} objects)", counter_of(kind), by_kind[kind])
total_writes = sum(writes.values())
row("status writes (MODIFIED watch events)", total_writes)
per_kind(lambda k: sum(v for o, v in writes.items() if o.startswith(k + "/")))
row("  that changed .status", parts["status"])
row("  that changed metadata", parts["metadata"])
row("  that changed .spec", parts["spec"])
row("write requests counted by the API server", sum(aw.values()))
row("reconciles", sum(rec["projectvm_reconciles_total"].values()))
per_kind(lambda k: rec["projectvm_reconciles_total"].get(k, 0))
row("reconcile errors", sum(rec["projectvm_reconcile_errors_total"].values()))
row("GCE calls, total", gce_total)
row("GCE calls naming an object's instance", obj_total)
row("GCE calls shared (zone lists, aggregatedList)", gce_total - obj_total)
print()
print(f"GCE calls by method in the window {'per obj-h':>9} {'raw count':>10}")
for m in sorted(set(gce) | set(per_obj)):
    print(f"  {m:<46} {gce.get(m, 0) / measured / hours:>9.1f} {gce.get(m, 0):>10.0f}"
          f"  (naming an instance: {per_obj.get(m, 0):.0f})")
if not gce:
    print("  (none)")
print()
print("API server write requests for the two kinds (resource/subresource/verb/code; cluster-wide,")
print("only the bench objects exist during the run)")
for k, v in sorted(aw.items()):
    print(f"  {'/'.join(k):<46} {v / measured / hours:>9.1f} {v:>10.0f}")
if not aw:
    print("  (none)")
print()
counts = sorted(writes.get(o, 0) for o in objects) or [0]
print(f"status writes per object in the window (min / median / max): "
      f"{counts[0]} / {counts[len(counts) // 2]} / {counts[-1]}")
if fields:
    print("status fields that changed, in how many writes (top 12):")
    for k, v in fields.most_common(12):
        print(f"  {k:<56} {v:>6}")
if other_events:
    print("other watch events in the window:", dict(other_events))
try:
    cpu = (float(rd("end.cpu")) - float(rd("start.cpu"))) / P["clk_tck"]
    print(f"operator process: {cpu:.1f} CPU-s in the window ({100 * cpu / secs:.1f}% of a core), "
          f"RSS {int(rd('end.rss')) / 1024:.0f} MiB at the end")
except (OSError, ValueError):
    pass
PY
}

if [[ ${1:-} == --report ]]; then
  [[ -n ${2:-} && -f $2/params.json ]] || { echo "$usage" >&2; exit 2; }
  report "$2"
  exit
fi

STATE=${1:?$usage}
N=${2:-20}
WINDOW=${3:-300}
READY_TIMEOUT=${READY_TIMEOUT:-600}
READY_STALL=${READY_STALL:-180}
SETTLE=${SETTLE:-30}
APPLY_BATCH=${APPLY_BATCH:-5}
APPLY_GAP=${APPLY_GAP:-5}
NS=bench-rest
REPO=https://git.pvm.test/public/demo.git
[[ $N =~ ^[0-9]+$ && $N -ge 1 ]] || { echo "N must be a positive integer" >&2; exit 2; }
[[ $WINDOW =~ ^[0-9]+$ && $WINDOW -ge 10 ]] || { echo "WINDOW_SECONDS must be an integer >= 10" >&2; exit 2; }
[[ $APPLY_BATCH =~ ^[0-9]+$ && $APPLY_BATCH -ge 1 ]] || { echo "APPLY_BATCH must be >= 1" >&2; exit 2; }
# shellcheck disable=SC1091
source "$STATE/env"
log() { echo "bench-rest [$(date +%T)]: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
work=$(mktemp -d /tmp/bench-rest.XXXXXX)
watchers=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${watchers[@]}"; do kill "$p" 2>/dev/null || true; done
  log "deleting namespace $NS"
  timeout 300 kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=240s >/dev/null 2>&1 \
    || log "namespace $NS not gone within 240s (the operator's finalizers may still be running)"
  if [[ -n ${KEEP_WORK:-} ]]; then log "raw data kept in $work (bench-rest.sh --report $work)"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

curl -fsS -m 5 "$EMULATOR_URL/emulator/v1/requests" >/dev/null \
  || die "the emulator at $EMULATOR_URL has no /emulator/v1/requests (rebuild gce-emulator)"
curl -fsS -m 5 "$METRICS_URL/metrics" >/dev/null || die "no operator metrics at $METRICS_URL/metrics"
OP_PID=$(cat "$STATE/operator.pid" 2>/dev/null || true)
OP_BIN=$(readlink "/proc/$OP_PID/exe" 2>/dev/null || echo "?")

# --- snapshots -------------------------------------------------------------------------
snapshot() { # prefix
  curl -fsS -m 10 "$EMULATOR_URL/emulator/v1/requests" >"$work/$1.gce.json"
  curl -fsS -m 10 "$EMULATOR_URL/emulator/v1/requests/instances" >"$work/$1.gce-instances.json"
  curl -fsS -m 10 "$METRICS_URL/metrics" >"$work/$1.metrics"
  kubectl get --raw /metrics 2>/dev/null | grep '^apiserver_request_total{' >"$work/$1.apiserver" || true
  if [[ -n $OP_PID && -r /proc/$OP_PID/stat ]]; then
    awk '{print $14 + $15}' "/proc/$OP_PID/stat" >"$work/$1.cpu"
    awk '/^VmRSS/ {print $2}' "/proc/$OP_PID/status" >"$work/$1.rss"
  fi
  date +%s.%N >"$work/$1.t"
}

# --- objects -----------------------------------------------------------------------------
kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=240s >/dev/null
kubectl create namespace "$NS" >/dev/null
n_ws=$(( (N + 1) / 2 ))
n_pvm=$(( N - n_ws ))
mkdir -p "$work/objects"
for i in $(seq 1 "$N"); do # alternate the kinds, so every batch has both
  if (( i % 2 == 1 )); then
    printf -- 'apiVersion: projectvm.dev/v1alpha1\nkind: Workspace\nmetadata: {name: ws-%02d}\nspec:\n  size: small\n  repository: {url: %s}\n' $(( (i + 1) / 2 )) "$REPO"
  else
    printf -- 'apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata: {name: pvm-%02d}\nspec:\n  size: small\n  repository: {url: %s}\n' $(( i / 2 )) "$REPO"
  fi >"$work/objects/$(printf %03d "$i").yaml"
done
log "applying $n_ws Workspaces and $n_pvm ProjectVMs in $NS, $APPLY_BATCH at a time"
t_apply=$(date +%s)
files=("$work"/objects/*.yaml)
for (( i = 0; i < N; i += APPLY_BATCH )); do
  (( i == 0 )) || sleep "$APPLY_GAP"
  args=()
  for f in "${files[@]:i:APPLY_BATCH}"; do args+=(-f "$f"); done
  kubectl -n "$NS" apply "${args[@]}" >/dev/null
done

cat >"$work/ready.py" <<'PY'
import json, sys
for o in json.load(sys.stdin)["items"]:
    c = {x["type"]: x["status"] for x in (o.get("status") or {}).get("conditions") or []}
    print(o["kind"].lower() + "/" + o["metadata"]["name"], c.get("Ready", "-"))
PY
ready_list() { # prints "kind/name True|False|-" lines
  kubectl -n "$NS" get workspaces.projectvm.dev,projectvms.projectvm.dev -o json | python3 "$work/ready.py"
}
qualified() { local o=$1; o=${o/#workspace\//workspaces.projectvm.dev/}; echo "${o/#projectvm\//projectvms.projectvm.dev/}"; }
deadline=$(( t_apply + READY_TIMEOUT ))
last_ready=-1
t_last_change=$(date +%s)
t_ready=0
while :; do
  ready=$(ready_list | awk '$2 == "True"' | wc -l)
  now=$(date +%s)
  if (( ready != last_ready )); then
    (( ready > 0 )) && t_ready=$(( now - t_apply ))
    last_ready=$ready t_last_change=$now
    log "$ready/$N Ready"
  fi
  (( ready == N )) && break
  (( now < deadline )) || { log "not all Ready after ${READY_TIMEOUT}s"; break; }
  (( ready == 0 || now - t_last_change < READY_STALL )) || { log "no new Ready object for ${READY_STALL}s"; break; }
  sleep 5
done
not_ready=$(ready_list | awk '$2 != "True" {print $1}')
if [[ -n $not_ready ]]; then
  # shellcheck disable=SC2086
  log "left out: $(echo $not_ready)"
  kubectl -n "$NS" get workspaces.projectvm.dev,projectvms.projectvm.dev -o wide >&2 || true
  for o in $not_ready; do
    kubectl -n "$NS" get "$(qualified "$o")" \
      -o jsonpath='{.metadata.name}: {range .status.conditions[?(@.status!="True")]}{.type} {.reason}: {.message}; {end}{"\n"}' >&2 || true
    kubectl -n "$NS" delete "$(qualified "$o")" --wait=false >/dev/null 2>&1 || true
  done
  for o in $not_ready; do kubectl -n "$NS" wait --for=delete "$(qualified "$o")" --timeout=180s >/dev/null 2>&1 || true; done
fi
measured=$(ready_list | awk '$2 == "True"' | wc -l)
(( measured > 0 )) || die "no object became Ready"
log "$measured/$N Ready ${t_ready}s after apply; settling ${SETTLE}s"
kubectl -n "$NS" get workspaces.projectvm.dev,projectvms.projectvm.dev \
  -o jsonpath='{range .items[*]}{.kind}/{.metadata.name} {.status.instance.zone} {.status.instance.name}{"\n"}{end}' \
  >"$work/instances.txt"

# --- watchers: one per kind, from a list's resourceVersion; every event stamped on arrival ---
cat >"$work/watch.py" <<'PY'
import json, subprocess, sys, time
ns, plural, out = sys.argv[1:4]
base = f"/apis/projectvm.dev/v1alpha1/namespaces/{ns}/{plural}"
lst = json.loads(subprocess.check_output(["kubectl", "get", "--raw", base]))
with open(out, "w", buffering=1) as f:
    for o in lst["items"]:
        f.write(json.dumps({"t": time.time(), "type": "INITIAL", "object": o}) + "\n")
    f.write(json.dumps({"t": time.time(), "type": "WATCHING"}) + "\n")
    rv = lst["metadata"]["resourceVersion"]
    p = subprocess.Popen(["kubectl", "get", "--raw", f"{base}?watch=true&resourceVersion={rv}&timeoutSeconds=3600"],
                         stdout=subprocess.PIPE, text=True)
    for line in p.stdout:
        line = line.strip()
        if line:
            ev = json.loads(line)
            f.write(json.dumps({"t": time.time(), "type": ev.get("type"), "object": ev.get("object")}) + "\n")
    f.write(json.dumps({"t": time.time(), "type": "ENDED", "rc": p.wait()}) + "\n")
PY
for plural in workspaces projectvms; do
  python3 "$work/watch.py" "$NS" "$plural" "$work/watch-$plural.jsonl" &
  watchers+=($!)
done
for plural in workspaces projectvms; do
  for _ in $(seq 1 60); do grep -q '"WATCHING"' "$work/watch-$plural.jsonl" 2>/dev/null && break; sleep 0.5; done
  grep -q '"WATCHING"' "$work/watch-$plural.jsonl" 2>/dev/null || die "the $plural watch did not start"
done
sleep "$SETTLE"

# --- the window --------------------------------------------------------------------------
snapshot start
log "measuring for ${WINDOW}s"
sleep "$WINDOW"
snapshot end
sleep 2 # let events of the last instant arrive
for p in "${watchers[@]}"; do kill -0 "$p" 2>/dev/null || die "a watcher died during the window"; done
for plural in workspaces projectvms; do
  ! grep -q '"ENDED"' "$work/watch-$plural.jsonl" || die "the $plural watch ended during the window"
done
ready_after=$(ready_list | awk '$2 == "True"' | wc -l)
python3 - "$work/params.json" <<PY
import json, sys
json.dump({"n": $N, "settle": $SETTLE, "t_ready": $t_ready, "ready_after": $ready_after,
           "not_ready": """$not_ready""", "clk_tck": $(getconf CLK_TCK), "operator": "$OP_BIN", "poll": 5},
          open(sys.argv[1], "w"))
PY

# --- report ------------------------------------------------------------------------------
report "$work"
