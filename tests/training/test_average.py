"""Weight averaging of snapshots (pipeline.training.average): the mean of the weights, and batch-norm
statistics re-measured on the data given."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")  # the `train` extra

from pipeline.training.average import average_state_dicts, recalibrate_batch_norm  # noqa: E402
from pipeline.training.unet import NucleusUNet, UNetConfig  # noqa: E402

TINY = UNetConfig(base=2, convs_per_stage=1)


def nets(n: int) -> list[NucleusUNet]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(NucleusUNet(TINY))
    return out


def test_average_is_the_element_wise_mean() -> None:
    a, b, c = (n.state_dict() for n in nets(3))
    avg = average_state_dicts([a, b, c])
    for k, v in a.items():
        if v.is_floating_point():
            torch.testing.assert_close(avg[k], (a[k] + b[k] + c[k]) / 3)
        else:  # batch counters are not averaged
            assert torch.equal(avg[k], v)
    single = average_state_dicts([a])
    assert all(torch.equal(single[k], a[k]) for k in a)


def test_average_refuses_different_networks() -> None:
    a = nets(1)[0].state_dict()
    torch.manual_seed(0)
    other = NucleusUNet(UNetConfig(base=2, convs_per_stage=2)).state_dict()
    with pytest.raises(ValueError, match="different networks"):
        average_state_dicts([a, other])
    with pytest.raises(ValueError):
        average_state_dicts([])


def test_batch_norm_statistics_are_those_of_the_data() -> None:
    net = nets(1)[0]
    first = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    torch.manual_seed(5)
    batches = [torch.rand(2, 3, 32, 32) * 0.5 + 0.3 for _ in range(4)]
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    recalibrate_batch_norm(net, batches)
    assert not net.training and first.momentum == 0.1

    # the first batch-norm layer sees the first convolution's output: its running mean must be
    # that output's mean over all the batches (equal batch sizes → mean of the batch means)
    captured: list[torch.Tensor] = []
    hook = first.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0]))
    with torch.no_grad():
        for x in batches:
            net(x)
    hook.remove()
    expected = torch.stack([t.mean(dim=(0, 2, 3)) for t in captured]).mean(0)
    torch.testing.assert_close(first.running_mean, expected, rtol=1e-4, atol=1e-5)
    # weights untouched
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())
