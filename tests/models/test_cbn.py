"""Cross-Iteration BN: reduces to BatchNorm2d, averages, compensates, runs under autocast."""

from __future__ import annotations

import copy

import torch
from torch import nn

from hftrain.models.cbn import ConvCBN, CrossIterationBatchNorm2d, combine_statistics



def _conv(seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(3, 4, 3, padding=1)


def _batches(n: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 6, 5, generator=g) * 2 + 0.5 for _ in range(n)]


def _sgd_train(module: nn.Module, batches: list[torch.Tensor], lr: float = 0.1) -> list[torch.Tensor]:
    """Train on a loss that depends on the normalised output; return the outputs seen."""
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    outs = []
    for x in batches:
        out = module(x)
        loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() + out.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        outs.append(out.detach())
    return outs


def test_k0_equals_batchnorm_train_and_eval() -> None:
    conv = _conv()
    bn_model = nn.Sequential(copy.deepcopy(conv), nn.BatchNorm2d(4))
    cbn_model = ConvCBN(copy.deepcopy(conv), CrossIterationBatchNorm2d(4, buffer_num=0))
    with torch.no_grad():  # non-trivial affine so that it is checked too
        for norm in (bn_model[1], cbn_model.cbn):
            norm.weight.copy_(torch.tensor([1.0, 0.5, 2.0, -1.0]))
            norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    batches = _batches(4)
    for got, want in zip(_sgd_train(cbn_model, batches), _sgd_train(bn_model, batches)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cbn_model.cbn.running_mean, bn_model[1].running_mean)
    torch.testing.assert_close(cbn_model.cbn.running_var, bn_model[1].running_var)
    torch.testing.assert_close(cbn_model.conv.weight, bn_model[0].weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cbn_model.cbn.weight, bn_model[1].weight, rtol=1e-5, atol=1e-6)
    cbn_model.eval()
    bn_model.eval()
    x = _batches(1, seed=9)[0]
    torch.testing.assert_close(cbn_model(x), bn_model(x), rtol=1e-5, atol=1e-5)


def test_rho0_is_plain_average_of_stored_statistics() -> None:
    k = 2
    module = ConvCBN(_conv(), CrossIterationBatchNorm2d(4, buffer_num=k, rho=0.0, affine=False))
    batches = _batches(4)
    opt = torch.optim.SGD(module.conv.parameters(), lr=0.5)
    stats = []
    for step, x in enumerate(batches):
        with torch.no_grad():
            y = module.conv(x)
        stats.append((y.mean(dim=(0, 2, 3)), y.square().mean(dim=(0, 2, 3))))
        out = module(x)
        if step >= k:  # the buffer is full: the current and the k previous iterations
            window = stats[-(k + 1):]
            mean = torch.stack([m for m, _ in window]).mean(0)
            var = torch.stack([s for _, s in window]).mean(0) - mean.square()
            expected = (y - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + 1e-5)
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
            # and the weight really moved, so compensation would have changed the result
            assert not torch.allclose(stats[-1][0], stats[-2][0])
        opt.zero_grad()
        out.square().mul(torch.arange(4.0)[None, :, None, None]).sum().backward()
        opt.step()


def test_compensation_matches_finite_difference() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=True).double()
    cbn = CrossIterationBatchNorm2d(3, buffer_num=1).double()
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    cbn(conv(x), conv.weight)  # stores the statistics and their derivatives at W0

    def stats(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = nn.functional.conv2d(x, weight, conv.bias, padding=1)
        return y.mean(dim=(0, 2, 3)), y.square().mean(dim=(0, 2, 3))

    w0 = conv.weight.detach().clone()
    direction = torch.randn_like(w0)
    _, sq0 = stats(w0)
    for h in (1e-3, 1e-4):
        with torch.no_grad():
            conv.weight.copy_(w0 + h * direction)
        means, squares = cbn.compensated_history(conv.weight, 1)
        mean_h, sq_h = stats(conv.weight.detach())
        # the mean is linear in W: first order is exact
        torch.testing.assert_close(means[0], mean_h, rtol=1e-9, atol=1e-12)
        # the mean-square is quadratic in W: the Taylor term matches the difference quotient
        # up to the second-order remainder h * mean(conv(x, direction)**2), exactly
        fd = (sq_h - sq0) / h
        taylor = (squares[0] - sq0) / h
        remainder = h * nn.functional.conv2d(x, direction, padding=1).square().mean(dim=(0, 2, 3))
        torch.testing.assert_close(fd - taylor, remainder, rtol=1e-6, atol=1e-9)
        assert taylor.abs().max() > 10 * remainder.abs().max()  # and the first-order term dominates
    # without compensation the stored statistics would be off by O(h)
    stale = cbn.compensated_history(w0, 1)[0][0]
    assert not torch.allclose(stale, mean_h)


def test_negative_variance_entries_are_dropped_per_channel() -> None:
    means = torch.tensor([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0]])
    squares = torch.tensor([[2.0, 5.0], [4.0, 1.0], [26.0, 17.0]])  # row 1, channel 0: 4 - 9 < 0
    mean, var = combine_statistics(means, squares)
    torch.testing.assert_close(mean, torch.tensor([3.0, 2.0]))  # channel 0 averages rows 0 and 2
    torch.testing.assert_close(var, torch.tensor([14.0 - 9.0, 23.0 / 3.0 - 4.0]))


def test_burnin_delays_the_buffer() -> None:
    cbn = CrossIterationBatchNorm2d(4, buffer_num=3, burnin=5)
    assert [cbn.active_buffer_num(i) for i in (1, 5, 6)] == [0, 0, 3]
    ramp = CrossIterationBatchNorm2d(4, buffer_num=4, burnin=4, two_stage=False)
    assert [ramp.active_buffer_num(i) for i in (1, 2, 4, 9)] == [1, 2, 4, 4]
    # during burn-in the layer is exactly BN on the current batch
    module = ConvCBN(_conv(), cbn)
    bn = nn.Sequential(copy.deepcopy(module.conv), nn.BatchNorm2d(4))
    outs_cbn = _sgd_train(module, _batches(7))
    outs_bn = _sgd_train(bn, _batches(7))
    for step in range(5):
        torch.testing.assert_close(outs_cbn[step], outs_bn[step], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outs_cbn[6], outs_bn[6], atol=1e-4)
    assert len(cbn._history) == 3


def test_runs_under_bf16_autocast() -> None:
    module = ConvCBN(_conv(), CrossIterationBatchNorm2d(4, buffer_num=2))
    reference = copy.deepcopy(module)
    batches = _batches(4)
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    for x in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(x)
            assert out.dtype == torch.bfloat16
            loss = out.float().square().mean() + out.float()[:, 0].mean()
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(module.conv.weight.grad).all()
        opt.step()
    assert len(module.cbn._history) == 2
    assert module.cbn._history[0].d_mean_d_weight.dtype == torch.float32
    # same updates in fp32 give nearly the same output
    _sgd_train_plain = torch.optim.SGD(reference.parameters(), lr=0.05)
    for x in batches:
        out32 = reference(x)
        loss = out32.square().mean() + out32[:, 0].mean()
        _sgd_train_plain.zero_grad()
        loss.backward()
        _sgd_train_plain.step()
    torch.testing.assert_close(out.float(), out32.detach(), rtol=0.05, atol=0.05)
    module.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(module(batches[0]).float()).all()
