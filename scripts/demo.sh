#!/usr/bin/env bash
# Runs the operator's main job end to end on the embedded default: a local control plane,
# the Compute Engine emulator whose instances are real machines, and the operator; then
# applies the public Workspace example and prints its conditions as they turn True and the
# URL to open. Needs root (it re-runs itself with sudo when started as a user). Each stage
# prints one line; what the stages print (apt, the Go and Rust builds) goes to a log file.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
as_root "$@"
tool_path
STATE=${PROJECTVM_DEMO_STATE:-/tmp/projectvm-demo}
mkdir -p "$STATE"
LOG=$STATE/demo.log
: >"$LOG"
echo "projectvm demo: details in $LOG"

stage "host packages (apt, Go, Node)" "$LOG" testbed/scripts/install-host-deps.sh
stage "test bed (control plane, emulator, machines, operator)" "$LOG" testbed/bed.sh up "$STATE"
# shellcheck disable=SC1091
source "$STATE/env"
kubectl apply -f examples/workspace-public.yaml >>"$LOG"
name=$(kubectl apply -f examples/workspace-public.yaml --dry-run=client -o jsonpath='{.metadata.name}')
ns=$(kubectl apply -f examples/workspace-public.yaml --dry-run=client -o jsonpath='{.metadata.namespace}')
ns=${ns:-default}
echo "waiting for workspace $ns/$name"
seen=""
deadline=$(( $(date +%s) + 600 ))
while (( $(date +%s) < deadline )); do
  line=$(kubectl -n "$ns" get ws "$name" -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}' 2>/dev/null || true)
  for c in $line; do
    case " $seen " in *" $c "*) ;; *) printf '%s  %-22s True\n' "$(date +%T)" "$c"; seen="$seen $c" ;; esac
  done
  case " $seen " in *" Ready "*) break ;; esac
  sleep 1
done
kubectl -n "$ns" get ws "$name"
url=$(kubectl -n "$ns" get ws "$name" -o jsonpath='{.status.url}')
echo
echo "Workspace URL: $url"
secret=$(kubectl -n "$ns" get ws "$name" -o jsonpath='{.status.objects.passwordSecret}')
echo "Password:      kubectl -n $ns get secret ${secret:-$name-code-server} -o jsonpath='{.data.password}' | base64 -d"
echo "Tear down:     testbed/bed.sh down $STATE"
case " $seen " in *" Ready "*) ;; *) echo "workspace did not become Ready in time"; kubectl -n "$ns" describe ws "$name"; exit 1 ;; esac
