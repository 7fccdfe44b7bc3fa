"""Microns per pixel from vendor metadata: every reader's quirks parsed here, once.

Each function returns a :class:`Resolution` (µm per level-0 pixel, with the metadata field it
was read from, so a run can say where its scale came from), or ``None`` when its source does
not give one; the caller then tries the next source, the manifest, or an estimate from the
image itself.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Values outside this range are placeholders, not microscopes: 72 or 96 dpi written by image
# libraries (~350 / 265 µm/px), or zero. Real scans span ~0.1 (80x) to a few µm/px (thumbnails
# stored as slides); whether a real value is fine enough to segment is decided later, with its source.
PLACEHOLDER_MPP = (0.02, 50.0)
# Length units → µm (TIFF ResolutionUnit codes, OME units, DICOM's mm).
TIFF_UNIT_UM = {2: 25_400.0, 3: 10_000.0, 4: 1_000.0, 5: 1.0}  # inch, cm, mm (4) and µm (5) as some scanners write
LENGTH_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "micron": 1.0, "micrometer": 1.0, "nm": 1e-3}
# Pixels whose two spacings differ by more than this share are noted as non-square.
SQUARE_TOLERANCE = 0.01


@dataclass(frozen=True)
class Resolution:
    """A slide's resolution as its metadata states it."""

    mpp: float  # µm per level-0 pixel along x (columns)
    field: str  # where it was read, e.g. "Aperio MPP", "DICOM ImagedVolumeWidth"
    mpp_y: float | None = None  # along y (rows), when the metadata gives it separately

    @property
    def square(self) -> bool:
        return self.mpp_y is None or abs(self.mpp_y - self.mpp) <= SQUARE_TOLERANCE * self.mpp

    def describe(self) -> str:
        """'0.499 µm/px from Aperio MPP' (with the y spacing when the pixels are not square)."""
        y = "" if self.square else f" × {self.mpp_y:.3g} (non-square pixels)"
        return f"{self.mpp:.3g}{y} µm/px from {self.field}"


def _positive(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if v > 0 else None


def _resolution(mpp_x: float | None, field: str, mpp_y: float | None = None) -> Resolution | None:
    """A Resolution unless the value is missing or a placeholder."""
    if mpp_x is None or not PLACEHOLDER_MPP[0] <= mpp_x <= PLACEHOLDER_MPP[1]:
        return None
    if mpp_y is not None and not PLACEHOLDER_MPP[0] <= mpp_y <= PLACEHOLDER_MPP[1]:
        mpp_y = None
    return Resolution(mpp_x, field, mpp_y)


def first(*candidates: Resolution | None) -> Resolution | None:
    """The first resolution found, in the order of trust the caller gives."""
    return next((c for c in candidates if c is not None), None)


# ------------------------------------------------------------------------------ Aperio ----


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


def mpp_from_aperio(fields: Mapping[str, Any]) -> Resolution | None:
    """Aperio's ``MPP``, else 10 / ``AppMag`` (a 10x objective images about 1 µm per pixel).

    >>> mpp_from_aperio({"AppMag": "20", "MPP": "0.4990"}), mpp_from_aperio({"AppMag": "40"}).mpp
    (Resolution(mpp=0.499, field='Aperio MPP', mpp_y=None), 0.25)
    """
    mpp = _resolution(_positive(fields.get("MPP")), "Aperio MPP")
    if mpp is not None:
        return mpp
    mag = _positive(fields.get("AppMag"))
    return _resolution(10.0 / mag, "Aperio AppMag") if mag is not None else None


# -------------------------------------------------------------------------------- TIFF ----


def _per_unit(value: Any) -> float | None:
    num, den = value if isinstance(value, tuple) else (value, 1)
    try:
        return float(num) / float(den) if float(den) else None
    except (TypeError, ValueError):
        return None


def mpp_from_resolution_tags(x_resolution: Any, unit: Any, y_resolution: Any = None) -> Resolution | None:
    """TIFF X/YResolution (pixels per unit: a number or a (numerator, denominator) pair) with
    their ResolutionUnit: inch, centimetre, or the millimetre / micrometre codes some scanners
    write. Placeholders (72 dpi and the like) are not resolutions.

    >>> mpp_from_resolution_tags((40000, 1), 3).describe(), mpp_from_resolution_tags(72, 2)
    ('0.25 µm/px from TIFF XResolution (cm)', None)
    >>> mpp_from_resolution_tags(4.0, 5, 2.0).describe()
    '0.25 × 0.5 (non-square pixels) µm/px from TIFF XResolution (µm)'
    """
    if x_resolution is None or unit is None:
        return None
    try:
        unit_um = TIFF_UNIT_UM.get(int(unit))
    except (TypeError, ValueError):
        return None
    px_x = _per_unit(x_resolution)
    if not unit_um or not px_x or px_x <= 0:
        return None
    px_y = _per_unit(y_resolution) if y_resolution is not None else None
    name = {2: "inch", 3: "cm", 4: "mm", 5: "µm"}[int(unit)]
    return _resolution(unit_um / px_x, f"TIFF XResolution ({name})", unit_um / px_y if px_y else None)


def mpp_from_ome_xml(description: str) -> Resolution | None:
    """OME-XML ``Pixels/@PhysicalSizeX/Y`` with their units (µm when none is given).

    >>> xml = '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image><Pixels '
    >>> xml += 'PhysicalSizeX="0.2527" PhysicalSizeY="0.2527" PhysicalSizeXUnit="µm"/></Image></OME>'
    >>> mpp_from_ome_xml(xml).describe()
    '0.253 µm/px from OME-XML PhysicalSizeX'
    """
    if "<OME" not in (description or ""):
        return None
    try:
        root = ET.fromstring(description.encode("utf-8") if isinstance(description, str) else description)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] != "Pixels":
            continue
        sizes = []
        for axis in ("X", "Y"):
            value = _positive(el.get(f"PhysicalSize{axis}"))
            unit = LENGTH_UM.get(el.get(f"PhysicalSize{axis}Unit", "µm"))
            sizes.append(value * unit if value is not None and unit is not None else None)
        return _resolution(sizes[0], "OME-XML PhysicalSizeX", sizes[1])
    return None


