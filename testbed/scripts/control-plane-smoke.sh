#!/usr/bin/env bash
# Smoke test of the local control plane (control-plane.sh) with real kubectl and helm.
#   control-plane-smoke.sh          bring up a control plane in a temp dir, test, tear down
#   control-plane-smoke.sh DIR      use DIR (bring it up if needed; left running afterwards)
# Exits non-zero on the first failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CP=$HERE/control-plane.sh

step() { echo "smoke: $*" >&2; }
fail() { echo "smoke: FAIL: $*" >&2; exit 1; }

OWN=0
if [[ $# -ge 1 ]]; then
  DIR=$1
else
  DIR=$(mktemp -d /tmp/projectvm-cp-smoke.XXXXXX)
  OWN=1
fi
WORK=$(mktemp -d /tmp/projectvm-cp-smoke-work.XXXXXX)
cleanup() {
  rm -rf "$WORK"
  if ((OWN)); then "$CP" down "$DIR" || true; rm -rf "$DIR"; fi
}
trap cleanup EXIT
"$CP" up "$DIR"
eval "$("$CP" env "$DIR")"
k() { kubectl --request-timeout=20s "$@"; }

step "kubectl version"
ver=$(k version -o json)
server=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])' <<<"$ver")
client=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])' <<<"$ver")
[[ $server == v1.34.* ]] || fail "server version is '$server', expected v1.34.x"
[[ $client == v1.34.* ]] || fail "kubectl version is '$client', expected v1.34.x"
step "  server $server, kubectl $client ($(command -v kubectl))"

step "root CA published by the controller-manager"
k -n default get configmap kube-root-ca.crt >/dev/null || fail "no kube-root-ca.crt ConfigMap"

ns=smoke-$RANDOM$RANDOM
step "namespace $ns with a ConfigMap, then delete (needs the namespace controller)"
k create namespace "$ns" >/dev/null
k -n "$ns" create configmap payload --from-literal=hello=world >/dev/null
k -n "$ns" get configmap payload >/dev/null
k delete namespace "$ns" --wait=true --timeout=90s >/dev/null || fail "namespace deletion did not finish"
if k get namespace "$ns" >/dev/null 2>&1; then fail "namespace $ns still exists"; fi

step "garbage collection of an owned object"
k -n default create configmap gc-owner >/dev/null
uid=$(k -n default get configmap gc-owner -o jsonpath='{.metadata.uid}')
k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: gc-dependent
  namespace: default
  ownerReferences:
  - apiVersion: v1
    kind: ConfigMap
    name: gc-owner
    uid: $uid
EOF
k -n default delete configmap gc-owner >/dev/null
k -n default wait --for=delete configmap/gc-dependent --timeout=60s >/dev/null \
  || fail "garbage collector did not delete the dependent"

step "CRD with an x-kubernetes-validations (CEL) rule"
cat >"$WORK/crd.yaml" <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.projectvm.test
spec:
  group: smoke.projectvm.test
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [min, max]
            properties:
              min: {type: integer}
              max: {type: integer}
            x-kubernetes-validations:
            - rule: self.min <= self.max
              message: min must not exceed max
EOF
k apply -f "$WORK/crd.yaml" >/dev/null
k wait --for=condition=Established crd/widgets.smoke.projectvm.test --timeout=30s >/dev/null
# Discovery can lag the Established condition by a moment.
for _ in $(seq 50); do k get widgets -n default >/dev/null 2>&1 && break; sleep 0.2; done
k apply -f - >/dev/null <<'EOF'
apiVersion: smoke.projectvm.test/v1
kind: Widget
metadata: {name: good, namespace: default}
spec: {min: 1, max: 2}
EOF
if out=$(k apply -f - 2>&1 <<'EOF'
apiVersion: smoke.projectvm.test/v1
kind: Widget
metadata: {name: bad, namespace: default}
spec: {min: 3, max: 2}
EOF
); then
  fail "invalid Widget was accepted"
fi
grep -q "min must not exceed max" <<<"$out" || fail "invalid Widget refused for another reason: $out"
step "  refused: $(grep -o 'spec: Invalid value.*' <<<"$out" | head -1)"
k delete crd widgets.smoke.projectvm.test --wait=true --timeout=60s >/dev/null

step "helm version"
hv=$(helm version --short)
[[ $hv == v3.* ]] || fail "helm version is '$hv'"
step "  helm $hv ($(command -v helm))"
step "helm install / uninstall of a one-ConfigMap chart"
mkdir -p "$WORK/chart/templates"
printf 'apiVersion: v2\nname: smoke\nversion: 0.1.0\n' >"$WORK/chart/Chart.yaml"
cat >"$WORK/chart/templates/cm.yaml" <<'EOF'
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-cm
data:
  greeting: {{ .Values.greeting | default "hi" | quote }}
EOF
helm install smoke-rel "$WORK/chart" -n default --set greeting=hello --wait --timeout 60s >/dev/null
[[ $(k -n default get configmap smoke-rel-cm -o jsonpath='{.data.greeting}') == hello ]] \
  || fail "helm-installed ConfigMap missing or wrong"
helm uninstall smoke-rel -n default --wait >/dev/null

step "kubectl create token default, and use it"
token=$(k -n default create token default --duration=10m)
[[ $token == *.*.* ]] || fail "token does not look like a JWT"
ca=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
srv=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.server}')
cat >"$WORK/sa.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "$srv", certificate-authority-data: "$ca"}}]
users: [{name: sa, user: {token: "$token"}}]
contexts: [{name: c, context: {cluster: c, user: sa, namespace: default}}]
current-context: c
EOF
who=$(kubectl --kubeconfig "$WORK/sa.kubeconfig" auth whoami -o jsonpath='{.status.userInfo.username}')
[[ $who == system:serviceaccount:default:default ]] || fail "token authenticated as '$who'"
# RBAC is real: the bare default ServiceAccount may not list pods.
if kubectl --kubeconfig "$WORK/sa.kubeconfig" get pods >/dev/null 2>&1; then
  fail "default ServiceAccount could list pods (RBAC not enforced?)"
fi
step "  token authenticates as $who, and RBAC denies it pods"

step "all checks passed"
