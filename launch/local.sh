#!/usr/bin/env bash
# Runs one jaxsmooth command as N JAX processes on this machine (CPU), for testing multi-process runs.
#
#   launch/local.sh N python -m jaxsmooth.train --config configs/quickstart.py --workdir workdirs/mp
#
# Each process gets DEVICES_PER_PROCESS fake CPU devices (default 1) and joins a coordinator on
# 127.0.0.1:PORT (default 12355); collectives between processes use gloo. Process 0 writes logs and
# metrics; all processes save checkpoints together. Output of process i goes to LOGDIR/process_i.log
# (default: a temporary folder, printed at the start). Exit status: the first non-zero one.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
n="$1"; shift
port="${PORT:-12355}"
per="${DEVICES_PER_PROCESS:-1}"
logdir="${LOGDIR:-$(mktemp -d)}"
mkdir -p "$logdir"
echo "launch/local.sh: $n processes, $per devices each, logs in $logdir" >&2
pids=()
for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo \
  XLA_FLAGS="--xla_force_host_platform_device_count=$per" \
    "$@" --coordinator "127.0.0.1:$port" --num-processes "$n" --process-id "$i" \
    >"$logdir/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || { s=$?; [ "$status" -eq 0 ] && status=$s; }
done
cat "$logdir/process_0.log"
exit "$status"
