#!/usr/bin/env bash
# `make demo`: start the daemon if it is not running, boot a VM, show it, say how to reach it.
set -euo pipefail
cd "$(dirname "$0")/.."
C=.venv/bin/corral
export CORRAL_HOME="${CORRAL_HOME:-$(.venv/bin/python -c 'from corral.config import default_home; print(default_home())')}"
mkdir -p "$CORRAL_HOME"
if ! $C list >/dev/null 2>&1; then
  echo "starting the daemon (log: $CORRAL_HOME/daemon.log)"
  nohup $C serve >>"$CORRAL_HOME/daemon.log" 2>&1 </dev/null &
  for _ in $(seq 100); do $C list >/dev/null 2>&1 && break; sleep 0.1; done
fi
if out=$($C show demo --json 2>/dev/null); then
  state=$(printf '%s' "$out" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["state"])')
else
  state=none
fi
case "$state" in
  none) $C run demo ;;
  running|paused) echo "demo is already $state" ;;
  *) $C start demo --wait ;;
esac
echo
$C show demo
echo
echo "Reach its serial console with:   $C console demo      (Ctrl-] detaches)"
echo "Stop and remove it with:         $C destroy demo"
