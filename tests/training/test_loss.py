"""The training loss (pipeline.training.train.loss_fn): what a four-output U-net is pulled towards."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the `train` extra

from pipeline.training.targets import training_targets  # noqa: E402
from pipeline.training.train import distance_map_loss, loss_fn  # noqa: E402


def targets() -> torch.Tensor:
    yy, xx = np.mgrid[:32, :48]
    labels = np.zeros((32, 48), np.int32)
    labels[np.hypot(yy - 16, xx - 16) <= 8] = 1
    labels[(np.hypot(yy - 16, xx - 30) <= 7) & (xx > 23)] = 2
    return torch.from_numpy(training_targets(labels, centre="distance", distances=True))[None]


def logits_of(p: torch.Tensor) -> torch.Tensor:
    return torch.logit(p.clamp(1e-4, 1 - 1e-4))


def test_the_distance_loss_is_least_at_the_target_maps() -> None:
    target = targets()
    exact = distance_map_loss(logits_of(target), target)
    assert float(exact) < 1e-5
    flat = target.clone()
    flat[:, 2:] = 0.5  # an untrained head: no direction anywhere
    assert float(distance_map_loss(logits_of(flat), target)) > 0.1
    swapped = target.clone()
    swapped[:, 2:] = 1 - target[:, 2:]  # the field pointing the wrong way
    assert float(distance_map_loss(logits_of(swapped), target)) > float(distance_map_loss(logits_of(flat), target))


def test_two_outputs_are_scored_as_before_and_four_add_the_weighted_distance_loss() -> None:
    target = targets()
    logits = torch.zeros_like(target)
    two = loss_fn(logits[:, :2], target[:, :2], centre_weight=1.0)
    four = loss_fn(logits, target, centre_weight=1.0, distance_weight=0.5)
    torch.testing.assert_close(four, two + 0.5 * distance_map_loss(logits, target))
