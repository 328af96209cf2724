#!/usr/bin/env bash
# Benchmark: time from `kubectl apply` to Ready for a Workspace, split by step, next to the
# same steps run directly by this script (no operator) on the same test bed — the baseline
# for the controller's overhead. Prints a table. Needs a bed: testbed/bed.sh up STATE_DIR.
#
#   testbed/bench.sh STATE_DIR [ROUNDS]
set -euo pipefail
STATE=${1:?usage: bench.sh STATE_DIR [ROUNDS]}
ROUNDS=${2:-3}
# shellcheck disable=SC1091
source "$STATE/env"
ZONE=us-central1-a
API=$EMULATOR_URL/compute/v1/projects/testbed/zones/$ZONE
now() { date +%s.%N; }
since() { python3 -c "print(f'{$2 - $1:.2f}')"; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- the operator's path -----------------------------------------------------------
operator_round() {
  local ns=bench name=ws t0 line
  kubectl delete namespace $ns --wait=true --timeout=120s >/dev/null 2>&1 || true
  kubectl create namespace $ns >/dev/null
  declare -A seen=()
  t0=$(now)
  kubectl -n $ns apply -f - >/dev/null <<YAML
apiVersion: projectvm.dev/v1alpha1
kind: Workspace
metadata: {name: $name}
spec:
  repository: {url: https://git.pvm.test/public/demo.git}
YAML
  local deadline=$(( $(date +%s) + 300 ))
  while (( $(date +%s) < deadline )); do
    line=$(kubectl -n $ns get ws $name -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}' 2>/dev/null || true)
    for c in $line; do [[ -n ${seen[$c]:-} ]] || seen[$c]=$(since "$t0" "$(now)"); done
    [[ -n ${seen[Ready]:-} ]] && break
    sleep 0.1
  done
  echo "operator ${seen[InstanceReady]:-NA} ${seen[RepositoryCloned]:-NA} ${seen[CodeServerConfigured]:-NA} ${seen[Healthy]:-NA} ${seen[Ready]:-NA}"
  kubectl delete namespace $ns --wait=true --timeout=120s >/dev/null
}

# --- the same steps by hand -----------------------------------------------------------
shell_round() {
  local name=bench-shell t0 t_boot t_ssh t_clone t_cs t_health op ip hk pub
  rm -f "$work/k" "$work/k.pub"
  ssh-keygen -q -t ed25519 -N '' -f "$work/k"
  pub=$(cat "$work/k.pub")
  t0=$(now)
  op=$(curl -fsS -X POST "$API/instances" -H 'content-type: application/json' --data @- <<JSON | python3 -c 'import json,sys; print(json.load(sys.stdin)["name"])'
{"name":"$name","machineType":"zones/$ZONE/machineTypes/e2-medium",
 "disks":[{"boot":true,"autoDelete":true,"initializeParams":{"diskSizeGb":"50","sourceImage":"projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts"}}],
 "networkInterfaces":[{"network":"global/networks/default","accessConfigs":[{"name":"External NAT","type":"ONE_TO_ONE_NAT"}]}],
 "metadata":{"items":[{"key":"ssh-keys","value":"project:$pub"},{"key":"enable-guest-attributes","value":"TRUE"}]}}
JSON
)
  until curl -fsS "$API/operations/$op" | grep -q '"status": *"DONE"'; do sleep 0.05; done
  ip=$(curl -fsS "$API/instances/$name" | python3 -c 'import json,sys; print(json.load(sys.stdin)["networkInterfaces"][0]["networkIP"])')
  hk=$(curl -fsS "$API/instances/$name/getGuestAttributes?queryPath=hostkeys/" | python3 -c 'import json,sys; print(" ".join([(i["key"]+" "+i["value"]) for i in json.load(sys.stdin)["queryValue"]["items"] if i["key"]=="ssh-ed25519"]))')
  t_boot=$(now)
  echo "$ip $hk" >"$work/kh"
  local ssh=(ssh -i "$work/k" -o UserKnownHostsFile="$work/kh" -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=5 "project@$ip")
  until "${ssh[@]}" true 2>/dev/null; do sleep 0.05; done
  t_ssh=$(now)
  # clone and code-server configuration side by side, as the operator does
  "${ssh[@]}" 'git clone -q --depth 1 --single-branch https://git.pvm.test/public/demo.git ~/demo' &
  local clone_pid=$!
  "${ssh[@]}" 'set -e; mkdir -p ~/.config/code-server ~/demo; printf "bind-addr: 0.0.0.0:8080\nauth: none\ncert: false\n" > ~/.config/code-server/config.yaml
    sudo mkdir -p /etc/systemd/system/code-server@project.service.d
    printf "[Service]\nExecStart=\nExecStart=/usr/bin/code-server --config /home/project/.config/code-server/config.yaml /home/project/demo\n" | sudo tee /etc/systemd/system/code-server@project.service.d/10-bench.conf >/dev/null
    sudo systemctl daemon-reload && sudo systemctl enable -q code-server@project && sudo systemctl restart code-server@project'
  t_cs=$(now)
  wait $clone_pid
  t_clone=$(now)
  until curl -fsS -m 2 "http://$ip:8080/healthz" >/dev/null 2>&1; do sleep 0.05; done
  t_health=$(now)
  echo "shell $(since "$t0" "$t_boot") $(since "$t0" "$t_clone") $(since "$t0" "$t_cs") $(since "$t0" "$t_health") $(since "$t0" "$t_health") ssh=$(since "$t0" "$t_ssh")"
  op=$(curl -fsS -X DELETE "$API/instances/$name" | python3 -c 'import json,sys; print(json.load(sys.stdin)["name"])')
  until curl -fsS "$API/operations/$op" | grep -q '"status": *"DONE"'; do sleep 0.1; done
}

results=$work/results
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  operator_round >>"$results"
  shell_round >>"$results"
done

python3 - "$results" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
cols = ["instance running", "repository cloned", "code-server configured", "healthy", "ready"]
def med(kind, i):
    vals = [float(r[i + 1]) for r in rows if r[0] == kind and r[i + 1] != "NA"]
    return statistics.median(vals) if vals else float("nan")
ssh = [float(r[6].split("=")[1]) for r in rows if r[0] == "shell"]
print(f"Workspace apply→Ready, seconds since apply (median of {len(ssh)} rounds)")
print(f"{'step':<24} {'operator':>9} {'shell':>9} {'ratio':>7}")
for i, c in enumerate(cols):
    o, s = med("operator", i), med("shell", i)
    print(f"{c:<24} {o:>9.2f} {s:>9.2f} {o / s if s else float('nan'):>7.2f}")
print(f"{'(shell: SSH ready)':<24} {'':>9} {statistics.median(ssh):>9.2f}")
PY
