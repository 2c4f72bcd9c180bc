"""Building blocks for learned codecs: GDN, a factorized entropy bottleneck, Gaussian likelihoods.

These follow Ballé et al. (2017, 2018) and CompressAI's conventions, reduced to what our
exported model packages need. Everything here is training-side (torch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SCALE_MIN = 0.11
LIKELIHOOD_MIN = 1e-9


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


class GDN(nn.Module):
    """Generalized divisive normalization: y = x / sqrt(beta + gamma * x^2) (inverse: multiply)."""

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self.beta_min = beta_min
        self.pedestal = 2.0**-18
        self.beta = nn.Parameter(torch.sqrt(torch.ones(channels) + self.pedestal))
        self.gamma = nn.Parameter(torch.sqrt(gamma_init * torch.eye(channels) + self.pedestal))

    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        beta = torch.clamp(self.beta, min=math.sqrt(self.beta_min + self.pedestal)) ** 2 - self.pedestal
        gamma = torch.clamp(self.gamma, min=math.sqrt(self.pedestal)) ** 2 - self.pedestal
        return beta, gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta, gamma = self.effective()
        c = x.shape[1]
        norm = F.conv2d(x * x, gamma.view(c, c, 1, 1), beta)
        norm = torch.sqrt(norm)
        return x * norm if self.inverse else x / norm


def gaussian_likelihood(y: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Probability mass of the unit-width bin around y under N(mean, scale)."""
    scale = torch.clamp(scale, min=SCALE_MIN)
    v = torch.abs(y - mean)
    upper = 0.5 * torch.erfc(-(0.5 - v) / (scale * math.sqrt(2)))
    lower = 0.5 * torch.erfc(-(-0.5 - v) / (scale * math.sqrt(2)))
    return torch.clamp(upper - lower, min=LIKELIHOOD_MIN)


class EntropyBottleneck(nn.Module):
    """Ballé's non-parametric factorized density, one univariate model per channel."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        self.channels = channels
        f = (1,) + tuple(filters) + (1,)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / f[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, f[i + 1], f[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, f[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, f[i + 1], 1)))

    def logits_cumulative(self, x: torch.Tensor) -> torch.Tensor:
        """x: (channels, 1, n) -> logits of the CDF at x, same shape."""
        logits = x
        for i in range(len(self.matrices)):
            logits = torch.matmul(F.softplus(self.matrices[i]), logits) + self.biases[i]
            if i < len(self.factors):
                logits = logits + torch.tanh(self.factors[i]) * torch.tanh(logits)
        return logits

    def bin_probabilities(self, v: torch.Tensor) -> torch.Tensor:
        """v: (channels, 1, n) values -> the mass of the unit-width bin around each, same shape."""
        lower = self.logits_cumulative(v - 0.5)
        upper = self.logits_cumulative(v + 0.5)
        sign = -torch.sign(lower + upper).detach()
        return torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, C, H, W) (noisy or rounded) -> bin probabilities, same shape."""
        b, c, h, w = z.shape
        lik = self.bin_probabilities(z.permute(1, 0, 2, 3).reshape(c, 1, -1))
        lik = lik.reshape(c, b, h, w).permute(1, 0, 2, 3)
        return torch.clamp(lik, min=LIKELIHOOD_MIN)

    def integer_values(self, radius: int) -> torch.Tensor:
        """(channels, 1, 2*radius+1): the integers -radius..radius for every channel."""
        v = torch.arange(-radius, radius + 1, dtype=torch.float32)
        return v.view(1, 1, -1).repeat(self.channels, 1, 1)

    @torch.no_grad()
    def pmf_table(self, radius: int) -> torch.Tensor:
        """(channels, 2*radius+1) probabilities of the integers -radius..radius."""
        return self.bin_probabilities(self.integer_values(radius)).view(self.channels, -1)
