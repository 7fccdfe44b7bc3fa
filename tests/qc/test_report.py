"""report.html: self-contained, complete, within its size budget, and rendered by a real browser."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import pipeline.qc._report as report_module
from pipeline.qc import build_qc
from pipeline.testing.qc_cohorts import synthetic_png_slide, synthetic_stats_cohort, tissue_box, write_nuclei_parquet

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Resources(HTMLParser):
    """Collects every tag and the resource-bearing attributes of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.srcs: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for k, v in attrs:
            if k == "src":
                self.srcs.append(v or "")
            elif k == "href":
                self.hrefs.append(v or "")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 BRCA + 60 LUAD slides with planted outliers; the selected BRCA slides have real
    (generated) slide images and nuclei, so the report embeds thumbnails and patches."""
    out = tmp_path_factory.mktemp("report")
    expected = synthetic_stats_cohort(out, {"BRCA": 100, "LUAD": 60}, seed=11)
    png = out / "slide.png"
    polys = synthetic_png_slide(png, seed=2)
    for sid, notes in expected.items():
        if notes and sid.startswith("BRCA"):
            stats_path = out / "slides" / sid / "stats.json"
            stats = json.loads(stats_path.read_text())
            stats["slide_path"] = str(png)
            stats_path.write_text(json.dumps(stats))
            write_nuclei_parquet(out / "slides" / sid / "nuclei.parquet", polys)
    build_qc(out, patches="flagged", n_patches=4)
    return out


def test_report_is_self_contained(cohort: Path) -> None:
    page = (cohort / "qc" / "report.html").read_text(encoding="utf-8")
    parser = _Resources()
    parser.feed(page)
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    assert parser.srcs and all(s.startswith("data:image/") for s in parser.srcs)
    assert all(not h.startswith(("http:", "https:", "//")) for h in parser.hrefs)
    assert "url(" not in page and "@import" not in page


def test_report_has_tiers_distributions_and_flagged_slides(cohort: Path) -> None:
    page = (cohort / "qc" / "report.html").read_text(encoding="utf-8")
    for tier in ("Best", "Good", "Adequate", "Problematic", "Unacceptable"):
        assert f"<th>{tier}</th>" in page
    assert page.count("<svg") == 3 * 2  # three distributions per cancer type
    assert page.count('stroke-dasharray="3 2"') == 5 * 2  # five examined tails per type
    assert "BRCA-00000" in page and "NumNucleiSample low (outer 2%)" in page
    assert 'alt="thumbnail"' in page and 'alt="patch"' in page
    assert "failed: unreadable slide" in page


def test_report_image_budget_links_instead_of_embedding(cohort: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_module, "REPORT_IMAGE_BUDGET_BYTES", 40_000)
    build_qc(cohort, patches="none")
    page = (cohort / "qc" / "report.html").read_text(encoding="utf-8")
    embedded = sum(len(m) for m in re.findall(r'src="(data:[^"]*)"', page))
    assert 0 < embedded <= 40_000
    assert 'href="patches/' in page and "Image budget reached" in page
    monkeypatch.undo()
    build_qc(cohort, patches="none")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(cohort: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    report = (cohort / "qc" / "report.html").resolve()
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--screenshot={shot}",
                "--window-size=1200,2000",
                report.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert img.shape[:2] == (2000, 1200)
    non_white = (img < 240).any(axis=-1)
    assert non_white.mean() > 0.02  # text, tables, plots: not a blank page
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    bars = (abs(r - 0x8A) < 12) & (abs(g - 0xA9) < 12) & (abs(b - 0xC9) < 12)  # histogram bars
    pink = (r > 200) & (g < 180) & (b > 160) & (r - g > 50)  # embedded H&E thumbnails / patches
    assert bars.sum() > 500
    assert pink.sum() > 500


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """15 segmented slides (+ 2 failed) with real (generated) images and nuclei: a cohort small
    enough that the report shows every slide."""
    out = tmp_path_factory.mktemp("small")
    expected = synthetic_stats_cohort(out, {"BRCA": 8, "LUAD": 7}, seed=5)
    png = out / "slide.png"
    polys = synthetic_png_slide(png, seed=4)
    ok = [sid for sid in expected if "-F" not in sid]
    for sid in ok:
        stats_path = out / "slides" / sid / "stats.json"
        stats = json.loads(stats_path.read_text())
        stats["slide_path"] = str(png)
        stats_path.write_text(json.dumps(stats))
        write_nuclei_parquet(out / "slides" / sid / "nuclei.parquet", polys)
    build_qc(out, patches="all", n_patches=4)
    return out, ok


def _slide_rows(page: str) -> dict[str, str]:
    """The report's image row of every slide it shows, by slide id."""
    return dict(re.findall(r"<tr id='slide-([^']+)'>.*?<tr><td colspan='6'>(.*?)</td></tr>", page, flags=re.S))


