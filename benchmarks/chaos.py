"""Chaos: a cohort with bad inputs, run on two workers that keep being killed, with the driver
interrupted once, then rerun. Reports the wall time against a clean run of the same cohort in the
same session, and whether every good slide's outputs are byte-identical to the clean run's.

    python benchmarks/chaos.py [--good 54] [--kill-every 5] [--model FILE.onnx]   (from the repository root)

The cohort: ``--good`` generated slides of 300-600 px a side (pyramidal JPEG TIFFs, random sizes)
and eight bad inputs (a truncated slide, a slide cut after its header, a missing file, a text file
named .svs, an empty file, a folder named .svs, random bytes named .svs, a symlink loop): 12.9 %
of 62 rows. The model is the blob contract model (``pipeline.testing.build_blob_model``), so the
figures measure the pipeline's handling of faults, not inference.

Both runs use a real ``dask scheduler`` and two ``dask worker`` processes of one thread each
(``pipeline.testing.cluster.ExternalCluster``, as the tests use it). The chaos run: every ``--kill-every`` seconds
one worker (alternately, nanny and all) is SIGKILLed and a fresh one started in its place; the
driver is SIGINTed once, when a third of the good slides are published, and the same command is
then run again (the rerun), with the killing still going on. A good slide that the killing failed
(``max_attempts`` worker deaths while it was in flight) would be retried by a last, calm rerun
with ``--retry-failed``; how many needed it is reported.

Byte-identical means: every file of the slide's folder has the same bytes as in the clean run,
``stats.json`` compared without its timings (``seconds``, ``stage_seconds``), which are not
outputs (both runs read the same slide files).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from pipeline.testing.bench import ratio, record, write_results
from pipeline.testing.cluster import ExternalCluster, run_args, wait_until

ROOT = Path(__file__).resolve().parents[1]

# The bad inputs: (slide id, how the file is made). Every one must fail alone, with its reason.
BAD_INPUTS = (
    "truncated",  # the first third of a good slide
    "header_only",  # the first 64 bytes of a good slide: a TIFF header pointing past the end
    "missing",  # listed in the manifest, not on disk
    "text",  # a text file named .svs
    "empty",  # 0 bytes
    "folder",  # a folder named .svs
    "noise",  # random bytes named .svs
    "loop",  # a symlink to itself
)
VOLATILE_STATS = ("seconds", "stage_seconds")  # timings: not outputs
SIDE_RANGE = (300, 600)  # px a side of the generated slides (one to nine 256-px tiles)


def make_cohort(folder: Path, n_good: int, seed: int) -> tuple[Path, list[str]]:
    """``n_good`` generated slides plus the bad inputs, and their manifest; returns the manifest
    and the good slides' ids."""
    from pipeline.testing import synthetic_slide_image, write_pyramidal_tiff

    rng = np.random.default_rng(seed)
    rows = ["slide_path,slide_id,cancer_type"]
    good = []
    for i in range(n_good):
        width, height = (int(v) for v in rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1, size=2))
        image, _ = synthetic_slide_image(width, height, seed=seed + i)
        write_pyramidal_tiff(folder / f"g{i:02d}.svs", image, mpp=0.25)
        rows.append(f"g{i:02d}.svs,g{i:02d},{('BRCA', 'LUAD', 'GBM')[i % 3]}")
        good.append(f"g{i:02d}")
    data = (folder / "g00.svs").read_bytes()
    (folder / "truncated.svs").write_bytes(data[: len(data) // 3])
    (folder / "header_only.svs").write_bytes(data[:64])
    (folder / "text.svs").write_text("slide_path,slide_id\nthis is not a slide\n")
    (folder / "empty.svs").write_bytes(b"")
    (folder / "folder.svs").mkdir()
    (folder / "noise.svs").write_bytes(rng.integers(0, 256, size=200_000, dtype=np.uint8).tobytes())
    (folder / "loop.svs").symlink_to("loop.svs")
    # the bad rows spread through the manifest, not bunched at its end
    for k, name in enumerate(BAD_INPUTS):
        rows.insert(1 + (k + 1) * len(good) // (len(BAD_INPUTS) + 1) + k, f"{name}.svs,{name},BRCA")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest, good


def slide_digest(slide_dir: Path) -> dict[str, str]:
    """sha256 of every file in a published slide folder (stats.json without its volatile fields)."""
    digest = {}
    for path in sorted(p for p in slide_dir.rglob("*") if p.is_file()):
        name = str(path.relative_to(slide_dir))
        if name == "stats.json":
            stats = json.loads(path.read_text())
            for key in VOLATILE_STATS:
                stats.pop(key, None)
            data = json.dumps(stats, sort_keys=True).encode()
        else:
            data = path.read_bytes()
        digest[name] = hashlib.sha256(data).hexdigest()
    return digest


def published(out: Path) -> set[str]:
    slides = out / "slides"
    return {p.name for p in slides.iterdir() if not p.name.startswith(".")} if slides.exists() else set()


class WorkerKiller(threading.Thread):
    """SIGKILLs one worker of ``cluster`` (alternately) every ``every`` seconds and starts a fresh
    one in its place."""

    def __init__(self, cluster: ExternalCluster, every: float) -> None:
        super().__init__(daemon=True)
        self.cluster, self.every = cluster, every
        self.stop = threading.Event()
        self.kills = 0

    def run(self) -> None:
        while not self.stop.wait(self.every):
            i = self.kills % len(self.cluster.workers)
            self.cluster.kill_worker(i)
            self.cluster.workers[i] = self.cluster.start_worker(i)
            self.kills += 1


def driver(manifest: Path, out: Path, model: Path, cluster: ExternalCluster, *extra: str) -> subprocess.Popen:
    log = open(out.parent / f"{out.name}.log", "a")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        run_args(manifest, out, model, cluster.file, *extra), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )


def clean_run(manifest: Path, out: Path, model: Path, tmp: Path) -> tuple[float, int]:
    cluster = ExternalCluster(tmp, 2)
    try:
        t0 = time.perf_counter()
        proc = driver(manifest, out, model, cluster)
        code = proc.wait(timeout=3600)
        return time.perf_counter() - t0, code
    finally:
        cluster.close()


def chaos_run(
    manifest: Path, out: Path, model: Path, tmp: Path, good: list[str], kill_every: float
) -> dict[str, object]:
    cluster = ExternalCluster(tmp, 2)
    killer = WorkerKiller(cluster, kill_every)
    result: dict[str, object] = {}
    try:
        t0 = time.perf_counter()
        proc = driver(manifest, out, model, cluster)
        killer.start()
        wait_until(lambda: len(published(out) & set(good)) >= len(good) // 3 or proc.poll() is not None, 3600)
        proc.send_signal(signal.SIGINT)
        result["interrupted_exit"] = proc.wait(timeout=600)
        result["published_at_interrupt"] = len(published(out) & set(good))
        result["run_json_after_interrupt"] = json.loads((out / "run.json").read_text())["status"]
        result["interrupted_at_s"] = round(time.perf_counter() - t0, 1)
        rerun = driver(manifest, out, model, cluster)
        result["rerun_exit"] = rerun.wait(timeout=3600)
        result["run_json_after_rerun"] = json.loads((out / "run.json").read_text())["status"]
        killer.stop.set()
        killer.join()
        result["chaos_s"] = time.perf_counter() - t0
        result["worker_kills"] = killer.kills
        statuses = json.loads((out / "run.json").read_text())["slides"]
        casualties = [s for s in good if statuses.get(s, {}).get("status") != "ok"]
        result["good_failed_by_kills"] = casualties
        result["their_reasons"] = sorted({str(statuses[s].get("error")) for s in casualties if s in statuses})
        if result["run_json_after_rerun"] != "failed slides":  # what stopped the rerun, from its log
            result["driver_log_tail"] = (out.parent / f"{out.name}.log").read_text().splitlines()[-25:]
        if casualties:  # the last, calm rerun
            last = driver(manifest, out, model, cluster, "--retry-failed")
            result["retry_exit"] = last.wait(timeout=3600)
        result["total_s"] = time.perf_counter() - t0
        return result
    finally:
        killer.stop.set()
        cluster.close()


def main() -> None:
    from pipeline.testing import build_blob_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--good", type=int, default=54, help="good slides (the bad inputs come on top: 8)")
    p.add_argument("--kill-every", type=float, default=5.0, help="seconds between worker kills")
    p.add_argument("--seed", type=int, default=70)
    p.add_argument("--model", default="", help="ONNX model (default: the blob contract model, built here)")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it (logs, outputs), not a temporary one")
    p.add_argument("--out", type=Path, default=None, help="also write chaos.json and chaos.md here")
    args = p.parse_args()
    # the dask workers import this checkout's pipeline, as the drivers (run from it) do
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp_name:
        tmp = Path(tmp_name) if args.keep is None else args.keep
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "cohort").mkdir()
        model = Path(args.model) if args.model else build_blob_model(tmp / "blob.onnx")
        manifest, good = make_cohort(tmp / "cohort", args.good, args.seed)
        for name in ("clean_cluster", "chaos_cluster"):
            (tmp / name).mkdir()
        clean_s, clean_exit = clean_run(manifest, tmp / "clean", model, tmp / "clean_cluster")
        chaos = chaos_run(manifest, tmp / "chaos", model, tmp / "chaos_cluster", good, args.kill_every)
        clean_status = json.loads((tmp / "clean" / "run.json").read_text())["slides"]
        chaos_run_json = json.loads((tmp / "chaos" / "run.json").read_text())
        chaos_status = chaos_run_json["slides"]
        different = [
            s
            for s in good
            if chaos_status.get(s, {}).get("status") != "ok"
            or slide_digest(tmp / "clean" / "slides" / s) != slide_digest(tmp / "chaos" / "slides" / s)
        ]
        bad_reasons = {b: (chaos_status.get(b) or {}).get("error") for b in BAD_INPUTS}
        leftovers = [p.name for p in (tmp / "chaos" / "slides").iterdir() if p.name.startswith(".")]
    chaos_s = float(chaos.pop("chaos_s"))  # type: ignore[arg-type]
    total_s = float(chaos.pop("total_s"))  # type: ignore[arg-type]
    figures = {
        "model": "blob contract model" if not args.model else args.model,
        "rows": len(good) + len(BAD_INPUTS),
        "good": len(good),
        "bad": len(BAD_INPUTS),
        "bad_share": round(len(BAD_INPUTS) / (len(good) + len(BAD_INPUTS)), 3),
        "kill_every_s": args.kill_every,
        "clean_s": round(clean_s, 1),
        "clean_exit": clean_exit,
        "clean_ok": sum(1 for s in clean_status.values() if s["status"] == "ok"),
        "chaos_s": round(chaos_s, 1),
        "chaos_over_clean": ratio(chaos_s, clean_s),
        "total_with_retry_s": round(total_s, 1),
        **chaos,
        "final_run_json_status": chaos_run_json["status"],
        "good_not_identical": different,
        "bad_failed_with_reason": {b: bool(r) for b, r in bad_reasons.items()},
        "bad_reasons": bad_reasons,
        "leftover_working_folders": leftovers,
    }
    write_results(record(figures), args.out, "chaos")


if __name__ == "__main__":
    main()
