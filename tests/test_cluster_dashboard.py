"""The Dask dashboard a run prints: it renders in a real headless browser while the run works,
and its task stream shows the pipeline's ``segment-tiles-<slide>-<n>`` tasks."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline.cluster import dashboard_link, dashboard_message
from pipeline.config import Config
from pipeline.testing import synthetic_slide_cohort
from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Every ColumnDataSource of the page with a `key` column (the task stream's rectangles: one per
# finished task, keyed by the full task key), as the page's BokehJS holds them.
TASK_KEYS_JS = """
(() => {
  if (typeof Bokeh === "undefined" || !Bokeh.documents || !Bokeh.documents.length) return null;
  const keys = [];
  for (const doc of Bokeh.documents) {
    for (const model of doc.all_models) {
      const data = model.data;
      if (!data) continue;
      const column = data instanceof Map ? data.get("key") : data["key"];
      if (column) for (const k of column) keys.push(String(k));
    }
  }
  return JSON.stringify({keys: keys, task_stream: Bokeh.documents.some(d => d.get_model_by_name("task_stream"))});
})()
"""


def test_dashboard_message_says_where_and_how_to_reach_it() -> None:
    local = dashboard_message("http://127.0.0.1:8787/status", Config(), hostname="node7")
    assert "http://127.0.0.1:8787/status" in local and "ssh -L 8787:localhost:8787 node7" in local
    remote = dashboard_message("http://10.1.2.3:8790/status", Config(scheduler="tls://10.1.2.3:8786"))
    assert "the scheduler's" in remote and "ssh -L 8790:localhost:8790 10.1.2.3" in remote
    assert "http://localhost:8790/status" in remote
    assert dashboard_message(None, Config(dashboard="off")).endswith("none (--dashboard off)")
    assert "bokeh" in dashboard_message(None, Config(scheduler="tcp://h:8786"))


def test_scheduler_runs_print_the_schedulers_dashboard() -> None:
    """A run against a running scheduler (``--scheduler``) reports that scheduler's dashboard,
    and one without a dashboard is reported as such instead of failing the run."""
    from distributed import Client, LocalCluster

    pytest.importorskip("bokeh")
    with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster:
        with Client(cluster.scheduler_address) as client:  # as --scheduler connects: by address
            link = dashboard_link(client)
            assert link is not None and link.startswith("http://127.0.0.1:") and link.endswith("/status")
            assert link == cluster.dashboard_link
    with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None) as cluster:
        with Client(cluster.scheduler_address) as client:
            assert dashboard_link(client) is None


async def _cdp(ws_url: str, commands: list[tuple[str, dict]]) -> list[dict]:
    """Send DevTools-protocol commands to one page target and return their results in order."""
    from tornado.websocket import websocket_connect

    conn = await websocket_connect(ws_url, max_message_size=64 * 2**20)
    results = []
    try:
        for i, (method, params) in enumerate(commands, start=1):
            await conn.write_message(json.dumps({"id": i, "method": method, "params": params}))
            while True:
                message = await asyncio.wait_for(conn.read_message(), timeout=30)
                assert message is not None, "the browser closed the DevTools connection"
                reply = json.loads(message)
                if reply.get("id") == i:
                    assert "error" not in reply, reply
                    results.append(reply["result"])
                    break
    finally:
        conn.close()
    return results


def _devtools_page(profile: Path, deadline: float) -> str:
    """The DevTools websocket address of the browser's one page (the port from the profile)."""
    port_file = profile / "DevToolsActivePort"
    while time.time() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.1)
    raise AssertionError("chromium did not open its DevTools port")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_dashboard_renders_the_task_stream_while_a_run_works(blob_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("bokeh")
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    manifest = synthetic_slide_cohort(cohort, 6, 1100, 900, seed=40, prefix="d")
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.run",
            str(manifest),
            "--out",
            str(tmp_path / "out"),
            "--model",
            str(blob_model),
            "--tile-px",
            "128",
            "--workers",
            "1",
            "--threads",
            "1",
            "--no-progress",
            "--no-qc",
            "--dashboard",
            "127.0.0.1:0",  # a free port: other runs on this machine may hold 8787
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    browser = None
    shot = tmp_path / "dashboard.png"  # kept with the test's tmp dir as its artifact
    try:
        assert run.stderr is not None
        line = ""
        for line in run.stderr:
            if line.startswith("dask dashboard:"):
                break
        # keep reading what the run writes, so that a full pipe never stalls it
        threading.Thread(target=run.stderr.read, daemon=True).start()
        found = re.search(r"(http://127\.0\.0\.1:\d+)/status", line)
        assert found, f"no dashboard address printed: {line!r}"
        url = found.group(1) + "/status"
        profile = tmp_path / "chromium-profile"
        browser = subprocess.Popen(
            [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0"]
            + ["--window-size=1400,1000", url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 240
        ws = _devtools_page(profile, deadline)
        keys: list[str] = []
        state: dict = {}
        while time.time() < deadline and run.poll() is None:
            (result,) = asyncio.run(_cdp(ws, [("Runtime.evaluate", {"expression": TASK_KEYS_JS})]))
            value = result["result"].get("value")
            state = json.loads(value) if value else {}
            keys = [k for k in state.get("keys", []) if k.startswith("segment-tiles-")]
            if keys:
                break
            time.sleep(0.5)
        assert keys, f"no segment-tiles task in the dashboard's task stream while the run worked: {state}"
        assert state["task_stream"]
        assert all(re.fullmatch(r"segment-tiles-d\d-\d+-\w+", k) for k in keys), keys[:5]
        time.sleep(1.0)  # one more refresh so the screenshot shows the rectangles
        (shot_result,) = asyncio.run(_cdp(ws, [("Page.captureScreenshot", {"format": "png"})]))
        shot.write_bytes(base64.b64decode(shot_result["data"]))
    finally:
        if browser is not None:
            browser.terminate()
            browser.wait(timeout=30)
        if run.poll() is None:  # the run, its nannies and workers: the process group started here
            os.killpg(run.pid, signal.SIGTERM)
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    from PIL import Image

    image = Image.open(shot)
    assert image.size[0] >= 800 and len(np.unique(np.asarray(image.convert("L")))) > 16  # a rendered page, not blank


def _answers_http(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            return s.recv(16).startswith(b"HTTP/")
    except OSError:  # refused, reset or silent: no HTTP server there
        return False


def test_dashboard_off_starts_no_http_server() -> None:
    """``--dashboard off``: the local cluster's scheduler and workers listen on their Dask ports
    only; none of them answers HTTP (no dashboard, no /health, no /metrics)."""
    import psutil

    from pipeline.cluster import connect
    from pipeline.config import load_config

    config = load_config(None, {"dashboard": "off", "n_workers": 1, "threads_per_worker": 1}, environ={})
    client = connect(config)
    try:
        client.wait_for_workers(1, timeout=120)
        pids = {os.getpid(), *(c.pid for c in psutil.Process().children(recursive=True))}
        ports = {
            c.laddr.port
            for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids
        }
        assert len(ports) >= 3  # scheduler, nanny, worker
        assert [p for p in sorted(ports) if _answers_http(p)] == []
        assert dashboard_link(client) is None
    finally:
        client.close()
        client.cluster.close()


def test_dashboard_opens_only_when_asked() -> None:
    from pipeline.cluster import dashboard_address
    from pipeline.config import Config, load_config

    assert dashboard_address(Config()).startswith("127.0.0.1:")
    config = load_config(None, {"dashboard": "0.0.0.0:8787"}, environ={})
    assert dashboard_address(config) == "0.0.0.0:8787"
    with pytest.raises(ValueError, match="dashboard"):
        load_config(None, {"dashboard": "8787"}, environ={})
