"""Every kernel's device twin against its CPU result, on the same inputs.

Two device back ends: ``cupy`` (marked ``gpu``: skipped where no CUDA device is present) and
``stand-in``, a numpy array type that the dispatch point takes for a device array (its module is
named ``cupy``), so the device code paths — the dispatch, the device branch of the watershed, the
host copies — run on a CPU machine too. The stand-in cannot catch a numpy call that cupy lacks;
the ``cupy`` runs do.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import scipy.ndimage as scipy_ndi

from pipeline.kernels.dispatch import array_module, is_device_array, to_host
from pipeline.kernels.features import nucleus_moments
from pipeline.kernels.nuclei import (
    NucleusThresholds,
    fill_label_holes,
    instances_from_probabilities,
    remove_small_labels,
    seed_components,
    seeds_from_centres,
    watershed_from_seeds,
)
from pipeline.kernels.stain import (
    haematoxylin,
    macenko_normalise,
    macenko_stains,
    reinhard_normalise,
    reinhard_stats,
)
from pipeline.kernels.tissue import tissue_mask
from pipeline.testing import synthetic_slide_image
from tests.kernels.test_level_flood import matched_share


class StandInDeviceArray(np.ndarray):
    """numpy memory that the dispatch point treats as a device array."""

    def get(self) -> np.ndarray:
        return np.asarray(self).copy()


StandInDeviceArray.__module__ = "cupy._core.core"


def _device(x: Any) -> Any:
    if isinstance(x, np.ndarray) and not isinstance(x, StandInDeviceArray):
        return x.view(StandInDeviceArray)
    if isinstance(x, tuple):
        return tuple(_device(v) for v in x)
    if isinstance(x, list):
        return [_device(v) for v in x]
    return x


def _wrapping(module: types.ModuleType, name: str) -> types.ModuleType:
    """A module whose functions are ``module``'s, returning stand-in device arrays."""
    wrapped = types.ModuleType(name)

    def attr(key: str) -> Any:
        value = getattr(module, key)
        if callable(value) and not isinstance(value, type):
            return lambda *a, **k: _device(value(*a, **k))
        return value

    wrapped.__getattr__ = attr  # type: ignore[method-assign]
    return wrapped


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    fake_cupy = _wrapping(np, "cupy")
    fake_cupyx = types.ModuleType("cupyx")
    fake_scipy = types.ModuleType("cupyx.scipy")
    fake_ndi = _wrapping(scipy_ndi, "cupyx.scipy.ndimage")
    fake_cupyx.scipy = fake_scipy  # type: ignore[attr-defined]
    fake_scipy.ndimage = fake_ndi  # type: ignore[attr-defined]
    for name, mod in {
        "cupy": fake_cupy,
        "cupyx": fake_cupyx,
        "cupyx.scipy": fake_scipy,
        "cupyx.scipy.ndimage": fake_ndi,
    }.items():
        monkeypatch.setitem(sys.modules, name, mod)
    yield


BACKENDS = ["stand-in", pytest.param("cupy", marks=pytest.mark.gpu)]


@pytest.fixture(params=BACKENDS)
def to_device(request: pytest.FixtureRequest) -> Any:
    if request.param == "stand-in":
        request.getfixturevalue("stand_in")
        return lambda a: np.asarray(a).view(StandInDeviceArray)
    import cupy

    return cupy.asarray


def on_device(x: Any) -> np.ndarray:
    """Asserts ``x`` stayed a device array, and returns its host copy."""
    assert is_device_array(x), f"result left the device: {type(x)}"
    return to_host(x)


@pytest.fixture(scope="module")
def slide_rgb() -> np.ndarray:
    rgb, _ = synthetic_slide_image(320, 256, seed=7, radius=(6.0, 9.0), spacing=18.0)
    return rgb


@pytest.fixture(scope="module")
def probabilities() -> np.ndarray:
    """2×H×W centre/material maps of touching discs with noise."""
    rng = np.random.default_rng(2)
    size = 160
    yy, xx = np.mgrid[:size, :size]
    prob = np.zeros((2, size, size), np.float32)
    for cy in np.arange(10, size, 16):
        for cx in np.arange(10, size, 16):
            y, x, r = cy + rng.uniform(-3, 3), cx + rng.uniform(-3, 3), rng.uniform(6, 10)
            d = np.hypot(yy - y, xx - x)
            prob[1] = np.maximum(prob[1], np.clip(1.2 - d / r, 0, 1))
            prob[0] = np.maximum(prob[0], np.exp(-(d**2) / 8))
    return np.clip(prob + rng.normal(0, 0.03, prob.shape).astype(np.float32), 0, 1)


def test_stand_in_is_taken_for_a_device_array(stand_in: None) -> None:
    x = np.zeros(3).view(StandInDeviceArray)
    assert is_device_array(x) and array_module(x).__name__ == "cupy"
    assert is_device_array(array_module(x).zeros(2))
    assert not is_device_array(np.zeros(2))


def test_tissue_mask(to_device: Any, slide_rgb: np.ndarray) -> None:
    cpu = tissue_mask(slide_rgb)
    np.testing.assert_array_equal(on_device(tissue_mask(to_device(slide_rgb))), cpu)


