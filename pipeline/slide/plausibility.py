"""Whether what a slide yields is something H&E tissue can hold: nuclei per mm² of tissue and
their mean area, against bounds measured on real tissue with room to spare. A slide outside them
was segmented by a model that returned nonsense (a constant map, a model made for another stain or
resolution) or at a wrong scale: it is flagged ``IMPLAUSIBLE_FLAG`` with the reason, never a clean ok.

The figures (``benchmarks/nucleus_plausibility.py``, table in benchmarks/RESULTS-faults.md): the 30
MoNuSeg 2018 training images (7 organs, 40x) hold 4,704-29,792 nuclei per mm² (ground truth, per mm²
of the image; median 6,448) of mean area 6.7-55.7 µm² (median 30.5), covering 11-40 % of the image;
the shipped model finds 4,318-22,747 per mm² of the tissue it detects, mean 9.4-56.5 µm², covering
10-41 %; on the real fixture slides CMU-1-Small-Region (20x, 0.65 mm² of tissue) 4,767 per mm², mean
25.9 µm², and tcga-cr-7395 (a frozen section, 10.65 mm²) 5,146 per mm², mean 30.1 µm². The bounds
lie well outside all of them: they catch what no tissue yields, not unusual tissue.
"""

from __future__ import annotations

# A mean nucleus area (µm²) outside these is no tissue's. MIN: a disc 2.3 µm across, smaller than any
# nucleated cell's nucleus; the smallest measured mean is 6.7 µm² (MoNuSeg TCGA-HE-7128's ground
# truth, whose masks leave out the outline's pixels; 9.4 predicted). MAX: a mean nucleus 23 µm across,
# the size of the largest tumour giant nuclei, not a slide's mean; the largest measured mean is 56.5.
MIN_MEAN_AREA_UM2 = 4.0
MAX_MEAN_AREA_UM2 = 400.0
# Nuclei per mm² of tissue. MIN: one nucleus in a 100 µm square of tissue (fat's adipocytes, ~100 µm
# across, hold one each); the lowest measured density is 4,318 per mm².
MIN_NUCLEI_PER_MM2 = 100.0
# The share of the tissue nuclei may cover (nuclei per mm² × mean area): 0.9 is nuclei packed wall
# to wall; the highest measured share is 0.41. It bounds the density from above: 45,000 per mm² of
# 20 µm² nuclei.
MAX_NUCLEAR_SHARE = 0.9
# Too little tissue to count its nuclei on: below a 100 µm square a density means little.
MIN_TISSUE_MM2 = 0.01
IMPLAUSIBLE_FLAG = "implausible_nuclei"


def implausible_nuclei(n_nuclei: int, tissue_mm2: float, area_mean_um2: float | None) -> str | None:
    """Why a slide's nuclei cannot be H&E tissue's, in words; None when they can.

    >>> implausible_nuclei(1_800, 0.08, 15.0) is None  # a generated slide of the tests
    True
    >>> for reason in implausible_nuclei(9, 0.6, 68_000.0).split("; "):  # a model whose output is 1.0 everywhere
    ...     print(reason)
    mean nucleus area 68,000 µm² is outside the 4-400 µm² of any H&E tissue
    15 nuclei per mm² of tissue, under the 100 of any H&E tissue
    nuclei cover 102% of the tissue
    >>> implausible_nuclei(0, 0.5, None)
    'no nuclei found in 0.50 mm² of tissue'
    """
    reasons = []
    if tissue_mm2 >= MIN_TISSUE_MM2 and n_nuclei == 0:
        return f"no nuclei found in {tissue_mm2:.2f} mm² of tissue"
    if area_mean_um2 is not None and not MIN_MEAN_AREA_UM2 <= area_mean_um2 <= MAX_MEAN_AREA_UM2:
        reasons.append(
            f"mean nucleus area {area_mean_um2:,.0f} µm² is outside the "
            f"{MIN_MEAN_AREA_UM2:.0f}-{MAX_MEAN_AREA_UM2:.0f} µm² of any H&E tissue"
        )
    if tissue_mm2 >= MIN_TISSUE_MM2 and area_mean_um2 is not None:
        density = n_nuclei / tissue_mm2
        share = density * area_mean_um2 / 1e6
        if density < MIN_NUCLEI_PER_MM2:
            reasons.append(
                f"{density:,.0f} nuclei per mm² of tissue, under the {MIN_NUCLEI_PER_MM2:,.0f} of any H&E tissue"
            )
        if share > MAX_NUCLEAR_SHARE:
            reasons.append(f"nuclei cover {share:.0%} of the tissue")
    return "; ".join(reasons) or None
