"""Generated DICOM whole-slide images for tests and benchmarks.

:func:`write_dicom_wsi` writes an image as a pyramid of VL Whole Slide Microscopy instances,
one file per level, all of one series (the layout scanners export): tiled frames, JPEG baseline
or uncompressed, ``TILED_FULL`` (frames row by row, stated) or ``TILED_SPARSE`` (each frame's
position in the per-frame functional groups), ``PixelSpacing`` in the shared functional groups.
``layout="unstated"`` writes a level as the real one-file fixture does: no ``ImageType``, no
dimension organisation, no functional groups, frames column by column, and the scale only as
``ImagedVolumeWidth``. Samples may be 16-bit (uncompressed, ``BitsStored`` ≤ 16), grayscale
(``MONOCHROME2``) or stored as YCbCr (``YBR_FULL``); JPEG frames as YCbCr (``YBR_FULL_422``) or as
RGB saying so only in ``PhotometricInterpretation``. :func:`damage_frame` breaks one frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# DICOM identifiers (PS3.6): the SOP class and the transfer syntaxes written here.
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"  # uncompressed frames
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"  # JPEG Baseline (Process 1)
JPEG_QUALITY = 90  # frames are test data: close enough to the image that reads can be compared
LAYOUTS = ("TILED_FULL", "TILED_SPARSE", "unstated")
# PhotometricInterpretation values written, per compression (PS3.3 C.7.6.3.1.2; JPEG: PS3.5 8.2.1)
PHOTOMETRICS = {"jpeg": ("YBR_FULL_422", "RGB"), "none": ("RGB", "YBR_FULL", "MONOCHROME2")}
# JPEG markers (ITU-T T.81 B.1.1.3) and the Adobe APP14 segment that says a stream is RGB
SOI, SOF0, SOS, APP14 = 0xD8, 0xC0, 0xDA, 0xEE
PIXEL_DATA_TAG = bytes.fromhex("e07f1000")  # (7FE0,0010) as written, little endian


def _frames(level: np.ndarray, tile: int, column_major: bool, white: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(row, column, frame) of a level cut into tile×tile frames, edge frames padded with white."""
    h, w = level.shape[:2]
    n_rows, n_cols = math.ceil(h / tile), math.ceil(w / tile)
    order = [(r, c) for c in range(n_cols) for r in range(n_rows)] if column_major else None
    for r, c in order or [(r, c) for r in range(n_rows) for c in range(n_cols)]:
        frame = np.full((tile, tile, *level.shape[2:]), white, dtype=level.dtype)
        block = level[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]
        frame[: block.shape[0], : block.shape[1]] = block
        yield r, c, frame


