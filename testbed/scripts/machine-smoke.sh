#!/usr/bin/env bash
# End-to-end proof that the machine image works: boots one throwaway machine by hand (the way
# the Compute Engine emulator does) and checks it over SSH. Cleans up after itself; exits
# non-zero on the first failure.
#   usage: machine-smoke.sh            (as root)
#   env:   PVM_SMOKE_IP   machine address (default 10.213.0.250)
#          PVM_SMOKE_KEEP=1  leave the machine running (prints how to stop it)
# Prints "SMOKE key=value" lines with timings (ssh_ready_s, running_s, healthz_s, poweroff_s,
# reboot_ssh_ready_s, guest_poweroff_s) and finally "SMOKE result=ok".
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IP=${PVM_SMOKE_IP:-10.213.0.250}
NAME=pvmsmoke
NS=pvmsmoke            # network namespace of the machine
HVETH=pvmsmoke0        # root-namespace end of its veth, on pvmbr0
TOKEN=smoke-token-$RANDOM$RANDOM
WORK=$(mktemp -d /tmp/pvm-smoke.XXXXXX)
STATE=$WORK/githost
M=$WORK/machine
NSPAWN_PID=""
GITHOST_STARTED=""
FAILED=0

log() { echo "smoke: $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
fail() { log "FAIL: $*"; FAILED=1; exit 1; }

cleanup() {
  local rc=$?
  set +e
  if [ -n "${PVM_SMOKE_KEEP:-}" ] && [ "$rc" = 0 ]; then
    log "kept: machine $NAME pid $NSPAWN_PID (kill -TERM $NSPAWN_PID), work dir $WORK"
    return
  fi
  if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    kill -TERM "$NSPAWN_PID"
    for _ in $(seq 1 100); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$NSPAWN_PID" 2>/dev/null
  fi
  mountpoint -q "$M/merged" && umount "$M/merged"
  ip link del "$HVETH" 2>/dev/null
  [ -e "/run/netns/$NS" ] && ip netns del "$NS"
  [ -n "$GITHOST_STARTED" ] && "$HERE/githost.sh" stop "$STATE"
  if [ "$rc" != 0 ] || [ "$FAILED" != 0 ]; then
    log "console log tail:"; tail -n 30 "$M/console.log" >&2 2>/dev/null
    log "git host log tail:"; tail -n 10 "$STATE/gitserver.log" >&2 2>/dev/null
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || fail "must run as root"

# --- host side: deps, network, image, git host -----------------------------------------------
"$HERE/install-host-deps.sh"
"$HERE/net.sh" up
ROOT=$("$HERE/build-rootfs.sh" | tail -n 1)
[ -d "$ROOT/etc" ] || fail "no rootfs"
log "rootfs $ROOT"

if curl -fsS --max-time 1 -o /dev/null http://10.213.0.2:8081/healthz 2>/dev/null; then
  fail "a git host already serves 10.213.0.2 (stop it first: githost.sh stop STATE_DIR)"
fi
"$HERE/githost.sh" start "$STATE"
GITHOST_STARTED=1
MAINSHA=$("$HERE/make-repo.sh" "$STATE" public demo | sed -n 's/^main=//p')
"$HERE/make-repo.sh" "$STATE" private secret >/dev/null
echo "$TOKEN" > "$STATE/tokens"

# --- the machine: overlay root, identity, user, network ----------------------------------------
mkdir -p "$M/upper" "$M/work" "$M/merged"
mount -t overlay overlay -o "lowerdir=$ROOT,upperdir=$M/upper,workdir=$M/work" "$M/merged"
R=$M/merged
ssh-keygen -q -A -f "$R" >/dev/null                        # unique host keys
od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$R/etc/machine-id"; echo >> "$R/etc/machine-id"
# no /etc/hostname: the machine is named by --machine=NAME
chroot "$R" useradd -m -s /bin/bash -G google-sudoers project
ssh-keygen -q -t ed25519 -N '' -C smoke -f "$WORK/id"
install -d -m 700 -o 1000 -g 1000 "$R/home/project/.ssh"
install -m 600 -o 1000 -g 1000 "$WORK/id.pub" "$R/home/project/.ssh/authorized_keys"
# pin the host key we generated, as the operator pins the one from guest attributes
echo "$IP $(cut -d' ' -f1-2 "$R/etc/ssh/ssh_host_ed25519_key.pub")" > "$WORK/known_hosts"

ip netns add "$NS"
# A MAC derived from the address (02:00:<ip bytes>): a neighbour entry cached for this IP by
# an earlier machine stays right. With a random MAC, the stale entry on pvmbr0 black-holes
# the host's packets for ~5-20 s, until the kernel re-probes.
MAC=$(printf '02:00:%02x:%02x:%02x:%02x' ${IP//./ })
ip link add "$HVETH" type veth peer name eth0 address "$MAC" netns "$NS"
ip neigh del "$IP" dev pvmbr0 2>/dev/null || true
ip -n pvm-git neigh del "$IP" dev eth0 2>/dev/null || true
ip link set "$HVETH" master pvmbr0 up
ip -n "$NS" addr add "$IP/24" dev eth0
ip -n "$NS" link set eth0 up
ip -n "$NS" link set lo up
ip -n "$NS" route add default via 10.213.0.1

SSH=(ssh -i "$WORK/id" -o UserKnownHostsFile="$WORK/known_hosts" -o StrictHostKeyChecking=yes
     -o HostKeyAlgorithms=ssh-ed25519 -o BatchMode=yes -o ConnectTimeout=2 -o LogLevel=ERROR
     "project@$IP")

boot() {
  setsid systemd-nspawn -D "$R" --boot --register=no --keep-unit \
    --network-namespace-path="/run/netns/$NS" --machine="$NAME" --console=passive \
    >>"$M/console.log" 2>&1 </dev/null &
  NSPAWN_PID=$!
}
wait_ssh() {
  local t0=$1
  for _ in $(seq 1 300); do
    if "${SSH[@]}" true 2>/dev/null; then echo "$(since "$t0")"; return 0; fi
    kill -0 "$NSPAWN_PID" 2>/dev/null || fail "nspawn exited during boot"
    sleep 0.05
  done
  fail "no SSH after 15+ s"
}

t0=$(now)
boot
ssh_ready=$(wait_ssh "$t0")
state=$("${SSH[@]}" 'systemctl is-system-running --wait' || true)
running=$(since "$t0")
[ "$state" = running ] || fail "system state $state: $("${SSH[@]}" 'systemctl --failed --no-legend')"
echo "SMOKE ssh_ready_s=$ssh_ready"
echo "SMOKE running_s=$running"

# --- checks inside the machine ----------------------------------------------------------------
check() {
  local what=$1; shift
  if out=$("${SSH[@]}" "$@" 2>&1); then
    log "ok: $what"
  else
    echo "$out" | tail -n 15 >&2
    fail "$what"
  fi
}
check "hostname resolves, sudo without password" 'sudo -n true && [ "$(hostname)" = pvmsmoke ]'
check "public clone over verified TLS" \
  "git clone -q https://10.213.0.2/public/demo.git ~/demo && grep -q 'projectvm test repository demo' ~/demo/README.md && [ \"\$(git -C ~/demo rev-parse HEAD)\" = $MAINSHA ]"
check "clone by host name git.pvm.test" 'git clone -q --depth 1 --branch feature https://git.pvm.test/public/demo.git ~/demo-f && test -f ~/demo-f/feature.txt'
# the token reaches git only through a credential file readable by the user alone
printf 'https://x-access-token:%s@10.213.0.2\n' "$TOKEN" |
  "${SSH[@]}" 'umask 077; cat > ~/.git-credentials-pvm'
check "private clone with the token via credential helper" \
  'git -c credential.helper="store --file=$HOME/.git-credentials-pvm" clone -q https://10.213.0.2/private/secret.git ~/secret && test -f ~/secret/README.md'
echo "rotated-$TOKEN" > "$STATE/tokens"        # the old token no longer works
check "old token rejected with 401 after rotation" \
  'out=$(GIT_TERMINAL_PROMPT=0 git -c credential.helper="store --file=$HOME/.git-credentials-pvm" ls-remote https://10.213.0.2/private/secret.git 2>&1); rc=$?; echo "$out"; [ $rc -ne 0 ] && echo "$out" | grep -q "Authentication failed"'
check "missing repository is 404" \
  '[ "$(curl -s -o /dev/null -w %{http_code} https://10.213.0.2/public/nope.git/info/refs?service=git-upload-pack)" = 404 ]'
check "apt from the local repository" \
  'sudo apt-get update -q >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q jq tree >/dev/null && echo "{\"a\":42}" | jq -e ".a == 42" >/dev/null && tree ~/demo >/dev/null'
check "code-server unit present and not enabled" \
  'test -f /usr/lib/systemd/system/code-server@.service && [ "$(systemctl is-enabled code-server@project 2>&1)" = disabled ]'

"${SSH[@]}" 'setsid code-server --bind-addr 0.0.0.0:8080 --auth none /tmp >/tmp/cs.log 2>&1 </dev/null &'
t1=$(now)
hz=""
for _ in $(seq 1 300); do
  hz=$(curl -fsS --max-time 1 "http://$IP:8080/healthz" 2>/dev/null) && break
  sleep 0.1
done
echo "$hz" | grep -q '"status"' || { "${SSH[@]}" 'tail -n 20 /tmp/cs.log' >&2; fail "code-server /healthz"; }
echo "SMOKE healthz_s=$(since "$t1") healthz=$hz"
log "ok: code-server serves /healthz"

check "code-server under systemd as the user, folder set by a drop-in" \
  'pkill -u project -x node || true; mkdir -p ~/.config/code-server && printf "bind-addr: 0.0.0.0:8081\nauth: none\n" > ~/.config/code-server/config.yaml &&
   sudo mkdir -p /etc/systemd/system/code-server@project.service.d &&
   printf "[Service]\nExecStart=\nExecStart=/usr/bin/code-server /home/project/demo\n" | sudo tee /etc/systemd/system/code-server@project.service.d/folder.conf >/dev/null &&
   sudo systemctl daemon-reload && sudo systemctl enable --now code-server@project 2>/dev/null &&
   systemctl show -p ExecStart code-server@project | grep -q /home/project/demo &&
   for i in $(seq 1 100); do curl -fs localhost:8081/healthz >/dev/null && exit 0; sleep 0.1; done; exit 1'

# --- graceful power-off from the host: SIGTERM to systemd-nspawn ----------------------------
t2=$(now)
kill -TERM "$NSPAWN_PID"
for _ in $(seq 1 300); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.05; done
kill -0 "$NSPAWN_PID" 2>/dev/null && fail "machine did not power off within 15 s"
wait "$NSPAWN_PID" || fail "nspawn exit status $?"
echo "SMOKE poweroff_s=$(since "$t2")"

# --- a second boot keeps the disk (upper dir) ---------------------------------------------------
t0=$(now)
boot
echo "SMOKE reboot_ssh_ready_s=$(wait_ssh "$t0")"
check "state survives a power cycle; enabled code-server comes back" \
  'test -d ~/secret/.git && command -v jq >/dev/null && for i in $(seq 1 100); do curl -fs localhost:8081/healthz >/dev/null && exit 0; sleep 0.1; done; exit 1'

# --- power-off from inside the guest: nspawn exits 0 on its own --------------------------------
t3=$(now)
"${SSH[@]}" 'sudo systemctl poweroff' >/dev/null 2>&1 </dev/null &
for _ in $(seq 1 300); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.05; done
kill -0 "$NSPAWN_PID" 2>/dev/null && fail "guest poweroff did not end the machine within 15 s"
wait "$NSPAWN_PID" || fail "nspawn exit status $? after guest poweroff"
echo "SMOKE guest_poweroff_s=$(since "$t3")"

echo "SMOKE result=ok"
