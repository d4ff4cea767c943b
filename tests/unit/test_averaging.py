"""The weight average (EMA) of model/averaging.py: the update rule, the swap in and out, resume."""

import pytest

torch = pytest.importorskip("torch")

from model.averaging import WeightAverage  # noqa: E402


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    net.bias.requires_grad_(False)
    return net


def test_the_average_grows_its_horizon_with_the_steps_up_to_the_decay():
    net = _net()
    ema = WeightAverage(net, decay=0.9)
    w0 = net.weight.detach().clone()
    with ema.applied():
        assert torch.equal(net.weight, w0)  # no update yet: the initial weights
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update()  # d = min(0.9, 2 / 11): mostly the new weights
    with ema.applied():
        assert torch.allclose(net.weight, w0 + (1 - 2 / 11))
    for _ in range(100):  # d reaches the cap 0.9 after 80 updates
        ema.update()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update()
    with ema.applied():
        assert torch.allclose(net.weight, w0 + 1.0 + 0.1, atol=1e-5)


def test_applied_swaps_the_average_in_and_restores_the_trained_weights_even_on_error():
    net = _net()
    ema = WeightAverage(net, decay=0.99)
    ema.update()
    trained = net.weight.detach().clone() + 5.0
    with torch.no_grad():
        net.weight.copy_(trained)
    bias = net.bias.detach().clone()
    with pytest.raises(RuntimeError), ema.applied():
        assert not torch.equal(net.weight, trained)
        raise RuntimeError("evaluation failed")
    assert torch.equal(net.weight, trained)
    assert torch.equal(net.bias, bias)  # frozen parameters are neither averaged nor touched


def test_state_dict_round_trip_resumes_the_same_average():
    net = _net()
    ema = WeightAverage(net, decay=0.5)
    with torch.no_grad():
        net.weight.mul_(3.0)
    ema.update()
    resumed = WeightAverage(net, decay=0.5)
    resumed.load_state_dict(ema.state_dict())
    assert resumed.updates == 1
    with ema.applied():
        expected = net.weight.detach().clone()
    with resumed.applied():
        assert torch.equal(net.weight, expected)


def test_decay_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(_net(), decay=1.0)
