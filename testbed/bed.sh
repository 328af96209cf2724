#!/usr/bin/env bash
# The whole test bed on this machine, in one state directory:
#   real control plane (etcd + kube-apiserver + kube-controller-manager),
#   the Compute Engine emulator whose instances are systemd-nspawn machines,
#   the HTTPS git host (public + private repository) and local apt repository,
#   Cloud Storage (fake-gcs-server at http://10.213.0.3, bucket projectvm-artifacts) for Run
#   artifacts,
#   an ingress controller (Traefik at 10.213.0.4, IngressClass traefik, https on 443 with the
#   certificates of the Ingresses' TLS Secrets; scripts/traefik.sh),
#   the operator's chart installed with helm, and the operator running as a local process
#   with the chart's ServiceAccount credentials.
#
#   bed.sh up STATE_DIR                 bring everything up (idempotent per piece)
#   bed.sh down STATE_DIR               tear everything down, delete all machines
#   bed.sh operator-start STATE_DIR     (re)start the operator process
#   bed.sh operator-kill STATE_DIR      SIGKILL the operator (crash test)
#
# PROJECTVM_OPERATOR_BIN=PATH runs that operator binary instead of target/debug's (and `up`
# then builds only the emulator), e.g. an older commit's build for a before/after benchmark.
# The bed's operator is the default shard (--shard-selector !sharding.fluxcd.io/key, as the
# chart runs it when shards are configured) and reports events as POD_NAME=bed-operator.
# The bed's operator runs with the production lease timings (15s/10s/2s): shorter ones
# (6s/4s/1s were tried) made a busy debug build miss its renew deadline under a full e2e run,
# and nothing restarts the bed's operator the way a Deployment would. PROJECTVM_LEASE_DURATION,
# _RENEW_DEADLINE and _RETRY_PERIOD override them.
#
# After `up`, STATE_DIR/env is a shell file with KUBECONFIG (admin), PATH, EMULATOR_URL,
# GIT_STATE, METRICS_URL, OPERATOR_LOG, KSTATUS (the kstatus judge binary), STORAGE_URL (the
# Cloud Storage emulator; its JSON API is STORAGE_URL/storage/v1/...), ARTIFACT_BUCKET,
# INGRESS_ADDR (Traefik), TESTBED_CA (the bed CA's certificate, which signs the git host's and
# INGRESS_TLS_DIR's tls.crt/tls.key for *.ws.pvm.test);
# GIT_STATE/{public,private}-demo.refs hold the demo repositories' commit SHAs (NAME=SHA lines).
# Instances of image family $STOCK_IMAGE_FAMILY (in env) boot the stock image, without
# code-server: the operator installs it from CODE_SERVER_URL (the git host serves a release
# tarball build-rootfs.sh --release assembled; its sha256 is CODE_SERVER_SHA256).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
S=$HERE/scripts
log() { echo "bed: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $# -ge 2 ]] || { echo "usage: $0 up|down|operator-start|operator-kill STATE_DIR" >&2; exit 2; }
CMD=$1
mkdir -p "$2"
STATE=$(cd "$2" && pwd -P)
ENV=$STATE/env
OP_NS=projectvm-system
RELEASE=projectvm-operator
TOKEN_FILE=$STATE/git/tokens
STORAGE_URL=http://10.213.0.3
ARTIFACT_BUCKET=projectvm-artifacts
STOCK_IMAGE_FAMILY=debian-12-stock
CODE_SERVER_URL='https://10.213.0.2/releases/code-server-{version}-linux-amd64.tar.gz'

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_for() { # seconds description command...
  local limit=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    (( $(date +%s) < deadline )) || die "timed out after ${limit}s waiting for $what"
    sleep 0.5
  done
}

build_binaries() {
  log "building the operator and the emulator"
  (cd "$ROOT" && { [[ -n ${PROJECTVM_OPERATOR_BIN:-} ]] || cargo build --quiet --locked --bin projectvm-operator -p projectvm; } && cargo build --quiet --locked -p projectvm-testbed --bin gce-emulator)
}

start_emulator() {
  local rootfs=$1 stock=$2
  mkdir -p "$STATE/gce"
  if pid_alive "$STATE/gce/pid"; then return; fi
  rm -f "$STATE/gce/addr"
  log "starting the Compute Engine emulator"
  # Machine disks must be traversable by the machines' own users (overlayfs checks).
  umask 022
  setsid "$ROOT/target/debug/gce-emulator" --listen 127.0.0.1:0 --backend nspawn --rootfs "$rootfs" \
    --image-rootfs "$STOCK_IMAGE_FAMILY=$stock" --state-dir "$STATE/gce" --ready-file "$STATE/gce/addr" --cleanup-on-exit \
    >"$STATE/gce/emulator.log" 2>&1 </dev/null &
  echo $! >"$STATE/gce/pid"
  wait_for 30 "the emulator" test -s "$STATE/gce/addr"
}

operator_kubeconfig() {
  # The operator runs with the chart's ServiceAccount, so the chart's RBAC is what it gets.
  local sa token server ca
  sa=$(kubectl -n "$OP_NS" get deploy -l app.kubernetes.io/instance=$RELEASE -o jsonpath='{.items[0].spec.template.spec.serviceAccountName}')
  [[ -n $sa ]] || die "chart deployment has no serviceAccountName"
  token=$(kubectl -n "$OP_NS" create token "$sa" --duration=24h)
  server=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.server}')
  ca=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
  (umask 077; cat >"$STATE/operator.kubeconfig") <<KC
apiVersion: v1
kind: Config
clusters: [{name: bed, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: operator, user: {token: "$token"}}]
contexts: [{name: bed, context: {cluster: bed, user: operator, namespace: $OP_NS}}]
current-context: bed
KC
}

