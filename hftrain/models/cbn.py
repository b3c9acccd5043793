"""Cross-Iteration Batch Normalization (Yao et al., "Cross-Iteration Batch Normalization", CVPR 2021).

CBN estimates the batch statistics of a layer from the current iteration and the last ``k``
ones. Statistics of a past iteration were computed with older weights of the preceding
convolution; they are brought up to date with a first-order Taylor term,

    mu_tau(W_t)     ~= mu_tau(W_tau)     + sum_{c_in,kh,kw} d mu_tau / dW     * (W_t - W_tau)
    meanx2_tau(W_t) ~= meanx2_tau(W_tau) + sum_{c_in,kh,kw} d meanx2_tau / dW * (W_t - W_tau)

(per output channel; only the preceding layer's weight is compensated, as in the paper).
The compensated statistics are averaged over the window after dropping, per channel, the
iterations whose compensated variance ``meanx2 - mu**2`` came out negative; the variance is
``mean(meanx2) - mean(mu)**2``. The paper clamps instead (``max(nu, mu**2)``); dropping is
what the authors' code (Howal/Cross-iterationBatchNorm) does.

Where this module deliberately differs from that reference code:

- it normalises as ``(y - mu) / sqrt(var + eps)`` (BatchNorm2d's convention, so ``k = 0`` *is*
  BatchNorm2d), not ``(y - mu) / (sqrt(var) + eps)``;
- the buffer fills during training whenever it will be needed (the reference's fill
  condition could leave it empty for good), and nothing is allocated with ``.cuda()``;
- statistics and their derivatives are computed in float32 (float64 for float64 inputs)
  with autocast off, so the layer works under ``torch.autocast`` (the output has the
  input's dtype).

Only the current iteration's statistics carry gradient; past statistics and their
compensation are constants (as in the reference code). Running statistics are updated from
the current batch only, and evaluation uses them, exactly like BatchNorm2d.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class _PastStatistics:
    """Statistics of one past iteration, with what is needed to compensate them."""

    mean: torch.Tensor  # (C,)
    mean_square: torch.Tensor  # (C,)
    d_mean_d_weight: torch.Tensor  # weight-shaped
    d_mean_square_d_weight: torch.Tensor  # weight-shaped
    weight: torch.Tensor  # the preceding conv's weight at that iteration


def combine_statistics(means: torch.Tensor, mean_squares: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average per-iteration statistics ``(T, C)`` into one mean and variance ``(C,)``.

    Row 0 is the current iteration and is always used; a past row is dropped for a channel
    where its variance ``mean_square - mean**2`` is negative (a sign that the Taylor
    compensation broke down there).
    """
    valid = (mean_squares - means.square()) >= 0
    valid[0] = True
    weights = valid.to(means.dtype)
    count = weights.sum(dim=0)
    mean = (means * weights).sum(dim=0) / count
    mean_square = (mean_squares * weights).sum(dim=0) / count
    return mean, (mean_square - mean.square()).clamp(min=0)


