#!/bin/bash
# A scheduler and N workers on this machine, in the style of an HPC cluster (for trying things out).
#   cluster/local.sh 2 & python -m pipeline.run manifest.csv --scheduler nuclei-scheduler.json
# With GPUs: cluster/local.sh gpu   (one dask-cuda worker per GPU)
set -euo pipefail
N=${1:-2}
SCHED=${SCHED:-nuclei-scheduler.json}
rm -f "$SCHED"
export DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=2
dask scheduler --scheduler-file "$SCHED" &
trap 'kill 0' EXIT INT TERM
while [ ! -f "$SCHED" ]; do sleep 0.5; done
if [ "$N" = gpu ]; then
  dask cuda worker --scheduler-file "$SCHED" --resources GPU=1 --rmm-pool-size 0.5 &
else
  dask worker --scheduler-file "$SCHED" --nworkers "$N" --nthreads 1 &
fi
wait