_PHILIPS_SPACING = re.compile(r'Name="DICOM_PIXEL_SPACING"[^>]*>\s*"?([0-9.eE+-]+)"?\s+"?([0-9.eE+-]+)"?')


def mpp_from_philips(description: str) -> Resolution | None:
    """Philips TIFF: the first ``DICOM_PIXEL_SPACING`` attribute (row, column spacing in mm).

    >>> mpp_from_philips('<Attribute Name="DICOM_PIXEL_SPACING" PMSVR="IDoubleArray">'
    ...                  '"0.000227" "0.000227"</Attribute>').describe()
    '0.227 µm/px from Philips DICOM_PIXEL_SPACING'
    """
    m = _PHILIPS_SPACING.search(description or "")
    if not m:
        return None
    row, col = _positive(m.group(1)), _positive(m.group(2))
    if row is None or col is None:
        return None
    return _resolution(col * 1000.0, "Philips DICOM_PIXEL_SPACING", row * 1000.0)


def mpp_from_tiff(description: str, x_resolution: Any, unit: Any, y_resolution: Any = None) -> Resolution | None:
    """A TIFF's resolution: Aperio fields, OME-XML or Philips attributes in its description,
    then its resolution tags (Hamamatsu NDPI and generic pyramids write them in cm).

    Parameters
    ----------
    description : str
        The TIFF's ImageDescription.
    x_resolution : Any
        Its XResolution tag, pixels per unit: a number or a (numerator, denominator) pair; None
        when absent.
    unit : Any
        Its ResolutionUnit tag (2 inch, 3 centimetre, or the millimetre / micrometre codes some
        scanners write); None when absent.
    y_resolution : Any, optional
        Its YResolution tag, as ``x_resolution``.

    Returns
    -------
    Resolution or None
        The first resolution found, in µm per level-0 pixel; None when none is stated.
    """
    return first(
        mpp_from_aperio(aperio_fields(description)),
        mpp_from_ome_xml(description),
        mpp_from_philips(description),
        mpp_from_resolution_tags(x_resolution, unit, y_resolution),
    )


# --------------------------------------------------------------------------- OpenSlide ----

# tiff.ResolutionUnit as OpenSlide writes it → the TIFF code.
OPENSLIDE_TIFF_UNITS = {"inch": 2, "centimeter": 3}
NM_PER_UM = 1000.0


