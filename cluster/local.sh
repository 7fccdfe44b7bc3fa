#!/bin/bash
# A scheduler and N workers on this machine, in the style of an HPC cluster (for trying things out).
#   cluster/local.sh 2 & python -m pipeline.run manifest.csv --scheduler nuclei-scheduler.json
# With GPUs: cluster/local.sh gpu   (one dask-cuda worker per GPU)
#
# Everything (scheduler, its dashboard, workers, nannies) listens on 127.0.0.1 only: a Dask
# scheduler runs whatever pickled code reaches it. To reach it from other machines, bind it to
# the cluster's own interface AND turn on TLS (cluster/README.md, "Network and TLS"):
#   HOST=10.1.0.7 TLS_DIR=$HOME/.nuclei-tls cluster/local.sh 2
# TLS_DIR holds ca.pem, node.pem and node.key; the driver needs the same files (see the README).
set -euo pipefail
N=${1:-2}
SCHED=${SCHED:-nuclei-scheduler.json}
HOST=${HOST:-127.0.0.1}
PROTOCOL=tcp
SECURITY=()
if [ -n "${TLS_DIR:-}" ]; then
  PROTOCOL=tls
  SECURITY=(--tls-ca-file "$TLS_DIR/ca.pem" --tls-cert "$TLS_DIR/node.pem" --tls-key "$TLS_DIR/node.key")
elif [ "$HOST" != 127.0.0.1 ] && [ "$HOST" != localhost ]; then
  echo "local.sh: HOST=$HOST would open an unencrypted scheduler to the network; set TLS_DIR (see cluster/README.md)" >&2
  exit 2
fi
rm -f "$SCHED"
export DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=2
dask scheduler --scheduler-file "$SCHED" --host "$HOST" --protocol "$PROTOCOL" \
     --dashboard-address "$HOST:8787" ${SECURITY[@]+"${SECURITY[@]}"} &
trap 'kill 0' EXIT INT TERM
while [ ! -f "$SCHED" ]; do sleep 0.5; done
if [ "$N" = gpu ]; then
  dask cuda worker --scheduler-file "$SCHED" --host "$HOST" --dashboard-address "$HOST:0" \
       --resources GPU=1 --rmm-pool-size 0.5 ${SECURITY[@]+"${SECURITY[@]}"} &
else
  dask worker --scheduler-file "$SCHED" --host "$HOST" --dashboard-address "$HOST:0" \
       --nworkers "$N" --nthreads 1 ${SECURITY[@]+"${SECURITY[@]}"} &
fi
wait
