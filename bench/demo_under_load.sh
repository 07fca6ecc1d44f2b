#!/usr/bin/env bash
# `rollout demo` N times in a row (default 20) while a CPU-heavy job runs: one busy loop per
# core for the whole run. Prints one line per run and the count of right outcomes (v2
# promoted and v3 rolled back: the demo exits 0 only then). Issue 8's check that the demo
# decides right on a loaded machine.   Usage: bash bench/demo_under_load.sh [N]
set -u
cd "$(dirname "$0")/.."
n="${1:-20}"
work=$(mktemp -d)
pids=()
for _ in $(seq "$(nproc)"); do python3 -c "while True: pass" & pids+=($!); done
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
ok=0
for i in $(seq "$n"); do
  began=$(date +%s)
  timeout 600 .venv/bin/rollout demo --home "$work/home-$i" > "$work/run-$i.log" 2>&1
  rc=$?
  .venv/bin/rollout local down --home "$work/home-$i" > /dev/null 2>&1
  [ "$rc" -eq 0 ] && ok=$((ok + 1))
  echo "run $i: exit $rc, $(( $(date +%s) - began )) s"
done
echo "right outcome in $ok of $n runs, with $(nproc) busy loops running"