def mpp_from_openslide(properties: Mapping[str, str], width: int, height: int) -> Resolution | None:
    """A slide's resolution from OpenSlide's properties.

    ``openslide.mpp-x/y``, which OpenSlide derives per format (Aperio MPP, NDPI and generic TIFF
    resolution tags, MIRAX, Leica, Ventana and Philips metadata, VMS physical size); else the
    vendor properties it passes through: Aperio fields, the TIFF resolution tags, a Hamamatsu
    VMS/VMU index's ``PhysicalWidth``/``PhysicalHeight`` (nm) over the image's pixels; last the
    objective power (10 / power, as Aperio's AppMag).

    >>> mpp_from_openslide({"openslide.mpp-x": "0.499", "openslide.mpp-y": "0.499",
    ...                     "openslide.vendor": "aperio"}, 2220, 2967).describe()
    '0.499 µm/px from OpenSlide mpp-x (aperio)'
    >>> mpp_from_openslide({"hamamatsu.PhysicalWidth": "128000", "hamamatsu.PhysicalHeight": "96000"},
    ...                    512, 384).describe()
    '0.25 µm/px from Hamamatsu PhysicalWidth (nm)'
    >>> mpp_from_openslide({"tiff.XResolution": "43826", "tiff.ResolutionUnit": "centimeter"}, 10, 10).describe()
    '0.228 µm/px from TIFF XResolution (cm)'
    """
    vendor = properties.get("openslide.vendor", "unknown format")
    mpp_x, mpp_y = (_positive(properties.get(f"openslide.mpp-{axis}")) for axis in ("x", "y"))
    physical_w, physical_h = (_positive(properties.get(f"hamamatsu.Physical{side}")) for side in ("Width", "Height"))
    power = _positive(properties.get("openslide.objective-power"))
    aperio = {key: properties[f"aperio.{key}"] for key in ("MPP", "AppMag") if f"aperio.{key}" in properties}
    return first(
        _resolution(mpp_x, f"OpenSlide mpp-x ({vendor})", mpp_y),
        mpp_from_aperio(aperio),
        mpp_from_resolution_tags(
            properties.get("tiff.XResolution"),
            OPENSLIDE_TIFF_UNITS.get(properties.get("tiff.ResolutionUnit", "")),
            properties.get("tiff.YResolution"),
        ),
        _resolution(
            physical_w / NM_PER_UM / width if physical_w and width else None,
            "Hamamatsu PhysicalWidth (nm)",
            physical_h / NM_PER_UM / height if physical_h and height else None,
        ),
        _resolution(10.0 / power, "OpenSlide objective-power") if power else None,
    )


# ------------------------------------------------------------------------------- cuCIM ----


def mpp_from_spacing(spacing: Any, units: Any) -> Resolution | None:
    """cuCIM's pixel spacing (y, x order per its dims "YXC") when its unit is a length."""
    if not spacing or not units:
        return None
    unit = LENGTH_UM.get(str(units[0]).lower().replace("micrometer", "µm"))
    if unit is None:
        return None
    values = [_positive(v) for v in spacing[:2]]
    if values[0] is None:
        return None
    mpp_y = values[0] * unit
    mpp_x = values[1] * unit if len(values) > 1 and values[1] is not None else mpp_y
    return _resolution(mpp_x, "cuCIM spacing", mpp_y)


# ------------------------------------------------------------------------------- DICOM ----


def _pixel_spacing(item: Any) -> tuple[float, float] | None:
    try:
        spacing = item.PixelMeasuresSequence[0].PixelSpacing  # (row spacing, column spacing) in mm
        row, col = _positive(spacing[0]), _positive(spacing[1])
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    return (row * 1000.0, col * 1000.0) if row is not None and col is not None else None


def mpp_from_dicom(ds: Any, width: int, height: int | None = None) -> Resolution | None:
    """PixelSpacing from the shared functional groups, else from the first frame's functional
    groups, else ImagedVolumeWidth/Height (mm) over TotalPixelMatrixColumns/Rows."""
    for sequence, field in (
        ("SharedFunctionalGroupsSequence", "DICOM shared PixelSpacing"),
        ("PerFrameFunctionalGroupsSequence", "DICOM per-frame PixelSpacing"),
    ):
        groups = ds.get(sequence)
        if groups:
            spacing = _pixel_spacing(groups[0])
            if spacing is not None:
                return _resolution(spacing[1], field, spacing[0])
    volume_width = _positive(ds.get("ImagedVolumeWidth"))
    if volume_width is not None and width > 0:
        volume_height = _positive(ds.get("ImagedVolumeHeight"))
        mpp_y = volume_height * 1000.0 / height if volume_height is not None and height else None
        return _resolution(volume_width * 1000.0 / width, "DICOM ImagedVolumeWidth", mpp_y)
    return None
