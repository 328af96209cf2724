#!/usr/bin/env bash
# Create a bare test repository with known content on the test git host.
#   usage: make-repo.sh STATE_DIR public|private NAME [BRANCH...]
#   makes: STATE_DIR/repos/<public|private>/NAME.git  (replaced if it exists)
#          served as https://10.213.0.2/<public|private>/NAME.git
#   content:
#     main (default branch): README.md (contains the line "projectvm test repository NAME"),
#                            hello.sh, src/app.txt  — 2 commits
#     feature:               main + feature.txt ("feature branch of NAME")
#     tag v1.0 (annotated):  the first commit of main
#     each extra BRANCH:     main + BRANCH.txt ("branch BRANCH of NAME")
#   stdout: one NAME=SHA line per ref, e.g.
#     main=<sha>  feature=<sha>  v1.0=<sha of the tagged commit>  first=<sha>  <BRANCH>=<sha>
#     url=https://10.213.0.2/<kind>/NAME.git
# Commits are deterministic (fixed author, dates), so the SHAs are the same on every run.
set -euo pipefail

STATE=${1:?usage: make-repo.sh STATE_DIR public|private NAME [BRANCH...]}
KIND=${2:?public|private}
NAME=${3:?NAME}
shift 3
case "$KIND" in public|private) ;; *) echo "make-repo: kind must be public or private" >&2; exit 2 ;; esac
[[ "$NAME" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || { echo "make-repo: bad name $NAME" >&2; exit 2; }

BARE=$STATE/repos/$KIND/$NAME.git
mkdir -p "$STATE/repos/$KIND"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

export GIT_AUTHOR_NAME="PVM Test" GIT_AUTHOR_EMAIL="test@pvm.test"
export GIT_COMMITTER_NAME="PVM Test" GIT_COMMITTER_EMAIL="test@pvm.test"
export GIT_CONFIG_NOSYSTEM=1 HOME=$work   # no user/system config can change the SHAs
g() { git -C "$work/w" "$@"; }
at() { export GIT_AUTHOR_DATE="$1 +0000" GIT_COMMITTER_DATE="$1 +0000"; }

git init -q -b main "$work/w"
g config commit.gpgsign false
g config tag.gpgsign false

cat > "$work/w/README.md" <<MD
# $NAME

projectvm test repository $NAME

This repository is served by the projectvm test bed.
MD
printf '#!/bin/sh\necho "hello from %s"\n' "$NAME" > "$work/w/hello.sh"
chmod 755 "$work/w/hello.sh"
at "2024-01-01T00:00:00"
g add -A && g commit -q -m "Initial commit of $NAME"
first=$(g rev-parse HEAD)
g tag -a v1.0 -m "Release v1.0 of $NAME"

mkdir -p "$work/w/src"
echo "application source of $NAME" > "$work/w/src/app.txt"
at "2024-01-02T00:00:00"
g add -A && g commit -q -m "Add src/app.txt"
main=$(g rev-parse HEAD)

g checkout -q -b feature
echo "feature branch of $NAME" > "$work/w/feature.txt"
at "2024-01-03T00:00:00"
g add -A && g commit -q -m "Add feature.txt"
feature=$(g rev-parse HEAD)

extra=()
i=4
for b in "$@"; do
  g checkout -q main
  g checkout -q -b "$b"
  echo "branch $b of $NAME" > "$work/w/$b.txt"
  at "2024-01-0${i}T00:00:00"; i=$((i < 9 ? i + 1 : 9))
  g add -A && g commit -q -m "Add $b.txt"
  extra+=("$b=$(g rev-parse HEAD)")
done
g checkout -q main

rm -rf "$BARE"
git clone -q --bare "$work/w" "$BARE"
git -C "$BARE" symbolic-ref HEAD refs/heads/main
git -C "$BARE" config uploadpack.allowReachableSHA1InWant true
git -C "$BARE" update-server-info

echo "main=$main"
echo "feature=$feature"
echo "v1.0=$first"
echo "first=$first"
for e in "${extra[@]}"; do echo "$e"; done
echo "url=https://10.213.0.2/$KIND/$NAME.git"
