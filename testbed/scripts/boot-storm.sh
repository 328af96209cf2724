#!/usr/bin/env bash
# Many machines booted at once through the Compute Engine emulator (nspawn backend), then
# each machine's own verdict on its boot: `systemctl is-system-running --wait` inside it,
# its failed units, whether /run/nologin is still there, and the journal lines that say why.
# This is how the 219/CGROUP failures of concurrent boots were found (issue 8).
#
#   usage: boot-storm.sh [-n MACHINES] [-r ROUNDS] STATE_DIR     (as root)
#
# Holds nothing itself: run it under the test-bed lock (`flock /tmp/projectvm-bed.lock …`),
# since its machines use the shared test network. Starts its own emulator
# (target/debug/gce-emulator; built if missing) with STATE_DIR/gce as state, deletes every
# machine after each round and stops the emulator at the end.
# GCE_EMULATOR_BIN=PATH runs that emulator build instead (e.g. an older one, for before/after).
# Prints per round `STORM round=R machines=N degraded=D nologin=L boot_s=…` and, per degraded
# machine, its failed units and journal evidence; finally `STORM total degraded=D of N`.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
N=20
ROUNDS=1
while getopts "n:r:" o; do
  case $o in
    n) N=$OPTARG ;;
    r) ROUNDS=$OPTARG ;;
    *) echo "usage: $0 [-n MACHINES] [-r ROUNDS] STATE_DIR" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ $# -eq 1 ]] || { echo "usage: $0 [-n MACHINES] [-r ROUNDS] STATE_DIR" >&2; exit 2; }
mkdir -p "$1"
STATE=$(cd "$1" && pwd -P)/storm
mkdir -p "$STATE"
P=pvm-storm
Z=us-central1-a
log() { echo "storm: $*" >&2; }
now() { date +%s.%N; }

[[ $(id -u) = 0 ]] || { log "must run as root"; exit 1; }
rootfs=$("$HERE/build-rootfs.sh" | tail -n 1)
EMU=${GCE_EMULATOR_BIN:-$ROOT/target/debug/gce-emulator}
[[ -x $EMU || -n ${GCE_EMULATOR_BIN:-} ]] || (cd "$ROOT" && cargo build --quiet -p projectvm-testbed --bin gce-emulator)

rm -f "$STATE/addr"
umask 022
setsid "$EMU" --listen 127.0.0.1:0 --backend nspawn --rootfs "$rootfs" --state-dir "$STATE/gce" \
  --ready-file "$STATE/addr" --cleanup-on-exit >"$STATE/emulator.log" 2>&1 </dev/null &
EMU_PID=$!
cleanup() {
  set +e
  if kill -0 "$EMU_PID" 2>/dev/null; then
    kill -TERM "$EMU_PID"
    for _ in $(seq 1 1200); do kill -0 "$EMU_PID" 2>/dev/null || break; sleep 0.1; done
  fi
}
trap cleanup EXIT
for _ in $(seq 1 300); do [[ -s $STATE/addr ]] && break; sleep 0.1; done
[[ -s $STATE/addr ]] || { log "emulator did not start; see $STATE/emulator.log"; exit 1; }
URL=http://$(cat "$STATE/addr")
log "emulator at $URL (log: $STATE/emulator.log)"

api() { curl -fsS --max-time 300 "$@"; }

total=0
total_degraded=0
for r in $(seq 1 "$ROUNDS"); do
  t0=$(now)
  inserts=()
  for i in $(seq -w 1 "$N"); do
    api -X POST -H 'content-type: application/json' \
      -d "{\"name\":\"storm-$i\",\"machineType\":\"zones/$Z/machineTypes/e2-small\"}" \
      "$URL/compute/v1/projects/$P/zones/$Z/instances" >"$STATE/op-$i.json" &
    inserts+=($!)
  done
  wait "${inserts[@]}"
  for i in $(seq -w 1 "$N"); do
    op=$(jq -r .name "$STATE/op-$i.json")
    while :; do
      status=$(api -X POST "$URL/compute/v1/projects/$P/zones/$Z/operations/$op/wait" | jq -r .status) \
        || { log "the emulator stopped answering"; exit 1; }
      [[ $status == DONE ]] && break
    done
  done
  ready_s=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  inst=$(api "$URL/emulator/v1/instances")
  degraded=0
  nologin=0
  report=""
  while read -r name pid; do
    if [[ $pid == null ]]; then
      degraded=$((degraded + 1)); report+="  $name: no machine ($(api "$URL/compute/v1/projects/$P/zones/$Z/instances/$name" | jq -r .statusMessage))"$'\n'
      continue
    fi
    init=$(tr -d ' \n' <"/proc/$pid/task/$pid/children" | cut -d' ' -f1)
    state=$(timeout 120 nsenter -t "$init" -a systemctl is-system-running --wait 2>/dev/null || true)
    nl=no
    [[ -e /proc/$init/root/run/nologin ]] && { nl=yes; nologin=$((nologin + 1)); }
    if [[ $state != running || $nl == yes ]]; then
      degraded=$((degraded + 1))
      failed=$(nsenter -t "$init" -a systemctl --failed --no-legend --plain 2>/dev/null | awk '{print $1}' | tr '\n' ' ')
      why=$(nsenter -t "$init" -a journalctl -b --no-pager -o cat 2>/dev/null \
        | grep -E 'CGROUP|cgroup|Too many open files|Failed with result' | sort -u | head -n 8 | sed 's/^/      /')
      report+="  $name: $state nologin=$nl failed: $failed"$'\n'"$why"$'\n'
    fi
  done < <(jq -r '.instances[] | "\(.name) \(.machine.pid)"' <<<"$inst")
  echo "STORM round=$r machines=$N degraded=$degraded nologin=$nologin all_running_s=$ready_s"
  [[ -n $report ]] && printf '%s' "$report"
  total=$((total + N))
  total_degraded=$((total_degraded + degraded))
  api -X POST -d '{"instances":true}' "$URL/emulator/v1/reset" >/dev/null
done
echo "STORM total degraded=$total_degraded of $total"
