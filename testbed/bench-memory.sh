#!/usr/bin/env bash
# Benchmark: the operator's peak resident memory while one ProjectVM's prerequisites script
# prints 200 MB on one line and fails, for one or two operator binaries on the same bed.
# Prints a table. Needs a bed: testbed/bed.sh up STATE_DIR.
#
#   testbed/bench-memory.sh STATE_DIR [OTHER_OPERATOR_BIN]
#
# With OTHER_OPERATOR_BIN (e.g. an older commit's build), both are measured, that one first;
# the bed's own operator is restarted afterwards.
set -euo pipefail
STATE=${1:?usage: bench-memory.sh STATE_DIR [OTHER_OPERATOR_BIN]}
OTHER=${2:-}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC1091
source "$STATE/env"
NS=bench-memory

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$(cat "$STATE/operator.pid")/status" 2>/dev/null || echo 0; }

measure() { # label
  local label=$1 before peak=0 r reason="" deadline
  kubectl delete namespace $NS --wait=true --timeout=180s >/dev/null 2>&1 || true
  kubectl create namespace $NS >/dev/null
  sleep 5
  before=$(rss_kib)
  kubectl -n $NS apply -f - >/dev/null <<'YAML'
apiVersion: projectvm.dev/v1alpha1
kind: ProjectVM
metadata: {name: loud}
spec:
  size: small
  repository: {url: https://git.pvm.test/public/demo.git}
  prerequisites:
    script: "head -c 200000000 /dev/zero | tr '\\0' x; echo; echo THE-END; exit 1"
YAML
  deadline=$(( $(date +%s) + 300 ))
  while (( $(date +%s) < deadline )); do
    r=$(rss_kib); (( r > peak )) && peak=$r
    reason=$(kubectl -n $NS get pvm loud -o jsonpath='{.status.conditions[?(@.type=="PrerequisitesInstalled")].reason}' 2>/dev/null || true)
    [[ $reason == PrerequisitesFailed ]] && break
    sleep 0.1
  done
  # The failure message is read right after the log tail: keep sampling a moment longer.
  for _ in $(seq 1 20); do r=$(rss_kib); (( r > peak )) && peak=$r; sleep 0.1; done
  printf '%-12s %10d %10d %10d  %s\n' "$label" $((before / 1024)) $((peak / 1024)) $(((peak - before) / 1024)) "${reason:-not reached}"
  kubectl delete namespace $NS --wait=true --timeout=180s >/dev/null 2>&1 || true
}

printf '%-12s %10s %10s %10s  %s\n' operator "RSS MiB" "peak MiB" "growth" "condition reason"
if [[ -n $OTHER ]]; then
  PROJECTVM_OPERATOR_BIN=$OTHER "$HERE/bed.sh" operator-start "$STATE" >/dev/null 2>&1
  measure before
fi
"$HERE/bed.sh" operator-start "$STATE" >/dev/null 2>&1
measure after