def test_small_cohort_report_shows_every_slide_with_nuclei_and_patches(small_cohort: tuple[Path, list[str]]) -> None:
    out, ok = small_cohort
    assert len(ok) + 2 <= report_module.SMALL_COHORT_SLIDES
    page = (out / "qc" / "report.html").read_text(encoding="utf-8")
    rows = _slide_rows(page)
    assert sorted(rows) == sorted(ok)  # every segmented slide, not only the selected ones
    for sid, cell in rows.items():
        assert cell.count('alt="thumbnail"') == 1, sid
        assert cell.count('alt="patch"') == 4, sid
        assert f"{sid}: nuclei in green" in cell
    # the page's own copy of the overlay still shows the nuclei (JPEG without colour subsampling)
    uri = re.search(r'src="data:image/jpeg;base64,([^"]+)" alt="thumbnail"', rows[ok[0]])
    assert uri is not None
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.group(1)))).convert("RGB")).astype(np.int16)
    r, g, b = shown[..., 0], shown[..., 1], shown[..., 2]
    assert ((g > r + 40) & (g > b + 40)).mean() > 0.005
    assert "Every segmented slide" in page and "Selected for visual review" not in page
    assert "failed: unreadable slide" in page


def test_nuclei_overlay_marks_where_the_nuclei_are(small_cohort: tuple[Path, list[str]]) -> None:
    out, ok = small_cohort
    plain = np.asarray(Image.open(out / "qc" / "patches" / ok[0] / "thumbnail.jpg").convert("RGB")).astype(np.int16)
    over = np.asarray(Image.open(out / "qc" / "patches" / ok[0] / "thumbnail_nuclei.jpg").convert("RGB"))
    over = over.astype(np.int16)
    r, g, b = over[..., 0], over[..., 1], over[..., 2]
    green = (g > r + 40) & (g > b + 40)  # H&E has none: pink and purple have less green than red or blue
    h, w = green.shape
    cx, cy, ax, ay = tissue_box((w, h))
    yy, xx = np.mgrid[:h, :w]
    inside = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 < 0.8
    outside = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 > 1.3
    assert green[inside].mean() > 0.05  # nuclei drawn over the tissue
    assert green[outside].mean() < 0.001  # and nowhere else
    pr, pg, pb = plain[..., 0], plain[..., 1], plain[..., 2]
    assert ((pg > pr + 40) & (pg > pb + 40)).mean() < 0.001  # the plain thumbnail stays as it was


def test_big_cohort_report_shows_only_the_selected_slides(cohort: Path) -> None:
    page = (cohort / "qc" / "report.html").read_text(encoding="utf-8")
    rows = _slide_rows(page)
    wsi = pd.read_csv(cohort / "qc" / "wsi_qc.csv")
    assert rows and len(rows) < 160 // 4  # the selected slides, not all 160
    assert set(rows) == set(wsi.loc[wsi["SelectedForReview"] == "yes", "WSI-ID"])
    assert "Selected for visual review" in page


def test_report_escapes_what_the_data_says(tmp_path: Path) -> None:
    """Cancer types and notes come from stats.json files: the template escapes them."""
    synthetic_stats_cohort(tmp_path, {"BRCA": 8}, seed=1)
    for stats_path in (tmp_path / "slides").glob("*/stats.json"):
        stats = json.loads(stats_path.read_text())
        stats["cancer_type"] = "<img src=x onerror=alert(1)>"
        stats_path.write_text(json.dumps(stats))
    build_qc(tmp_path, patches="none")
    page = (tmp_path / "qc" / "report.html").read_text(encoding="utf-8")
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
