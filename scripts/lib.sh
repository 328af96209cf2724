# Shared by the README's two commands (sourced, not run).
#
# as_root "$@": re-runs the calling script as root when it is not (with sudo, which must then
# be there), so `./scripts/demo.sh` works as written for root on a machine without sudo and
# for a user with sudo alike.
# tool_path: puts back where rustup and the Go distribution install their tools (sudo resets
# PATH to its secure_path).
# stage NAME LOG CMD...: runs one stage with its output in LOG, printing one line for it; on
# failure prints the log's path and its last lines.

as_root() {
  if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "$0 needs root (network namespaces and systemd-nspawn machines), and sudo is not installed: run it as root" >&2
      exit 1
    fi
    exec sudo --preserve-env=PROJECTVM_DEMO_STATE,PROJECTVM_TESTBED_STATE,PROJECTVM_CACHE,KUBEBUILDER_ASSETS "$0" "$@"
  fi
}

tool_path() {
  for d in "$HOME/.cargo/bin" /root/.cargo/bin /usr/local/go/bin; do
    [[ -d $d && ":$PATH:" != *":$d:"* ]] && PATH="$d:$PATH"
  done
  export PATH
}

stage() {
  local name=$1 log=$2 started rc
  shift 2
  started=$(date +%s)
  printf '%-52s' "$name ..."
  echo "=== $(date +%T) $name" >>"$log"
  if "$@" >>"$log" 2>&1; then
    printf ' done (%ss)\n' "$(( $(date +%s) - started ))"
  else
    rc=$?
    printf ' FAILED (exit %s)\n' "$rc"
    echo "--- the last lines of $log:" >&2
    tail -n 25 "$log" >&2
    echo "--- the whole log: $log" >&2
    exit "$rc"
  fi
}
