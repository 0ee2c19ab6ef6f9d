#!/usr/bin/env bash
# Runs the same jaxsmooth command on every worker of a Cloud TPU VM pod slice (one JAX process per worker).
#
#   launch/tpu_pod.sh TPU_NAME ZONE python -m jaxsmooth.train --config configs/imagenet_heat.py --workdir /mnt/shared/heat
#
# The command runs in REMOTE_DIR on each worker (default: ~/jaxsmooth, a clone of this repository with jaxsmooth
# installed: pip install -e .). JAXSMOOTH_DISTRIBUTED=1 makes jaxsmooth call jax.distributed.initialize(),
# which finds the pod's workers itself. Process 0 writes logs, metrics and TSVs; all processes save checkpoints
# together, so the workdir must be on a file system every worker mounts (Filestore, gcsfuse). Output of every worker comes
# back prefixed by gcloud; extra gcloud flags go in GCLOUD_FLAGS (e.g. "--project=my-project").
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
name="$1"; zone="$2"; shift 2
remote_dir="${REMOTE_DIR:-~/jaxsmooth}"
command="cd $remote_dir && JAXSMOOTH_DISTRIBUTED=1 $(printf '%q ' "$@")"
# shellcheck disable=SC2086
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all ${GCLOUD_FLAGS:-} --command "$command"
