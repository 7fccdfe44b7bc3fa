"""Microns per pixel from vendor metadata: every reader's quirks parsed here, once.

Each function returns a resolution in µm per level-0 pixel, or ``None`` when its source does
not give one (the caller then tries the next source, the manifest, or the default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Base-level resolutions of real slide scanners (µm/px); values outside are metadata placeholders.
PLAUSIBLE_MPP = (0.1, 2.0)
# TIFF ResolutionUnit → µm per unit (2 = inch, 3 = centimetre; 1 = none).
TIFF_UNIT_UM = {2: 25_400.0, 3: 10_000.0}


def _positive(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if v > 0 else None


def _plausible(mpp: float) -> float | None:
    return mpp if PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1] else None


def aperio_fields(description: str) -> dict[str, str]:
    """The ``key = value`` fields of an Aperio ImageDescription (after its first ``|``).

    >>> aperio_fields("Aperio Image Library v12\\r\\n240x240 JPEG|AppMag = 20|MPP = 0.4990")
    {'AppMag': '20', 'MPP': '0.4990'}
    """
    fields: dict[str, str] = {}
    for part in (description or "").split("|")[1:]:
        if "=" in part:
            k, v = part.split("=", 1)
            fields[k.strip()] = v.strip()
    return fields


def mpp_from_aperio(fields: Mapping[str, Any]) -> float | None:
    """Aperio's ``MPP``, else 10 / ``AppMag`` (a 10x objective images 1 µm per pixel).

    >>> mpp_from_aperio({"AppMag": "20", "MPP": "0.4990"}), mpp_from_aperio({"AppMag": "40"})
    (0.499, 0.25)
    """
    mpp = _positive(fields.get("MPP"))
    if mpp is not None:
        return mpp
    mag = _positive(fields.get("AppMag"))
    return 10.0 / mag if mag is not None else None


def mpp_from_resolution_tags(x_resolution: Any, unit: Any) -> float | None:
    """TIFF XResolution (pixels per unit, a number or a (numerator, denominator) pair) with its
    ResolutionUnit, when the unit is a length and the result is a scanner-like resolution.

    >>> mpp_from_resolution_tags((40000, 1), 3), mpp_from_resolution_tags(72, 2)
    (0.25, None)
    """
    if x_resolution is None or unit is None:
        return None
    num, den = x_resolution if isinstance(x_resolution, tuple) else (x_resolution, 1)
    px_per_unit = float(num) / float(den) if den else 0.0
    unit_um = TIFF_UNIT_UM.get(int(unit))
    if px_per_unit > 0 and unit_um:
        return _plausible(unit_um / px_per_unit)
    return None


def mpp_from_tiff(description: str, x_resolution: Any, unit: Any) -> float | None:
    """A TIFF's resolution: the Aperio fields of its description, then its resolution tags."""
    mpp = mpp_from_aperio(aperio_fields(description))
    return mpp if mpp is not None else mpp_from_resolution_tags(x_resolution, unit)


def mpp_from_spacing(spacing: Any, units: Any) -> float | None:
    """cuCIM's pixel spacing when its unit is the micrometre and the value scanner-like."""
    if spacing and units and str(units[0]).lower() in ("micrometer", "um", "µm"):
        return _plausible(float(spacing[0]))
    return None


def mpp_from_dicom(ds: Any, width: int) -> float | None:
    """PixelSpacing (mm) from the shared functional groups, else ImagedVolumeWidth / columns."""
    try:
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        return float(spacing[1]) * 1000.0
    except (AttributeError, IndexError, KeyError):
        pass
    volume_width = ds.get("ImagedVolumeWidth")
    if volume_width:
        # The imaged volume often describes the whole scanned area, not this pixel matrix;
        # trust it only when it gives a scanner-like resolution.
        return _plausible(float(volume_width) * 1000.0 / width)
    return None
