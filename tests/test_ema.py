"""The shipped weight average warms up: a short run ships trained weights, a long one a true average."""
import torch
from torch import nn

from mcls.train.ema import ema_model


def _ramp(net: nn.Module, ema, values) -> None:
    for v in values:
        with torch.no_grad():
            net.weight.fill_(float(v))
        ema.update_parameters(net)


def test_after_k_steps_the_average_has_moved_as_far_as_the_warm_up_says():
    net = nn.Linear(1, 1, bias=False)
    ema = ema_model(net, decay=0.995)
    _ramp(net, ema, range(11))  # weights 0, 1, ..., 10: the first update copies, update c uses 1 - c ** -0.75
    expected = 0.0
    for c in range(1, 11):
        decay = min(0.995, 1 - (1 + c) ** -0.75)
        expected = decay * expected + (1 - decay) * c
    assert abs(ema.module.weight.item() - expected) < 1e-5
    # a fixed decay of 0.995 would still sit at ~0.26 of a 10-step ramp; the warmed-up average is past half of it
    fixed = 0.0
    for c in range(1, 11):
        fixed = 0.995 * fixed + 0.005 * c
    assert fixed < 0.3 and ema.module.weight.item() > 5


def test_the_decay_is_capped_at_the_configured_one_and_resumes_on_the_same_ramp():
    net = nn.Linear(1, 1, bias=False)
    ema = ema_model(net, decay=0.9)
    _ramp(net, ema, range(200))
    resumed = ema_model(nn.Linear(1, 1, bias=False), decay=0.9)
    resumed.load_state_dict(ema.state_dict())  # what last.pt carries: the weights and the step count
    before = ema.module.weight.item()
    _ramp(net, ema, [1000])
    _ramp(net, resumed, [1000])
    assert ema.module.weight.item() == resumed.module.weight.item()
    assert abs(ema.module.weight.item() - (0.9 * before + 0.1 * 1000)) < 1e-3  # late steps use the cap


def test_integer_buffers_are_copied_not_averaged():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ema_model(net, decay=0.99)
    for _ in range(3):
        net(torch.randn(4, 2))
        ema.update_parameters(net)
    assert ema.module[1].num_batches_tracked.item() == net[1].num_batches_tracked.item() == 3
