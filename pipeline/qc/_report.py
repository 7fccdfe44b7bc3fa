"""report.html: one self-contained page a pathologist opens in a browser.

Everything is inline: plots are compact hand-written SVG elements, images are JPEG data URIs,
styles sit in one <style> block, and there is no script and no external resource. The page is
``report.html.j2`` rendered by jinja2 with autoescape on. A cohort of at most
:data:`SMALL_COHORT_SLIDES` slides shows every segmented slide: its thumbnail with its nuclei
drawn and all its review patches. A bigger one shows the slides selected for review (thumbnail +
a few overlay patches). Images are embedded within a byte budget, so the page stays small at
TCGA scale (5,060 slides); past the budget a slide links to its review images on disk instead.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup
from PIL import Image

from pipeline.io.outputs.status import SlideStatus
from pipeline.qc._rules import ADEQUATE_MIN_PRECISION_RECALL, NUM_NUCLEI, STATISTICS, TailCut

# Embedded image bytes allowed in the page: keeps report.html well under 50 MB at 5,060 slides
# (≈ 500 selected slides at 2 % × ~60 kB each would otherwise be ~30 MB, ~60 MB at 4 %).
REPORT_IMAGE_BUDGET_BYTES = 30_000_000
PATCHES_PER_FLAGGED_SLIDE = 3  # overlay patches shown inline for each selected slide
SMALL_COHORT_SLIDES = 50  # up to this many slides, every segmented slide is shown with all its images
INLINE_THUMBNAIL_PX = 160
INLINE_OVERVIEW_PX = 512  # the nuclei-overlay thumbnail of a small cohort's slide, at its own size
INLINE_PATCH_PX = 256  # the 40x patch at full size: 1 px outlines survive
JPEG_QUALITY = 75
HIST_BINS = 30
PLOT_W, PLOT_H, PLOT_PAD = 340, 150, 28

_CSS = """
body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
h3{font-size:15px}table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.n{text-align:right}.plots{display:flex;flex-wrap:wrap;gap:12px}
.note{color:#a00}.muted{color:#777;font-size:12px}img{display:block}
.imgs{display:flex;gap:6px;flex-wrap:wrap}svg text{font-size:10px;fill:#333}
"""


def jpeg_bytes(rgb: np.ndarray, max_px: int, sharp: bool = False) -> bytes:
    """JPEG bytes of an RGB image no larger than ``max_px`` on its long side; ``sharp`` keeps
    full colour resolution (4:4:4), which pixel-sized coloured marks need."""
    im = Image.fromarray(rgb)
    im.thumbnail((max_px, max_px))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=JPEG_QUALITY, **({"subsampling": 0} if sharp else {}))
    return buf.getvalue()


def report_image_uri(qc_dir: Path, rel: str, max_px: int, overlay_only: bool, sharp: bool = False) -> str | None:
    """The data URI of a review image as the report shows it, cached beside the image.

    Decoding PNGs dominated rebuilds of a report with ~1,000 selected slides; the small JPEG
    is made once (``<name>.report<px>.jpg``) and later rebuilds only read its bytes.
    """
    src = qc_dir / rel
    cache = src.with_name(f"{src.stem}.report{max_px}{'s' if sharp else ''}.jpg")
    try:
        data = cache.read_bytes()
    except OSError:
        rgb = _load_rgb(src)
        if rgb is None:
            return None
        if overlay_only:
            rgb = rgb[:, rgb.shape[1] - rgb.shape[0] :]  # right half: outlines drawn
        data = jpeg_bytes(rgb, max_px, sharp)
        tmp = cache.with_name("." + cache.name)
        try:
            tmp.write_bytes(data)
            tmp.replace(cache)
        except OSError:
            pass  # a read-only qc folder still gets its report
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return "–"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def histogram_svg(
    values: np.ndarray,
    title: str,
    low: float | None,
    high: float | None,
    flagged: np.ndarray,
    log: bool = False,
) -> str:
    """An inline SVG histogram with the selection cuts drawn and the selected values as a rug.

    ``log`` bins log10 of the values (nuclei counts span orders of magnitude between a biopsy
    and a resection); the axis labels stay in the values' own units.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]

    def t(x: np.ndarray | float) -> np.ndarray:
        return np.log10(np.maximum(x, 1.0)) if log else np.asarray(x, dtype=np.float64)

    w, h, pad = PLOT_W, PLOT_H, PLOT_PAD
    scale = ", log scale" if log else ""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 24}" role="img">']
    parts.append(f'<text x="{pad}" y="12" font-weight="bold">{html.escape(title)} (n={v.size}{scale})</text>')
    if v.size == 0:
        parts.append(f'<text x="{pad}" y="{h // 2}">no values</text></svg>')
        return "".join(parts)
    tv = t(v)
    lo, hi = float(tv.min()), float(tv.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, _ = np.histogram(tv, bins=HIST_BINS, range=(lo, hi))
    x0, x1, y0, y1 = pad, w - 8, h - 4, 18
    sx = (x1 - x0) / (hi - lo)
    sy = (y0 - y1) / max(int(counts.max()), 1)
    bars = []
    bw = (x1 - x0) / HIST_BINS
    for i, c in enumerate(counts):
        if c:
            bh = c * sy
            bars.append(f"M{x0 + i * bw:.1f} {y0}v{-bh:.1f}h{bw - 0.5:.1f}v{bh:.1f}z")
    parts.append(f'<path d="{"".join(bars)}" fill="#8aa9c9"/>')
    parts.append(f'<path d="M{x0} {y0}H{x1}" stroke="#444"/>')
    fv = np.asarray(flagged, dtype=np.float64)
    fv = fv[np.isfinite(fv)]
    if fv.size:
        rug = "".join(f"M{x0 + (f - lo) * sx:.1f} {y0 + 2}v6" for f in t(fv))
        parts.append(f'<path d="{rug}" stroke="#c00"/>')
    for cut, anchor in ((low, "end"), (high, "start")):
        if cut is not None and np.isfinite(cut):
            cx = x0 + (min(max(float(t(cut)), lo), hi) - lo) * sx
            parts.append(f'<path d="M{cx:.1f} {y1}V{y0}" stroke="#c00" stroke-dasharray="3 2"/>')
            dx = -2 if anchor == "end" else 2
            parts.append(f'<text x="{cx + dx:.1f}" y="{y1 + 8}" text-anchor="{anchor}" fill="#c00">{_fmt(cut)}</text>')
    parts.append(f'<text x="{x0}" y="{h + 20}">{_fmt(float(v.min()))}</text>')
    parts.append(f'<text x="{x1}" y="{h + 20}" text-anchor="end">{_fmt(float(v.max()))}</text>')
    parts.append("</svg>")
    return "".join(parts)


class _ImageBudget:
    def __init__(self, budget: int):
        self.left = budget
        self.refused = 0

    def take(self, uri: str) -> bool:
        if len(uri) > self.left:
            self.refused += 1
            return False
        self.left -= len(uri)
        return True


def _load_rgb(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError:
        return None


def _plan_images(
    qc_dir: Path, shown: Sequence[str], patches: Mapping[str, Any], n_images: int, overview: bool
) -> tuple[dict[str, dict[str, Any]], int]:
    """The images of every shown slide, sharing the byte budget fairly.

    Images are embedded round by round - every slide's thumbnail first (with its nuclei drawn,
    when ``overview`` and the slide has that picture), then every slide's first overlay patch,
    then the second, ... - so when the budget runs out each slide still has its most useful
    images and the rest are links to the files on disk.
    """
    budget = _ImageBudget(REPORT_IMAGE_BUDGET_BYTES)
    cells: dict[str, dict[str, Any]] = {}
    for sid in shown:
        sp = patches.get(sid)
        cells[sid] = {"images": [], "links": [], "patch_note": sp.note if sp is not None else ""}
    for rnd in range(n_images + 1):
        for sid in shown:
            sp = patches.get(sid)
            if sp is None:
                continue
            if rnd == 0:
                rel = sp.overlay if overview and sp.overlay else sp.thumbnail
                px, alt, crop = (INLINE_OVERVIEW_PX if overview else INLINE_THUMBNAIL_PX), "thumbnail", False
                title = f"{sid}: nuclei in green ({rel})" if rel == sp.overlay else rel
                sharp = rel == sp.overlay
            else:
                rel = sp.images[rnd - 1] if rnd - 1 < len(sp.images) else ""
                px, alt, crop, title, sharp = INLINE_PATCH_PX, "patch", True, rel, False
            if not rel:
                continue
            uri = report_image_uri(qc_dir, rel, px, crop, sharp)
            if uri is None:
                continue
            if budget.take(uri):
                cells[sid]["images"].append({"uri": uri, "alt": alt, "title": title})
            else:
                cells[sid]["links"].append({"href": rel, "name": Path(rel).name})
    return cells, budget.refused


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(resources.files("pipeline.qc").joinpath("report.html.j2").read_text(encoding="utf-8"))


def render_report(
    qc_dir: Path,
    wsi_qc: pd.DataFrame,
    tiers: pd.DataFrame,
    cuts: Sequence[TailCut],
    patches: Mapping[str, Any],
    params: Mapping[str, Any],
) -> str:
    """The whole page as one HTML string."""
    ok = wsi_qc[wsi_qc["Status"] == SlideStatus.OK]
    failed = wsi_qc[wsi_qc["Status"] != SlideStatus.OK]
    selected_mask = wsi_qc["SelectedForReview"] == "yes"
    show_all = len(wsi_qc) <= SMALL_COHORT_SLIDES
    shown_mask = (wsi_qc["Status"] == SlideStatus.OK) if show_all else selected_mask
    shown = wsi_qc.loc[shown_mask, "WSI-ID"].tolist()
    n_images = max(int(params.get("n_patches", 0)), 0) if show_all else PATCHES_PER_FLAGGED_SLIDE
    cells, refused = _plan_images(qc_dir, shown, patches, n_images, overview=show_all)
    cut_by = {(c.cancer_type, c.statistic): c for c in cuts}
    sections = []
    for ctype in sorted(wsi_qc["CancerType"].unique()):
        group = wsi_qc[wsi_qc["CancerType"] == ctype]
        gok = group[group["Status"] == SlideStatus.OK]
        plots = []
        for stat in STATISTICS:
            cut = cut_by.get((ctype, stat.column))
            values = gok[stat.column].to_numpy(dtype=np.float64)
            flagged_mask = gok["Note"].str.contains(stat.column, regex=False).to_numpy()
            svg = histogram_svg(
                values,
                stat.column,
                cut.low_cut if cut else None,
                cut.high_cut if cut else None,
                values[flagged_mask],
                log=stat.column == NUM_NUCLEI,
            )
            plots.append(Markup(svg))  # built here from numbers and escaped titles
        rows = []
        for _, row in group[shown_mask[group.index]].iterrows():
            sid = row["WSI-ID"]
            rows.append(
                {
                    "id": sid,
                    "note": row["Note"],
                    "nuclei": _fmt(row["NumNucleiSample"]),
                    "mean": _fmt(row["SizeOfNuclei-Average"]),
                    "std": _fmt(row["SizeOfNuclei-Stddev"]),
                    "result": row["QCResult"],
                    **cells[sid],
                }
            )
        odd = gok[(gok["Flags"].fillna("") != "") | ~gok["MPPSource"].fillna("").str.match(r"(slide|manifest)")]
        scale_rows = [
            [r["WSI-ID"], _fmt(r["MPP"]), r["MPPSource"], _fmt(r["MPPEstimate"]), r["Flags"], _fmt(r["ArtifactMM2"])]
            for _, r in odd.iterrows()
        ]
        gfail = group[group["Status"] != SlideStatus.OK]
        sections.append(
            {
                "ctype": ctype,
                "n": len(group),
                "n_ok": len(gok),
                "n_failed": len(group) - len(gok),
                "n_selected": int(selected_mask[group.index].sum()),
                "plots": plots,
                "notes": [
                    {"statistic": c.statistic, "note": c.note, "n": c.n}
                    for c in cuts
                    if c.cancer_type == ctype and c.note
                ],
                "shown": rows,
                "scale": scale_rows,
                "failed": gfail[["WSI-ID", "Note"]].values.tolist(),
            }
        )
    cols = [str(c) for c in tiers.columns]
    return _template().render(
        css=Markup(_CSS),
        n_slides=len(wsi_qc),
        n_ok=len(ok),
        n_failed=len(failed),
        n_types=wsi_qc["CancerType"].nunique(),
        n_selected=int(selected_mask.sum()),
        outer_percent=f"{params['outer_percent']:g}",
        n_patches=params["n_patches"],
        seed=params["seed"],
        show_all=show_all,
        small_cohort=SMALL_COHORT_SLIDES,
        adequate=f"{ADEQUATE_MIN_PRECISION_RECALL:.0%}",
        tiers={"columns": cols, "rows": tiers.values.tolist(), "numeric": [c != "CancerType" for c in cols]},
        sections=sections,
        refused=refused,
    )
