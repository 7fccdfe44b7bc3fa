"""The Dask cluster a run connects to (pipeline.cluster.connect): a local one listens on the
loopback interface only; a scheduler that cannot be used is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import listening_addresses, manifest_of, one_line_error, run_cli


@pytest.mark.slow
def test_local_cluster_listens_on_loopback_only(blob_model: Path) -> None:
    """Scheduler, workers, nannies and dashboard of a local run: 127.0.0.1 and nothing else."""
    import psutil

    from pipeline.cluster import connect
    from pipeline.config import load_config

    config = load_config(None, {"n_workers": 1, "threads_per_worker": 1}, environ={})
    client = connect(config)
    try:
        client.wait_for_workers(1, timeout=60)
        me = psutil.Process()
        pids = [me.pid] + [p.pid for p in me.children(recursive=True)]
        addresses = listening_addresses(pids)
        assert addresses == {"127.0.0.1"}, addresses
        assert client.dashboard_link.startswith("http://127.0.0.1:")
    finally:
        client.close()
        client.cluster.close()


@pytest.mark.parametrize(
    ("scheduler", "named"),
    [
        ("tcp://127.0.0.1:9", "127.0.0.1:9"),  # nothing listens there
        ("tcp://[bad", "tcp://[bad"),
        ("{sched}", "sched.json"),  # a scheduler file that is not JSON
    ],
)
def test_unusable_scheduler_is_refused(
    scheduler: str, named: str, cohort: Path, blob_model: Path, tmp_path: Path
) -> None:
    (tmp_path / "sched.json").write_text("{not json")
    manifest = manifest_of(tmp_path, [f"{cohort}/s0.svs,s0,BRCA"])
    out = tmp_path / "out"
    result = run_cli(
        str(manifest), "--out", str(out), "--model", str(blob_model),
        "--scheduler", scheduler.format(sched=tmp_path / "sched.json"),
        env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"}, timeout=90,
    )  # fmt: skip
    assert named in one_line_error(result)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "error" and run["finished"] and named in run["error"]