def test_reinhard(to_device: Any, slide_rgb: np.ndarray) -> None:
    tissue = tissue_mask(slide_rgb)
    cpu_stats = reinhard_stats(slide_rgb, tissue)
    dev_stats = reinhard_stats(to_device(slide_rgb), to_device(tissue))
    np.testing.assert_allclose(dev_stats.mean, cpu_stats.mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dev_stats.std, cpu_stats.std, rtol=1e-4, atol=1e-5)
    out = on_device(reinhard_normalise(to_device(slide_rgb), cpu_stats))
    np.testing.assert_allclose(out, reinhard_normalise(slide_rgb, cpu_stats), atol=1e-5)
    np.testing.assert_allclose(on_device(haematoxylin(to_device(slide_rgb))), haematoxylin(slide_rgb), atol=1e-5)


def test_macenko(to_device: Any, slide_rgb: np.ndarray) -> None:
    tissue = tissue_mask(slide_rgb)
    cpu = macenko_stains(slide_rgb, tissue)
    dev = macenko_stains(to_device(slide_rgb), to_device(tissue))
    np.testing.assert_allclose(np.array(dev.vectors), np.array(cpu.vectors), atol=1e-4)
    np.testing.assert_allclose(dev.max_concentration, cpu.max_concentration, rtol=1e-3)
    out = on_device(macenko_normalise(to_device(slide_rgb), cpu))
    np.testing.assert_allclose(out, macenko_normalise(slide_rgb, cpu), atol=1e-5)


def test_seeds_holes_relabel(to_device: Any, probabilities: np.ndarray) -> None:
    params = NucleusThresholds(centre_threshold=0.5, centre_weak_threshold=0.2)
    material = scipy_ndi.gaussian_filter(probabilities[1], params.material_sigma)
    foreground = material > params.material_threshold
    cpu_seeds = seeds_from_centres(probabilities[0], foreground, params)
    dev_seeds = seeds_from_centres(to_device(probabilities[0]), to_device(foreground), params)
    np.testing.assert_array_equal(on_device(dev_seeds), cpu_seeds)
    labels = watershed_from_seeds(-material, cpu_seeds, foreground)
    holed = labels.copy()
    holed[(labels > 0) & (scipy_ndi.binary_erosion(labels > 0, iterations=3))] = 0
    holed[::7] = labels[::7]  # keep some interior rows so the holes are enclosed
    cpu_filled = fill_label_holes(holed)
    assert (cpu_filled != holed).sum() > 1000  # there were holes to fill
    dev_filled = on_device(fill_label_holes(to_device(holed)))
    assert (dev_filled != cpu_filled).mean() < 0.002  # nearest-pixel ties may differ on cupy
    np.testing.assert_array_equal(
        on_device(remove_small_labels(to_device(labels), 60)), remove_small_labels(labels, 60)
    )


def test_watershed_device_branch(to_device: Any, probabilities: np.ndarray) -> None:
    params = NucleusThresholds(centre_threshold=0.5)
    material = scipy_ndi.gaussian_filter(probabilities[1], params.material_sigma)
    foreground = material > params.material_threshold
    seeds = seeds_from_centres(probabilities[0], foreground, params)
    cpu = watershed_from_seeds(-material, seeds, foreground)
    dev = on_device(watershed_from_seeds(to_device(-material), to_device(seeds), to_device(foreground)))
    assert matched_share(cpu, dev) >= 0.99


def test_seed_components(to_device: Any, probabilities: np.ndarray) -> None:
    """The benchmark's count of touching nuclei, computed where the probabilities are."""
    params = NucleusThresholds(centre_threshold=0.5)
    cpu = seed_components(probabilities, params)
    assert cpu["multi_seed_components"] > 0 and cpu["seeds"] > cpu["components"]
    assert seed_components(to_device(probabilities), params) == cpu


def test_instances_end_to_end(to_device: Any, probabilities: np.ndarray) -> None:
    params = NucleusThresholds(centre_threshold=0.5)
    cpu = instances_from_probabilities(probabilities, params)
    dev = on_device(instances_from_probabilities(to_device(probabilities), params))
    assert cpu.max() > 60
    assert matched_share(cpu, dev) >= 0.99 and matched_share(dev, cpu) >= 0.99


def test_instances_from_four_outputs_end_to_end(to_device: Any, probabilities: np.ndarray) -> None:
    """A four-output model's maps (the distance maps of the CPU's own instances, noisy): the
    device reads them as the CPU does."""
    from pipeline.training.targets import distance_maps

    rng = np.random.default_rng(5)
    truth = instances_from_probabilities(probabilities, NucleusThresholds(centre_threshold=0.5))
    maps = np.clip(distance_maps(truth) + rng.normal(0, 0.02, (2, *truth.shape)).astype(np.float32), 0, 1)
    four = np.concatenate([probabilities, maps])
    params = NucleusThresholds(centre_threshold=0.5, distance_weight=1.0)
    cpu = instances_from_probabilities(four, params)
    dev = on_device(instances_from_probabilities(to_device(four), params))
    assert cpu.max() > 60
    assert matched_share(cpu, dev) >= 0.99 and matched_share(dev, cpu) >= 0.99


def test_nucleus_moments(to_device: Any, probabilities: np.ndarray, slide_rgb: np.ndarray) -> None:
    labels = instances_from_probabilities(probabilities, NucleusThresholds(centre_threshold=0.5))
    intensity = probabilities[1]
    cpu = nucleus_moments(labels, intensity)
    dev = nucleus_moments(to_device(labels), to_device(intensity))
    for key, values in cpu.items():
        assert isinstance(dev[key], np.ndarray) and not is_device_array(dev[key])  # host tables
        np.testing.assert_allclose(dev[key], values, rtol=1e-9, atol=1e-9, err_msg=key)
