"""report.html: one self-contained page a pathologist opens in a browser.

Everything is inline: plots are compact hand-written SVG elements, images are JPEG data URIs,
styles sit in one <style> block, and there is no script and no external resource. Images are
embedded only for the slides selected for review (thumbnail + a few overlay patches) and only
within a byte budget, so the page stays small at TCGA scale (5,060 slides); past the budget a
slide links to its review images on disk instead.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.qc._rules import ADEQUATE_MIN_PRECISION_RECALL, NUM_NUCLEI, STATISTICS, TailCut

# Embedded image bytes allowed in the page: keeps report.html well under 50 MB at 5,060 slides
# (≈ 500 selected slides at 2 % × ~60 kB each would otherwise be ~30 MB, ~60 MB at 4 %).
REPORT_IMAGE_BUDGET_BYTES = 30_000_000
PATCHES_PER_FLAGGED_SLIDE = 3  # overlay patches shown inline for each selected slide
INLINE_THUMBNAIL_PX = 160
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


def jpeg_bytes(rgb: np.ndarray, max_px: int) -> bytes:
    """JPEG bytes of an RGB image no larger than ``max_px`` on its long side."""
    im = Image.fromarray(rgb)
    im.thumbnail((max_px, max_px))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def report_image_uri(qc_dir: Path, rel: str, max_px: int, overlay_only: bool) -> str | None:
    """The data URI of a review image as the report shows it, cached beside the image.

    Decoding PNGs dominated rebuilds of a report with ~1,000 selected slides; the small JPEG
    is made once (``<name>.report<px>.jpg``) and later rebuilds only read its bytes.
    """
    src = qc_dir / rel
    cache = src.with_name(f"{src.stem}.report{max_px}.jpg")
    try:
        data = cache.read_bytes()
    except OSError:
        rgb = _load_rgb(src)
        if rgb is None:
            return None
        if overlay_only:
            rgb = rgb[:, rgb.shape[1] - rgb.shape[0] :]  # right half: outlines drawn
        data = jpeg_bytes(rgb, max_px)
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


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool] | None = None) -> str:
    numeric = numeric or [False] * len(columns)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="n">{html.escape(str(x))}</td>' if isnum else f"<td>{html.escape(str(x))}</td>"
            for x, isnum in zip(row, numeric, strict=True)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


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


def _plan_images(qc_dir: Path, selected: Sequence[str], patches: Mapping[str, Any]) -> tuple[dict[str, str], int]:
    """The images cell of every selected slide, sharing the byte budget fairly.

    Images are embedded round by round - every slide's thumbnail first, then every slide's
    first overlay patch, then the second, ... - so when the budget runs out each slide still
    has its most useful images and the rest are links to the files on disk.
    """
    budget = _ImageBudget(REPORT_IMAGE_BUDGET_BYTES)
    imgs: dict[str, list[str]] = {sid: [] for sid in selected}
    links: dict[str, list[str]] = {sid: [] for sid in selected}
    for rnd in range(PATCHES_PER_FLAGGED_SLIDE + 1):
        for sid in selected:
            sp = patches.get(sid)
            if sp is None:
                continue
            if rnd == 0:
                rel, px, alt, crop = sp.thumbnail, INLINE_THUMBNAIL_PX, "thumbnail", False
            else:
                rel = sp.images[rnd - 1] if rnd - 1 < len(sp.images) else ""
                px, alt, crop = INLINE_PATCH_PX, "patch", True
            if not rel:
                continue
            uri = report_image_uri(qc_dir, rel, px, crop)
            if uri is None:
                continue
            if budget.take(uri):
                imgs[sid].append(f'<img src="{uri}" alt="{alt}" title="{html.escape(rel)}">')
            else:
                links[sid].append(f'<a href="{html.escape(rel)}">{html.escape(Path(rel).name)}</a>')
    cells = {}
    for sid in selected:
        cell = f'<div class="imgs">{"".join(imgs[sid])}</div>'
        if links[sid]:
            cell += f'<div class="muted">on disk: {" ".join(links[sid])}</div>'
        sp = patches.get(sid)
        if sp is not None and sp.note:
            cell += f'<div class="muted">{html.escape(sp.note)}</div>'
        cells[sid] = cell
    return cells, budget.refused


def render_report(
    qc_dir: Path,
    wsi_qc: pd.DataFrame,
    tiers: pd.DataFrame,
    cuts: Sequence[TailCut],
    patches: Mapping[str, Any],
    params: Mapping[str, Any],
) -> str:
    """The whole page as one HTML string."""
    ok = wsi_qc[wsi_qc["Status"] == "ok"]
    failed = wsi_qc[wsi_qc["Status"] != "ok"]
    selected = wsi_qc.loc[wsi_qc["SelectedForReview"] == "yes", "WSI-ID"].tolist()
    n_sel = len(selected)
    image_cells, refused = _plan_images(qc_dir, selected, patches)
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>Nucleus segmentation QC</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Nucleus segmentation: cohort quality control</h1>",
        f"<p>{len(wsi_qc)} slides ({len(ok)} segmented, {len(failed)} failed) in "
        f"{wsi_qc['CancerType'].nunique()} cancer types; {n_sel} selected for visual review "
        f"(outer {params['outer_percent']:g}% per tail and cancer type; size spread: high tail only). "
        f"Random patches: {params['n_patches']} per slide, seed {params['seed']}.</p>",
        "<p class='muted'>Sizes are nucleus areas in pixels at 40x (0.25 µm/px). Tiers follow Hou et al. "
        "(Sci. Data 2020): Best 0%, Good ≤ 6.67%, Adequate ≤ 13.3%, Problematic ≤ 20%, Unacceptable "
        "&gt; 20% of the sampled regions unacceptable, or a failed whole-slide review. "
        f"A patch is adequate when both precision and recall of its outlines are at least "
        f"{ADEQUATE_MIN_PRECISION_RECALL:.0%}. Reviews go into review_sheet.csv (Adequate: yes/no) and "
        "wsi_review_sheet.csv (SegmentationUnacceptableOrNot: yes/no), then "
        "<code>python -m pipeline.qc DIR --reviews FILE...</code>.</p>",
        "<h2>Tiers per cancer type (as the paper's Table 2)</h2>",
    ]
    cols = list(tiers.columns)
    out.append(_table(cols, tiers.values.tolist(), [c != "CancerType" for c in cols]))
    cut_by = {(c.cancer_type, c.statistic): c for c in cuts}
    for ctype in sorted(wsi_qc["CancerType"].unique()):
        group = wsi_qc[wsi_qc["CancerType"] == ctype]
        gok = group[group["Status"] == "ok"]
        sel = group[group["SelectedForReview"] == "yes"]
        out.append(f"<h2 id='{html.escape(ctype)}'>{html.escape(ctype)}</h2>")
        out.append(
            f"<p>{len(group)} slides, {len(gok)} segmented, {len(group) - len(gok)} failed, "
            f"{len(sel)} selected for review.</p><div class='plots'>"
        )
        for stat in STATISTICS:
            cut = cut_by.get((ctype, stat.column))
            values = gok[stat.column].to_numpy(dtype=np.float64)
            flagged_mask = gok["Note"].str.contains(stat.column, regex=False).to_numpy()
            out.append(
                histogram_svg(
                    values,
                    stat.column,
                    cut.low_cut if cut else None,
                    cut.high_cut if cut else None,
                    values[flagged_mask],
                    log=stat.column == NUM_NUCLEI,
                )
            )
        out.append("</div>")
        small = [c for c in cuts if c.cancer_type == ctype and c.note]
        for c in small:
            out.append(f"<p class='note'>{html.escape(c.statistic)}: {html.escape(c.note)} (n={c.n}).</p>")
        if len(sel):
            out.append(
                "<h3>Selected for visual review</h3><table><tr><th>WSI-ID</th><th>Note</th>"
                "<th>Nuclei</th><th>Mean size</th><th>Size std</th><th>QCResult</th></tr>"
            )
            for _, row in sel.iterrows():
                out.append(
                    f"<tr><td>{html.escape(row['WSI-ID'])}</td><td>{html.escape(row['Note'])}</td>"
                    f"<td class='n'>{_fmt(row['NumNucleiSample'])}</td>"
                    f"<td class='n'>{_fmt(row['SizeOfNuclei-Average'])}</td>"
                    f"<td class='n'>{_fmt(row['SizeOfNuclei-Stddev'])}</td>"
                    f"<td>{html.escape(row['QCResult'])}</td></tr>"
                    f"<tr><td colspan='6'>{image_cells[row['WSI-ID']]}</td></tr>"
                )
            out.append("</table>")
        odd = gok[(gok["Flags"].fillna("") != "") | ~gok["MPPSource"].fillna("").str.match(r"(slide|manifest)")]
        if len(odd):
            out.append("<h3>Scale and artifacts</h3>")
            rows = [
                [
                    r["WSI-ID"],
                    _fmt(r["MPP"]),
                    r["MPPSource"],
                    _fmt(r["MPPEstimate"]),
                    r["Flags"],
                    _fmt(r["ArtifactMM2"]),
                ]
                for _, r in odd.iterrows()
            ]
            out.append(
                _table(
                    ["WSI-ID", "µm/px", "from", "estimate", "flags", "artifacts mm²"],
                    rows,
                    [False, True, False, True, False, True],
                )
            )
        gfail = group[group["Status"] != "ok"]
        if len(gfail):
            out.append("<h3>Failed slides</h3>")
            out.append(_table(["WSI-ID", "Reason"], gfail[["WSI-ID", "Note"]].values.tolist()))
    if refused:
        out.append(
            f"<p class='muted'>Image budget reached: {refused} review images are linked "
            "(files under qc/patches/), not embedded.</p>"
        )
    out.append("</body></html>")
    return "\n".join(out)
