#!/usr/bin/env bash
# Set up rollout on a fresh Debian/Ubuntu machine: Debian packages, a virtualenv in
# .venv, and the project with MLServer, and nginx with its Lua module (the router's data
# plane: platform.data_plane auto uses it). `--dev` adds what the tests use: a real
# Prometheus server, MLflow (the mlflow registry), shellcheck (the kind workflow's
# scripts) and the test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"

packages="git python3-venv python3-dev nginx libnginx-mod-http-lua lua-cjson"
[ "$dev" = 1 ] && packages="$packages prometheus shellcheck"  # the kind workflow's scripts are checked with it
# openssh-server: the git-over-ssh test runs its own sshd on 127.0.0.1 (tests/fixtures/sshd.py);
# the package's system service is not needed (`systemctl disable --now ssh` where it started one)
[ "$dev" = 1 ] && packages="$packages openssh-server"
# node + npm: the job-summary tests parse the Mermaid charts with the real mermaid parser
[ "$dev" = 1 ] && ! command -v node >/dev/null && packages="$packages nodejs npm"
missing=""
for p in $packages; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
  # The router runs its own nginx processes; the system service the package starts on
  # port 80 (where systemd runs) is not needed: stopped again if this run installed it.
  case " $missing " in
    *" nginx "*) if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
                   $sudo systemctl disable --now nginx >/dev/null 2>&1 && echo "setup: stopped the nginx system service this setup started (rollout starts its own)"
                 fi ;;
  esac
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
extras="mlserver"
[ "$dev" = 1 ] && extras="mlserver,mlflow,dev"  # --dev: the mlflow registry is tested in CI too
echo "setup: installing rollout[$extras] into .venv"
.venv/bin/python -m pip install -q -e ".[$extras]"
if [ "$dev" = 1 ]; then
  # The mermaid parser for tests/github/test_mermaid_charts.py, outside the repository;
  # the tests read it from $ROLLOUT_MERMAID_DIR (default ~/.cache/rollout-mermaid).
  mermaid_dir="${ROLLOUT_MERMAID_DIR:-$HOME/.cache/rollout-mermaid}"
  if [ ! -f "$mermaid_dir/node_modules/mermaid/package.json" ] || [ ! -d "$mermaid_dir/node_modules/jsdom" ]; then
    echo "setup: installing mermaid (npm) into $mermaid_dir"
    mkdir -p "$mermaid_dir"
    npm install --prefix "$mermaid_dir" --no-audit --no-fund --silent mermaid@11.17.2 jsdom@24.1.3
  fi
fi
echo "setup: done ($(.venv/bin/rollout --help >/dev/null && echo 'rollout CLI ready'))"
