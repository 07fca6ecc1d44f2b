#!/usr/bin/env bash
# Set up rollout on a fresh Debian/Ubuntu machine: Debian packages, a virtualenv in
# .venv, and the project with MLServer. `--dev` adds what the tests use: a real
# Prometheus server, nginx (router benchmark baseline), MLflow (the mlflow registry) and the
# test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"

packages="git python3-venv python3-dev"
[ "$dev" = 1 ] && packages="$packages prometheus nginx"
missing=""
for p in $packages; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
extras="mlserver"
[ "$dev" = 1 ] && extras="mlserver,mlflow,dev"  # --dev: the mlflow registry is tested in CI too
echo "setup: installing rollout[$extras] into .venv"
.venv/bin/python -m pip install -q -e ".[$extras]"
echo "setup: done ($(.venv/bin/rollout --help >/dev/null && echo 'rollout CLI ready'))"