operator_start() {
  # shellcheck disable=SC1090
  source "$ENV"
  if pid_alive "$STATE/operator.pid"; then
    # SIGTERM: the operator finishes its reconciles and releases the lease, then exits.
    kill "$(cat "$STATE/operator.pid")" 2>/dev/null || true
    for _ in $(seq 1 60); do pid_alive "$STATE/operator.pid" || break; sleep 0.5; done
  fi
  log "starting the operator (log: $STATE/operator.log)"
  # The environment the operator runs with, also read by tests that start another operator
  # process (tests/e2e/bed.rs `spawn_operator`) with some of it overridden.
  cat >"$STATE/operator.env" <<ENV
KUBECONFIG=$STATE/operator.kubeconfig
PROJECTVM_GCP_PROJECT=testbed
PROJECTVM_DEFAULT_ZONE=us-central1-a
PROJECTVM_COMPUTE_ENDPOINT=$EMULATOR_URL
PROJECTVM_CREDENTIALS=anonymous
PROJECTVM_ARTIFACT_BUCKET=$ARTIFACT_BUCKET
PROJECTVM_STORAGE_ENDPOINT=$STORAGE_URL
PROJECTVM_CODE_SERVER_URL=$CODE_SERVER_URL
PROJECTVM_CODE_SERVER_SHA256=$CODE_SERVER_SHA256
PROJECTVM_METRICS_ADDR=${METRICS_URL#http://}
POD_NAMESPACE=$OP_NS
POD_NAME=bed-operator
PROJECTVM_SHARD_SELECTOR=!sharding.fluxcd.io/key
PROJECTVM_LEASE_DURATION=${PROJECTVM_LEASE_DURATION:-15s}
PROJECTVM_LEASE_RENEW_DEADLINE=${PROJECTVM_LEASE_RENEW_DEADLINE:-10s}
PROJECTVM_LEASE_RETRY_PERIOD=${PROJECTVM_LEASE_RETRY_PERIOD:-2s}
PROJECTVM_LOG_FORMAT=json
RUST_LOG=${RUST_LOG:-info,projectvm=debug,kube=warn}
OPERATOR_BIN=${PROJECTVM_OPERATOR_BIN:-$ROOT/target/debug/projectvm-operator}
ENV
  # shellcheck disable=SC2046 # one VAR=value word per line, none with spaces
  env $(grep -v '^OPERATOR_BIN=' "$STATE/operator.env") \
    setsid "${PROJECTVM_OPERATOR_BIN:-$ROOT/target/debug/projectvm-operator}" >>"$STATE/operator.log" 2>&1 </dev/null &
  echo $! >"$STATE/operator.pid"
  wait_for 30 "the operator's /readyz" curl -fsS "$METRICS_URL/readyz"
}

up() {
  local bin rootfs kstatus stock releases
  bin=$("$S/k8s-binaries.sh")
  kstatus=$("$S/kstatus.sh")
  "$S/traefik.sh" build >/dev/null
  export PATH=$bin:$PATH
  rootfs=$("$S/build-rootfs.sh")
  stock=$("$S/build-rootfs.sh" --stock | tail -n 1)
  releases=$("$S/build-rootfs.sh" --release | tail -n 1)
  CODE_SERVER_SHA256=$(cat "$releases/code-server-4.100.3-linux-amd64.tar.gz.sha256")
  build_binaries
  "$S/net.sh" up
  if ! "$S/githost.sh" status "$STATE/git" >/dev/null 2>&1; then
    "$S/githost.sh" start "$STATE/git"
  fi
  "$S/fake-gcs.sh" start "$STATE/gcs"
  "$S/fake-gcs.sh" bucket "$STATE/gcs" "$ARTIFACT_BUCKET"
  "$S/make-repo.sh" "$STATE/git" public demo >"$STATE/git/public-demo.refs"
  "$S/make-repo.sh" "$STATE/git" private demo >"$STATE/git/private-demo.refs"
  [[ -s $TOKEN_FILE ]] || (umask 077; python3 -c 'import secrets; print("pvt_" + secrets.token_hex(20))' >"$TOKEN_FILE")
  if [[ ! -f $STATE/cp/admin.kubeconfig ]] || ! KUBECONFIG=$STATE/cp/admin.kubeconfig kubectl get --raw /readyz >/dev/null 2>&1; then
    # A new control plane is a new bed. Tests read whole operator logs (no panic, no refused
    # request), so an earlier bed's logs in the same state dir move to previous-logs/.
    if compgen -G "$STATE/*.log" >/dev/null; then
      mkdir -p "$STATE/previous-logs"
      mv -f "$STATE"/*.log "$STATE/previous-logs/"
    fi
    # One retry: a free port picked at start-up can be taken before etcd binds it.
    "$S/control-plane.sh" up "$STATE/cp" || { log "control plane did not start; retrying once"; "$S/control-plane.sh" up "$STATE/cp"; }
  fi
  export KUBECONFIG=$STATE/cp/admin.kubeconfig
  "$S/traefik.sh" start "$STATE"
  start_emulator "$rootfs" "$stock"
  local metrics_port
  metrics_port=$(free_port)
  {
    echo "export KUBECONFIG=$KUBECONFIG"
    echo "export PATH=$bin:\$PATH"
    echo "export EMULATOR_URL=http://$(cat "$STATE/gce/addr")"
    echo "export GIT_STATE=$STATE/git"
    echo "export GIT_TOKEN_FILE=$TOKEN_FILE"
    echo "export METRICS_URL=http://127.0.0.1:$metrics_port"
    echo "export OPERATOR_LOG=$STATE/operator.log"
    echo "export PROJECTVM_ROOTFS=$rootfs"
    echo "export KSTATUS=$kstatus"
    echo "export STORAGE_URL=$STORAGE_URL"
    echo "export ARTIFACT_BUCKET=$ARTIFACT_BUCKET"
    echo "export STOCK_IMAGE_FAMILY=$STOCK_IMAGE_FAMILY"
    echo "export CODE_SERVER_URL='$CODE_SERVER_URL'"
    echo "export CODE_SERVER_SHA256=$CODE_SERVER_SHA256"
    echo "export INGRESS_ADDR=10.213.0.4"
    echo "export TESTBED_CA=$("$S/githost.sh" ca | tail -n 1)/ca.crt"
    echo "export INGRESS_TLS_DIR=$("$S/githost.sh" ws-cert | tail -n 1)"
  } >"$ENV"
  log "installing the chart"
  helm upgrade --install "$RELEASE" "$ROOT/charts/projectvm-operator" -n "$OP_NS" --create-namespace \
    --set gcp.project=testbed --set gcp.credentials.mode=anonymous \
    --set-string gcp.computeEndpoint="http://$(cat "$STATE/gce/addr")" \
    --set-string artifacts.bucket="$ARTIFACT_BUCKET" --set-string gcp.storageEndpoint="$STORAGE_URL" \
    --set-string codeServer.install.url="$CODE_SERVER_URL" --set-string codeServer.install.sha256="$CODE_SERVER_SHA256" \
    --wait=false >/dev/null
  # The CRDs are templates of the release: created with it, but not waited for by Helm.
  kubectl wait --for=condition=Established --timeout=60s \
    crd/projectvms.projectvm.dev crd/workspaces.projectvm.dev crd/runs.projectvm.dev >/dev/null
  operator_kubeconfig
  operator_start
  log "test bed is up; source $ENV"
}

down() {
  if pid_alive "$STATE/operator.pid"; then kill "$(cat "$STATE/operator.pid")" 2>/dev/null || true; fi
  if pid_alive "$STATE/gce/pid"; then
    kill -TERM "$(cat "$STATE/gce/pid")" 2>/dev/null || true
    for _ in $(seq 1 120); do pid_alive "$STATE/gce/pid" || break; sleep 0.5; done
    pid_alive "$STATE/gce/pid" && kill -KILL "$(cat "$STATE/gce/pid")" 2>/dev/null || true
  fi
  "$S/githost.sh" stop "$STATE/git" 2>/dev/null || true
  "$S/fake-gcs.sh" stop "$STATE/gcs" 2>/dev/null || true
  "$S/traefik.sh" stop "$STATE" 2>/dev/null || true
  "$S/control-plane.sh" down "$STATE/cp" 2>/dev/null || true
  log "test bed is down"
}

case "$CMD" in
  up) up ;;
  down) down ;;
  operator-start) operator_start ;;
  operator-kill) pid_alive "$STATE/operator.pid" && kill -KILL "$(cat "$STATE/operator.pid")" ;;
  *) die "unknown command $CMD" ;;
esac