def _halved(level: np.ndarray) -> np.ndarray:
    h, w = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
    blocks = level[:h, :w].reshape(h // 2, 2, w // 2, 2, *level.shape[2:])
    return blocks.mean(axis=(1, 3)).round().astype(level.dtype)


def ybr_full(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 as YBR_FULL samples (PS3.3 C.7.6.3.1.2: ITU-R BT.601 at full range)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return np.clip(np.round(np.stack([y, cb, cr], axis=-1)), 0, 255).astype(np.uint8)


def _unmarked_rgb_jpeg(data: bytes) -> bytes:
    """An RGB JPEG stream (no colour transform) that does not say so itself: the Adobe APP14
    marker dropped and the components numbered 1, 2, 3 (as in YCbCr streams), so only the DICOM
    ``PhotometricInterpretation`` tells a decoder the samples are RGB."""
    out, position = bytearray(data[:2]), 2
    ids = {ord("R"): 1, ord("G"): 2, ord("B"): 3}
    while True:
        marker = data[position + 1]
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        segment = bytearray(data[position : position + 2 + length])
        if marker == SOF0:
            for k in range(segment[9]):
                segment[10 + 3 * k] = ids.get(segment[10 + 3 * k], segment[10 + 3 * k])
        elif marker == SOS:
            for k in range(segment[4]):
                segment[5 + 2 * k] = ids.get(segment[5 + 2 * k], segment[5 + 2 * k])
        if marker != APP14:
            out += segment
        position += 2 + length
        if marker == SOS:
            return bytes(out + data[position:])


def _encode(frame: np.ndarray, compression: str, photometric: str) -> bytes:
    if compression == "none":
        samples = ybr_full(frame) if photometric == "YBR_FULL" else frame
        return samples.astype(samples.dtype.newbyteorder("<")).tobytes()
    import imagecodecs

    if photometric == "RGB":
        return _unmarked_rgb_jpeg(bytes(imagecodecs.jpeg8_encode(frame, level=JPEG_QUALITY, outcolorspace="RGB")))
    return bytes(imagecodecs.jpeg8_encode(frame, level=JPEG_QUALITY, subsampling="422"))


def write_dicom_wsi(
    folder: Path,
    image: np.ndarray,
    mpp: float,
    tile: int = 256,
    levels: int = 2,
    compression: str = "jpeg",
    layout: str = "TILED_FULL",
    offset_table: bool = True,
    fragments_per_frame: int = 1,
    name: str = "level",
    photometric: str | None = None,
    bits_stored: int = 8,
) -> list[Path]:
    """Write ``image`` (RGB H×W×3, or H×W for ``MONOCHROME2``) as a DICOM WSI series in
    ``folder``: ``levels`` instances (level k halves level k−1), one file each
    (``<name>-<k>.dcm``), level 0 first.

    ``compression`` 'jpeg' or 'none'; ``layout`` one of :data:`LAYOUTS`; ``offset_table`` False
    leaves the basic offset table of encapsulated frames empty (allowed, and common);
    ``fragments_per_frame`` splits each JPEG frame over that many fragments; ``photometric``
    one of :data:`PHOTOMETRICS` (default YBR_FULL_422 for JPEG, RGB uncompressed);
    ``bits_stored`` over 8: uncompressed uint16 samples (BitsAllocated 16) of that range.

    Parameters
    ----------
    folder : Path
        Where the files are written (created).
    image : np.ndarray
        Level 0: RGB uint8 H×W×3, H×W for ``MONOCHROME2``, uint16 when ``bits_stored`` is over 8.
    mpp : float
        Resolution of level 0, in µm/px.
    tile : int, optional
        Frame side, in px.
    levels : int, optional
        Number of levels (instances).
    compression : str, optional
        ``"jpeg"`` or ``"none"``.
    layout : str, optional
        One of :data:`LAYOUTS`.
    offset_table : bool, optional
        Fill the basic offset table of encapsulated frames.
    fragments_per_frame : int, optional
        Fragments each JPEG frame is split over.
    name : str, optional
        Stem of the file names.
    photometric : str or None, optional
        One of :data:`PHOTOMETRICS` for ``compression``; None: its first.
    bits_stored : int, optional
        Bits per sample.

    Returns
    -------
    list of Path
        The files written, level 0 first.

    Raises
    ------
    ValueError
        For a combination of compression, layout, photometric interpretation and sample depth not
        written here.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, generate_uid

    photometric = photometric or PHOTOMETRICS.get(compression, ("",))[0]
    if compression not in PHOTOMETRICS or layout not in LAYOUTS or photometric not in PHOTOMETRICS[compression]:
        raise ValueError(f"compression {compression!r} / layout {layout!r} / {photometric} not written here")
    if (bits_stored > 8) != (image.dtype == np.uint16) or (bits_stored > 8 and compression != "none"):
        raise ValueError(f"{bits_stored}-bit samples are written uncompressed from uint16 images only")
    samples = 1 if photometric == "MONOCHROME2" else 3
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    paths = []
    level = image
    for k in range(levels):
        if k:
            level = _halved(level)
        h, w = level.shape[:2]
        frames = list(_frames(level, tile, column_major=layout == "unstated", white=2**bits_stored - 1))
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = UID(WSI_SOP_CLASS)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = UID(JPEG_BASELINE if compression == "jpeg" else EXPLICIT_LITTLE)
        ds.SOPClassUID = WSI_SOP_CLASS
        ds.Modality = "SM"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.PatientID, ds.PatientName, ds.StudyID, ds.AccessionNumber = "synthetic", "synthetic", "1", "1"
        ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName, ds.PatientBirthDate, ds.PatientSex = (
            "20260101",
            "000000",
            "",
            "",
            "",
        )
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.Manufacturer, ds.ContainerIdentifier = "pipeline.testing", "slide-1"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, photometric
        if samples > 1:
            ds.PlanarConfiguration = 0
        allocated = 16 if bits_stored > 8 else 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = allocated, bits_stored, bits_stored - 1, 0
        ds.Rows, ds.Columns, ds.NumberOfFrames = tile, tile, len(frames)
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = w, h
        ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = image.shape[1] * mpp / 1000, image.shape[0] * mpp / 1000
        ds.BurnedInAnnotation, ds.SpecimenLabelInImage, ds.FocusMethod, ds.ExtendedDepthOfField = (
            "NO",
            "NO",
            "AUTO",
            "NO",
        )
        ds.LossyImageCompression = "01" if compression == "jpeg" else "00"
        if layout != "unstated":
            spacing_mm = mpp * 2**k / 1000
            ds.ImageType = (
                ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if k == 0 else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
            )
            ds.ImagedVolumeDepth = 0.001
            ds.TotalPixelMatrixFocalPlanes, ds.NumberOfOpticalPaths = 1, 1
            ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
            origin = Dataset()
            origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem = 20.0, 40.0
            ds.TotalPixelMatrixOriginSequence = [origin]
            path_item = Dataset()
            path_item.OpticalPathIdentifier = "1"
            illumination = Dataset()
            illumination.CodeValue, illumination.CodingSchemeDesignator = "111744", "DCM"
            illumination.CodeMeaning = "Brightfield illumination"
            path_item.IlluminationTypeCodeSequence = [illumination]
            colour = Dataset()
            colour.CodeValue, colour.CodingSchemeDesignator, colour.CodeMeaning = "414298005", "SCT", "Full Spectrum"
            path_item.IlluminationColorCodeSequence = [colour]
            ds.OpticalPathSequence = [path_item]
            measures = Dataset()
            measures.PixelSpacing = [spacing_mm, spacing_mm]  # (row, column) spacing in mm
            measures.SliceThickness = 0.001
            shared = Dataset()
            shared.PixelMeasuresSequence = [measures]
            ds.SharedFunctionalGroupsSequence = [shared]
            ds.DimensionOrganizationType = layout
            if layout == "TILED_SPARSE":
                ds.PerFrameFunctionalGroupsSequence = [_frame_position(r, c, tile) for r, c, _ in frames]
        encoded = [_encode(frame, compression, photometric) for _, _, frame in frames]
        if compression == "jpeg":
            ds.PixelData = encapsulate(encoded, fragments_per_frame=fragments_per_frame, has_bot=offset_table)
            ds["PixelData"].VR = "OB"
        else:
            ds.PixelData = b"".join(encoded)
            ds["PixelData"].VR = "OB"
        path = folder / f"{name}-{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _frame_position(row: int, column: int, tile: int) -> object:
    from pydicom.dataset import Dataset

    position = Dataset()
    position.ColumnPositionInTotalImagePixelMatrix = column * tile + 1  # 1-based
    position.RowPositionInTotalImagePixelMatrix = row * tile + 1
    position.XOffsetInSlideCoordinateSystem = 0.0
    position.YOffsetInSlideCoordinateSystem = 0.0
    position.ZOffsetInSlideCoordinateSystem = 0.0
    item = Dataset()
    item.PlanePositionSlideSequence = [position]
    return item


def damage_frame(path: Path, index: int) -> None:
    """Make JPEG frame ``index`` (in the file's order) of a written instance undecodable, as a
    bad sector or a broken transfer would: its quantization tables zeroed ("Quantization table
    0x00 was not defined"); the file's structure and every other frame are left as they were."""
    data = bytearray(path.read_bytes())
    start = data.find(PIXEL_DATA_TAG)
    frames = []
    while (start := data.find(bytes([0xFF, SOI, 0xFF]), start + 1)) >= 0:
        frames.append(start)
    if not 0 <= index < len(frames):
        raise ValueError(f"{path.name} holds {len(frames)} JPEG frames, not frame {index}")
    data[frames[index] + 2 : frames[index] + 40] = bytes(38)
    path.write_bytes(bytes(data))
