"""A model that returns garbage never yields a clean ok: what the network returns is checked
(``pipeline.runtime.session.check_probabilities``: NaN, infinity, values outside [0, 1] fail the
slide) and what a slide yields is checked against what H&E tissue holds
(``pipeline.slide.plausibility``: flagged with the reason). The garbage models are small ONNX graphs
with the contract's names and metadata (``pipeline.testing.build_constant_model``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import Config
from pipeline.manifest import SlideEntry
from pipeline.runtime import NucleusModel
from pipeline.runtime.session import ModelOutputError
from pipeline.slide import process_slide_inline
from pipeline.slide.plausibility import IMPLAUSIBLE_FLAG, implausible_nuclei
from pipeline.testing import build_constant_model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("garbage_models")
    values = {"nan": float("nan"), "one": 1.0, "zero": 0.0, "two": 2.0, "inf": float("inf")}
    return {name: build_constant_model(folder / f"{name}.onnx", v) for name, v in values.items()}


@pytest.mark.parametrize(("name", "found"), [("nan", "holds NaN"), ("two", "values from 2 to 2"), ("inf", "inf")])
def test_network_output_that_is_no_probability_is_refused(models: dict[str, Path], name: str, found: str) -> None:
    model = NucleusModel(models[name], runtime="onnxruntime", providers=["CPUExecutionProvider"])
    with pytest.raises(ModelOutputError, match=found) as err:
        model.predict(np.full((1, 3, 32, 32), 0.5, np.float32))
    assert f"{name}.onnx" in str(err.value) and "[0, 1]" in str(err.value)


def test_network_output_of_probabilities_passes_unchanged(models: dict[str, Path]) -> None:
    for name, value in (("one", 1.0), ("zero", 0.0)):
        model = NucleusModel(models[name], runtime="onnxruntime", providers=["CPUExecutionProvider"])
        assert (model.predict(np.full((1, 3, 32, 32), 0.5, np.float32)) == value).all()


def segment(slide: Path, model: Path, out: Path) -> dict:
    return process_slide_inline(SlideEntry(slide.stem, slide), str(out), Config(model=str(model), tile_px=256))


def test_a_model_returning_nan_fails_the_slide_naming_it(
    synthetic_slide, models: dict[str, Path], tmp_path: Path
) -> None:
    """Before: ok, 0 nuclei."""
    with pytest.raises(ModelOutputError, match="nan.onnx: the model's output 'prob' holds NaN"):
        segment(synthetic_slide[0], models["nan"], tmp_path)


@pytest.mark.parametrize(("name", "reason"), [("one", "mean nucleus area"), ("zero", "no nuclei found in")])
def test_a_model_returning_a_constant_is_flagged_with_the_reason(
    synthetic_slide, models: dict[str, Path], name: str, reason: str, tmp_path: Path
) -> None:
    """Before: a clean ok (1.0: a few "nuclei" of tens of thousands of µm² each; 0.0: none)."""
    stats = segment(synthetic_slide[0], models[name], tmp_path)
    assert stats["status"] == "ok" and IMPLAUSIBLE_FLAG in stats["flags"]
    assert any(reason in w and "no H&E tissue yields this" in w for w in stats["warnings"]), stats["warnings"]


def test_a_slide_of_plausible_nuclei_is_not_flagged(synthetic_slide, blob_model: Path, tmp_path: Path) -> None:
    stats = segment(synthetic_slide[0], blob_model, tmp_path)
    assert IMPLAUSIBLE_FLAG not in stats["flags"] and stats["n_nuclei"] > 500


@pytest.mark.parametrize(
    ("n", "tissue_mm2", "area", "expected"),
    [
        (1_000, 0.05, 40.0, None),  # 20,000 per mm², 80 % covered: dense tissue
        (10, 0.005, 40.0, None),  # too little tissue to count on
        (0, 0.005, None, None),
        (0, 0.5, None, "no nuclei found in 0.50 mm²"),
        (1_000, 0.05, 3.0, "mean nucleus area 3 µm² is outside"),
        (1_000, 0.05, 500.0, "mean nucleus area 500 µm² is outside"),
        (20, 1.0, 40.0, "20 nuclei per mm² of tissue, under the 100"),
        (3_000, 0.05, 40.0, "nuclei cover 240% of the tissue"),
    ],
)
def test_bounds_of_what_tissue_holds(n: int, tissue_mm2: float, area: float | None, expected: str | None) -> None:
    found = implausible_nuclei(n, tissue_mm2, area)
    assert found == expected if expected is None else (found is not None and expected in found), found
