"""The convolutional rate-distortion codec: a mean-scale hyperprior model with gain units.

Architecture (Ballé 2018 / Minnen 2018, sized for a 2-core CPU):

    x -> g_a (4 strided 5x5 convs + GDN) -> y            (1/16 resolution, M channels)
    y * gain[q] -> h_a -> z                              (1/64 resolution, Nz channels)
    z_hat = round(z), coded with a factorized prior (per-channel tables)
    h_s(z_hat) -> (mean, log-scale) of y * gain[q]       (run in exact integer arithmetic at
                                                          inference: see aecompress.hyper)
    q_sym = round(y * gain - mean), coded with Gaussian tables indexed by the scale
    x_hat = g_s((q_sym + mean) / gain[q])

One model covers the whole rate range: each of K quality levels has a per-channel gain vector
(Cui et al. 2021, "gain units"); quality levels in between interpolate the gains in log space.
h_s is built only from 3x3 convs, pixel shuffles and ReLUs so that it can be run with integer
weights and activations, making the probability tables bit-identical on every machine.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import GDN, EntropyBottleneck, gaussian_likelihood, ste_round

# Rate-distortion trade-offs of the quality levels (CompressAI's MSE lambdas, extended).
LAMBDAS = (0.0009, 0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)

SCALE_TABLE_MIN = 0.11
SCALE_TABLE_MAX = 256.0
SCALE_LEVELS = 64


def conv(cin: int, cout: int, k: int = 5, s: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=s, padding=k // 2)


def deconv(cin: int, cout: int, k: int = 5, s: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, k, stride=s, padding=k // 2, output_padding=s - 1)


class Analysis(nn.Module):
    def __init__(self, cin: int, n: int, m: int):
        super().__init__()
        self.net = nn.Sequential(conv(cin, n), GDN(n), conv(n, n), GDN(n), conv(n, n), GDN(n), conv(n, m))

    def forward(self, x):
        return self.net(x)


class Synthesis(nn.Module):
    def __init__(self, cout: int, n: int, m: int):
        super().__init__()
        self.net = nn.Sequential(
            deconv(m, n), GDN(n, inverse=True), deconv(n, n), GDN(n, inverse=True),
            deconv(n, n), GDN(n, inverse=True), deconv(n, cout),
        )

    def forward(self, y):
        return self.net(y)


class HyperAnalysis(nn.Module):
    def __init__(self, m: int, nh: int, nz: int):
        super().__init__()
        self.net = nn.Sequential(
            conv(m, nh, 3, 1), nn.LeakyReLU(inplace=True), conv(nh, nh), nn.LeakyReLU(inplace=True), conv(nh, nz)
        )

    def forward(self, y):
        return self.net(y)


class HyperSynthesis(nn.Module):
    """Integer-friendly: 3x3 convs, ReLU, pixel shuffle. Output: 2M channels (mean, log-scale)."""

    def __init__(self, m: int, nh: int, nz: int):
        super().__init__()
        self.c1 = conv(nz, nh, 3, 1)
        self.c2 = conv(nh, 4 * nh, 3, 1)
        self.c3 = conv(nh, 4 * nh, 3, 1)
        self.c4 = conv(nh, 2 * m, 1, 1)

    def convs(self) -> list[nn.Conv2d]:
        return [self.c1, self.c2, self.c3, self.c4]

    def forward(self, z):
        h = F.relu(self.c1(z))
        h = F.relu(F.pixel_shuffle(self.c2(h), 2))
        h = F.relu(F.pixel_shuffle(self.c3(h), 2))
        return self.c4(h)


class HyperpriorCodec(nn.Module):
    def __init__(self, channels: int = 3, n: int = 64, m: int = 128, nh: int = 64, nz: int = 32,
                 lambdas: tuple[float, ...] = LAMBDAS):
        super().__init__()
        self.config = dict(channels=channels, n=n, m=m, nh=nh, nz=nz, lambdas=list(lambdas))
        self.g_a = Analysis(channels, n, m)
        self.g_s = Synthesis(channels, n, m)
        self.h_a = HyperAnalysis(m, nh, nz)
        self.h_s = HyperSynthesis(m, nh, nz)
        self.entropy_bottleneck = EntropyBottleneck(nz)
        self.register_buffer("lambdas", torch.tensor(lambdas, dtype=torch.float32))
        # Gains start spread so that low levels quantize coarsely and high levels finely.
        k = len(lambdas)
        init = torch.linspace(math.log(0.5), math.log(4.0), k).view(k, 1).repeat(1, m)
        self.log_gain = nn.Parameter(init.clone())
        self.log_inv_gain = nn.Parameter(-init.clone())

    @property
    def levels(self) -> int:
        return int(self.lambdas.numel())

    def mean_scale(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.h_s(z_hat)
        mean, log_scale = out.chunk(2, dim=1)
        log_scale = torch.clamp(log_scale, math.log(SCALE_TABLE_MIN), math.log(SCALE_TABLE_MAX))
        return mean, torch.exp(log_scale)

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> dict[str, torch.Tensor]:
        """x in [0, 1]; level: (B,) long tensor of quality levels."""
        gain = torch.exp(self.log_gain[level])[:, :, None, None]
        inv_gain = torch.exp(self.log_inv_gain[level])[:, :, None, None]
        y = self.g_a(x) * gain
        z = self.h_a(y)
        z_noisy = z + torch.empty_like(z).uniform_(-0.5, 0.5)
        z_hat = ste_round(z)
        z_lik = self.entropy_bottleneck.likelihood(z_noisy)
        mean, scale = self.mean_scale(z_hat)
        y_noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        y_lik = gaussian_likelihood(y_noisy, mean, scale)
        y_hat = ste_round(y - mean) + mean
        x_hat = self.g_s(y_hat * inv_gain)
        return {"x_hat": x_hat, "y_lik": y_lik, "z_lik": z_lik}


def rd_loss(model: HyperpriorCodec, x: torch.Tensor, level: torch.Tensor) -> dict[str, torch.Tensor]:
    out = model(x, level)
    b, _, h, w = x.shape
    pixels = h * w
    bits = (-torch.log2(out["y_lik"])).flatten(1).sum(1) + (-torch.log2(out["z_lik"])).flatten(1).sum(1)
    bpp = bits / pixels
    mse = F.mse_loss(out["x_hat"], x, reduction="none").flatten(1).mean(1)
    lam = model.lambdas[level]
    loss = (lam * 255**2 * mse + bpp).mean()
    return {"loss": loss, "bpp": bpp.mean(), "mse": mse.mean(), "x_hat": out["x_hat"]}