class CrossIterationBatchNorm2d(nn.Module):
    """BatchNorm2d whose training statistics span the current and the last ``buffer_num`` iterations.

    Called as ``cbn(y, weight)`` where ``y = conv(x)`` and ``weight`` is that conv's weight
    (the same tensor object, so that derivatives of the statistics can be taken). ``ConvCBN``
    pairs the two.

    Args:
        num_features: channels of ``y``.
        buffer_num: ``k``, how many past iterations to use (0 makes this BatchNorm2d).
        rho: scale of the compensation term (1 = the paper; 0 = naive averaging).
        burnin: iterations before the buffer is used.
        two_stage: after burn-in use all ``k`` at once (True), or ramp ``k`` up linearly
            over the burn-in (False).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        buffer_num: int = 3,
        rho: float = 1.0,
        burnin: int = 0,
        two_stage: bool = True,
    ) -> None:
        super().__init__()
        if buffer_num < 0 or burnin < 0:
            raise ValueError("buffer_num and burnin must be >= 0")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.buffer_num = buffer_num
        self.rho = rho
        self.burnin = burnin
        self.two_stage = two_stage
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        # Training iterations seen; drives the burn-in and survives save/load.
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self._history: deque[_PastStatistics] = deque(maxlen=max(buffer_num, 1))
        self._iterations: int | None = None  # host-side copy of num_batches_tracked

    def _load_from_state_dict(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(*args, **kwargs)
        self._iterations = None
        self.reset_history()

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"buffer_num={self.buffer_num}, rho={self.rho}, burnin={self.burnin}, two_stage={self.two_stage}"
        )

    def reset_history(self) -> None:
        """Forget the stored past statistics (done automatically when the module moves)."""
        self._history.clear()

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # .to()/.cuda()/.half() would leave the stored statistics behind on the old device.
        self.reset_history()
        return super()._apply(fn, recurse)

    def active_buffer_num(self, iteration: int) -> int:
        """How many past iterations are used at training iteration ``iteration`` (1-based)."""
        if self.burnin == 0:
            return self.buffer_num
        if self.two_stage:
            return self.buffer_num if iteration > self.burnin else 0
        return int(self.buffer_num * min(iteration / self.burnin, 1.0))

    def _will_need_history(self, iteration: int) -> bool:
        return self.buffer_num > 0 and self.active_buffer_num(iteration + self.buffer_num) > 0

    def compensated_history(self, weight: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and mean-squares ``(count', C)`` of the last ``count`` iterations, moved to ``weight``.

        ``count'`` is at most ``count`` (fewer while the buffer fills).
        """
        means, mean_squares = [], []
        for past in list(self._history)[:count]:
            current = weight.detach().to(past.weight.dtype)
            delta = self.rho * (current - past.weight)
            means.append(past.mean + (past.d_mean_d_weight * delta).flatten(1).sum(1))
            mean_squares.append(past.mean_square + (past.d_mean_square_d_weight * delta).flatten(1).sum(1))
        if not means:
            empty = weight.new_zeros(0, self.num_features, dtype=torch.float32)
            return empty, empty
        return torch.stack(means), torch.stack(mean_squares)

    def forward(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Normalise ``y = conv(x)`` given that conv's ``weight``."""
        if y.dim() != 4:
            raise ValueError(f"expected a 4D input, got {y.dim()}D")
        with torch.autocast(device_type=y.device.type, enabled=False):
            full = y if y.dtype in (torch.float32, torch.float64) else y.float()
            out = self._normalise(full, weight)
        return out.to(y.dtype)

    def _normalise(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(y, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

        if self._iterations is None:  # read the buffer once (a device sync), then count here
            self._iterations = int(self.num_batches_tracked)
        self._iterations += 1
        self.num_batches_tracked += 1
        iteration = self._iterations
        var, mean = torch.var_mean(y, dim=(0, 2, 3), unbiased=False)
        mean_square = var + mean.square()

        can_differentiate = torch.is_grad_enabled() and y.requires_grad and weight.requires_grad
        use = self.active_buffer_num(iteration) if can_differentiate else 0
        if use > 0 and self._history:
            past_means, past_mean_squares = self.compensated_history(weight, use)
            batch_mean, batch_var = combine_statistics(
                torch.cat([mean[None], past_means]), torch.cat([mean_square[None], past_mean_squares])
            )
        else:
            batch_mean, batch_var = mean, var

        if can_differentiate and self._will_need_history(iteration):
            # Each output channel depends only on its own filter, so the gradient of the sum
            # over channels gives every channel's derivative in that channel's weight slice.
            d_mean, d_mean_square = (
                torch.autograd.grad(stat.sum(), weight, retain_graph=True)[0].to(y.dtype)
                for stat in (mean, mean_square)
            )
            self._history.appendleft(
                _PastStatistics(
                    mean.detach(), mean_square.detach(), d_mean, d_mean_square, weight.detach().to(y.dtype, copy=True)
                )
            )

        with torch.no_grad():
            n = y.numel() // y.shape[1]
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * (n / max(n - 1, 1)), self.momentum)

        scale = torch.rsqrt(batch_var + self.eps)
        out = (y - batch_mean[None, :, None, None]) * scale[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


class ConvCBN(nn.Module):
    """A convolution followed by its Cross-Iteration BN (which needs the conv's weight)."""

    def __init__(self, conv: nn.Conv2d, cbn: CrossIterationBatchNorm2d) -> None:
        super().__init__()
        self.conv = conv
        self.cbn = cbn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbn(self.conv(x), self.conv.weight)
