"""Start a Dask cluster on SLURM or PBS with dask-jobqueue, for ``pipeline.run --scheduler``.

    python cluster/hpc.py slurm --profile gpu --adapt 1:16 --scheduler-file $SCRATCH/nuclei.json
    python -m pipeline.run manifest.csv --out $SCRATCH/nuclei --scheduler $SCRATCH/nuclei.json

The scheduler runs in this process (keep it alive, e.g. in a small batch job or tmux); workers
are batch jobs described by ``jobqueue.yaml`` (one worker per job, retiring before the wall-time
limit at staggered times, replaced by adaptive scaling). ``--print-job-script`` shows the job
script that would be submitted, without submitting anything.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
# A slide that kills its worker this many times is failed by the pipeline (KilledWorker).
ALLOWED_FAILURES = 2


def load_profile(system: str, profile: str, path: Path | None = None) -> dict[str, Any]:
    data = yaml.safe_load((path or HERE / "jobqueue.yaml").read_text())
    try:
        return dict(data[system][profile])
    except KeyError:
        raise SystemExit(f"no profile {system}.{profile} in {path or HERE / 'jobqueue.yaml'}") from None


def make_cluster(system: str, profile: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """A dask-jobqueue cluster object (nothing is submitted until it is scaled)."""
    import dask

    dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES})
    kwargs = {k: v for k, v in profile.items() if v is not None}
    kwargs.update({k: v for k, v in overrides.items() if v is not None and k != "scheduler_options"})
    kwargs["scheduler_options"] = {**kwargs.get("scheduler_options", {}), **overrides.get("scheduler_options", {})}
    if system == "slurm":
        from dask_jobqueue import SLURMCluster

        return SLURMCluster(**kwargs)
    if system == "pbs":
        from dask_jobqueue import PBSCluster

        return PBSCluster(**kwargs)
    raise SystemExit(f"unknown batch system {system!r} (slurm or pbs)")


def network_options(interface: str | None, tls_dir: Path | None) -> dict[str, Any]:
    """Where the cluster listens and how it talks: the given interface (never every interface),
    TLS with the given certificates (a Dask scheduler runs whatever pickled code reaches it),
    and the scheduler's dashboard on this machine's loopback (reach it with ``ssh -L``)."""
    options: dict[str, Any] = {"scheduler_options": {"dashboard_address": "127.0.0.1:8787"}}
    if interface:
        options["interface"] = interface
    if tls_dir:
        from distributed.security import Security

        ca, cert, key = (str(tls_dir / name) for name in ("ca.pem", "node.pem", "node.key"))
        options["protocol"] = "tls://"
        options["security"] = Security(
            tls_ca_file=ca,
            tls_scheduler_cert=cert,
            tls_scheduler_key=key,
            tls_worker_cert=cert,
            tls_worker_key=key,
            tls_client_cert=cert,
            tls_client_key=key,
            require_encryption=True,
        )
    return options


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("system", choices=["slurm", "pbs"])
    p.add_argument("--profile", default="cpu", help="profile in jobqueue.yaml (cpu or gpu)")
    p.add_argument("--config", type=Path, help="another jobqueue.yaml")
    p.add_argument("--queue")
    p.add_argument("--account")
    p.add_argument("--walltime")
    p.add_argument("--jobs", type=int, default=0, help="fixed number of worker jobs")
    p.add_argument("--adapt", default="", help="MIN:MAX worker jobs, scaled to the work queued")
    p.add_argument("--scheduler-file", type=Path, default=Path("nuclei-scheduler.json"))
    p.add_argument("--interface", help="the cluster network interface the scheduler and workers bind to (e.g. ib0)")
    p.add_argument(
        "--tls-dir",
        type=Path,
        help="folder with ca.pem, node.pem, node.key on the shared filesystem: all traffic TLS, encryption required",
    )
    p.add_argument("--print-job-script", action="store_true")
    args = p.parse_args(argv)
    profile = load_profile(args.system, args.profile, args.config)
    overrides = {"queue": args.queue, "account": args.account, "walltime": args.walltime}
    overrides.update(network_options(args.interface, args.tls_dir))
    cluster = make_cluster(args.system, profile, overrides)
    if args.print_job_script:
        print(cluster.job_script())
        cluster.close()
        return 0
    args.scheduler_file.write_text(json.dumps(cluster.scheduler_info | {"address": cluster.scheduler_address}))
    if args.adapt:
        low, high = (int(v) for v in args.adapt.split(":"))
        cluster.adapt(minimum_jobs=low, maximum_jobs=high)
    else:
        cluster.scale(jobs=args.jobs or 1)
    print(
        f"scheduler {cluster.scheduler_address}; dashboard {cluster.dashboard_link}; "
        f"scheduler file {args.scheduler_file}",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(60)
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
