"""Generated DICOM whole-slide images for tests and benchmarks.

:func:`write_dicom_wsi` writes an image as a pyramid of VL Whole Slide Microscopy instances,
one file per level, all of one series (the layout scanners export): tiled frames, JPEG baseline
or uncompressed, ``TILED_FULL`` (frames row by row, stated) or ``TILED_SPARSE`` (each frame's
position in the per-frame functional groups), ``PixelSpacing`` in the shared functional groups.
``layout="unstated"`` writes a level as the real one-file fixture does: no ``ImageType``, no
dimension organisation, no functional groups, frames column by column, and the scale only as
``ImagedVolumeWidth``.
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


def _frames(level: np.ndarray, tile: int, column_major: bool) -> Iterator[tuple[int, int, np.ndarray]]:
    """(row, column, frame) of a level cut into tile×tile frames, edge frames padded with white."""
    h, w = level.shape[:2]
    n_rows, n_cols = math.ceil(h / tile), math.ceil(w / tile)
    order = [(r, c) for c in range(n_cols) for r in range(n_rows)] if column_major else None
    for r, c in order or [(r, c) for r in range(n_rows) for c in range(n_cols)]:
        frame = np.full((tile, tile, 3), 255, dtype=np.uint8)
        block = level[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]
        frame[: block.shape[0], : block.shape[1]] = block
        yield r, c, frame


def _encode(frame: np.ndarray, compression: str) -> bytes:
    if compression == "none":
        return frame.tobytes()
    import imagecodecs

    return bytes(imagecodecs.jpeg8_encode(frame, level=JPEG_QUALITY))


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
) -> list[Path]:
    """Write ``image`` (RGB uint8) as a DICOM WSI series in ``folder``: ``levels`` instances
    (level k halves level k−1), one file each (``<name>-<k>.dcm``), level 0 first.

    ``compression`` 'jpeg' or 'none'; ``layout`` one of :data:`LAYOUTS`; ``offset_table`` False
    leaves the basic offset table of encapsulated frames empty (allowed, and common);
    ``fragments_per_frame`` splits each JPEG frame over that many fragments.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, generate_uid

    if compression not in ("jpeg", "none") or layout not in LAYOUTS:
        raise ValueError(f"compression {compression!r} / layout {layout!r} not written here")
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    paths = []
    level = image
    for k in range(levels):
        if k:
            lh, lw = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
            level = level[:lh, :lw].reshape(lh // 2, 2, lw // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        h, w = level.shape[:2]
        frames = list(_frames(level, tile, column_major=layout == "unstated"))
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
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        ds.PhotometricInterpretation = "YBR_FULL_422" if compression == "jpeg" else "RGB"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
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
        encoded = [_encode(frame, compression) for _, _, frame in frames]
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
