#!/usr/bin/env bash
# Real-machine benchmark: N ProjectVMs (default 50, size small, the bed's public demo
# repository) applied at once on a bed (testbed/bed.sh up STATE_DIR): every instance is a
# systemd-nspawn machine, every step real SSH, apt and git. Prints the time until the first,
# the median and the last object is Ready, how many instances the emulator holds (must be N:
# no duplicates, none missing), the machines running, the host's lowest MemAvailable and the
# operator's peak RSS while it ran. The namespace is deleted at the end (its instances with it).
#
#   testbed/bench-machines.sh STATE_DIR [N=50]
#
# Run it under the bed lock, with up and down in the same command, e.g.
#   flock /tmp/projectvm-bed.lock bash -c 'testbed/bed.sh up /tmp/bed-m && testbed/bench-machines.sh /tmp/bed-m 50; testbed/bed.sh down /tmp/bed-m'
# READY_TIMEOUT (default 1500 s); MEM_FLOOR_MIB (default 2048): below this MemAvailable the
# run stops early (deleting the objects) rather than push the host into the OOM killer.
set -euo pipefail
STATE=${1:?usage: bench-machines.sh STATE_DIR [N=50]}
N=${2:-50}
READY_TIMEOUT=${READY_TIMEOUT:-1500}
MEM_FLOOR_MIB=${MEM_FLOOR_MIB:-2048}
NS=bench-machines
REPO=https://git.pvm.test/public/demo.git
[[ $N =~ ^[0-9]+$ && $N -ge 1 ]] || { echo "N must be a positive integer" >&2; exit 2; }
# shellcheck disable=SC1091
source "$STATE/env"
log() { echo "bench-machines [$(date -u +%T)]: $*" >&2; }
work=$(mktemp -d /tmp/bench-machines.XXXXXX)
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  log "deleting namespace $NS"
  timeout 600 kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=540s >/dev/null 2>&1 \
    || log "namespace $NS not gone within 540s"
  log "raw data in $work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

OP_PID=$(cat "$STATE/operator.pid")
mem_avail() { awk '/^MemAvailable/ {print int($2/1024)}' /proc/meminfo; }
kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=240s >/dev/null
kubectl create namespace "$NS" >/dev/null
for i in $(seq 1 "$N"); do
  printf -- 'apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata: {name: m-%03d, namespace: %s}\nspec:\n  size: small\n  repository: {url: %s}\n---\n' "$i" "$NS" "$REPO"
done >"$work/objects.yaml"
min_mem=$(mem_avail)
log "applying $N ProjectVMs at once (MemAvailable ${min_mem} MiB)"
t_apply=$(date +%s.%N)
kubectl create -f "$work/objects.yaml" >/dev/null
deadline=$((SECONDS + READY_TIMEOUT))
last=-1 stopped_early=""
while :; do
  ready=$(kubectl get projectvms -n "$NS" -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$' || true)
  m=$(mem_avail); ((m < min_mem)) && min_mem=$m
  if ((ready != last)); then log "$ready/$N Ready; MemAvailable $m MiB"; last=$ready; fi
  ((ready < N)) || break
  if ((m < MEM_FLOOR_MIB)); then stopped_early="MemAvailable fell to $m MiB"; log "stopping early: $stopped_early"; break; fi
  ((SECONDS < deadline)) || { stopped_early="not all Ready in ${READY_TIMEOUT}s"; log "$stopped_early"; break; }
  sleep 5
done
kubectl get projectvms -n "$NS" -o json >"$work/objects.json"
curl -fsS -m 30 "$EMULATOR_URL/emulator/v1/instances" >"$work/instances.json"
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$OP_PID/status" 2>/dev/null || echo 0)
python3 - "$work" "$N" "$t_apply" "$min_mem" "$hwm" "$NS" "$stopped_early" "$(readlink "/proc/$OP_PID/exe" || echo '?')" <<'PY'
import json, sys, datetime, statistics
work, n, t_apply, min_mem, hwm, ns, early, opbin = sys.argv[1:]
n, t_apply = int(n), float(t_apply)
times, not_ready = [], []
for o in json.load(open(f"{work}/objects.json"))["items"]:
    c = [x for x in (o.get("status") or {}).get("conditions", []) if x["type"] == "Ready"]
    if c and c[0]["status"] == "True":
        t = datetime.datetime.fromisoformat(c[0]["lastTransitionTime"].replace("Z", "+00:00")).timestamp()
        times.append(t - t_apply)
    else:
        not_ready.append(o["metadata"]["name"] + ": " + ((c[0].get("reason", "") + " " + c[0].get("message", "")[:120]) if c else "no Ready condition"))
raw = json.load(open(f"{work}/instances.json"))
items = raw if isinstance(raw, list) else raw.get("instances", raw.get("items", []))
running = [i for i in items if ((i.get("machine") or {}).get("state") == "running")]
rows = [
    ("ProjectVMs applied at once", n),
    ("Ready", len(times)),
    ("time to first Ready (s)", f"{min(times):.0f}" if times else "-"),
    ("time to median Ready (s)", f"{statistics.median(times):.0f}" if times else "-"),
    ("time to last Ready (s)", f"{max(times):.0f}" if len(times) == n else "- (not all Ready)"),
    ("instances in the emulator (fresh bed)", len(items)),
    ("machines running", len(running)),
    ("lowest MemAvailable (MiB)", min_mem),
    ("operator peak RSS, VmHWM (MiB)", f"{int(hwm)/1024:.1f}"),
    ("operator binary", opbin),
]
print()
for k, v in rows:
    print(f"{k:<34}{v}")
if early:
    print(f"{'stopped early':<34}{early}")
for x in not_ready[:10]:
    print("  not Ready:", x)
json.dump(dict(rows), open(f"{work}/result.json", "w"), indent=1, default=str)
PY
