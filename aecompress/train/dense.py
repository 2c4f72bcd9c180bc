"""Dense (fully connected) autoencoders for small fixed-size images, with the classic variants.

One model class covers every variant; each option really changes the network or the objective:

* undercomplete: ``latent`` units in the code layer;
* ``linear``: no activations anywhere (learns the PCA subspace under MSE);
* stacked: ``hidden`` layer widths, mirrored in the decoder, He initialisation, ELU or ReLU;
* ``tied``: decoder layer i uses the transposed weight of encoder layer i (own biases);
* ``batchnorm``: BatchNorm1d after every hidden linear layer (not on the code, not on the output);
* ``code="sigmoid"``: a sigmoid code layer (KL-sparse autoencoders);
* ``variational``: the code layer predicts a mean and a log-variance, the decoder sees a sample;
* ``output``: "sigmoid" or "linear" output units.

Every model is also a codec: the code is multiplied by a per-dimension ``gain`` (a buffer), rounded,
and coded with a factorized entropy model (``eb``, one univariate density per code unit). Models
trained with a rate term (``Objective.rate > 0``) learn the scale of their code themselves
(additive uniform noise for the rate, straight-through rounding for the decoder, gain 1; sigmoid
codes use a fixed gain of 2^bits - 1); the others get their gain calibrated after training
(see :func:`calibrate_gain`) and their entropy model fitted to the scaled code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import EntropyBottleneck, ste_round

ACTIVATIONS = ("elu", "relu")
OUTPUTS = ("sigmoid", "linear")
LOSSES = ("mse", "bce", "ms-ssim")
VAE_MSE_SIGMA = 0.1        # mse is read as a Gaussian likelihood with this std for the VAE's ELBO


@dataclass
class DenseConfig:
    channels: int
    height: int
    width: int
    latent: int = 32
    hidden: tuple[int, ...] = (512, 256)
    activation: str = "elu"
    linear: bool = False
    tied: bool = False
    batchnorm: bool = False
    output: str = "sigmoid"
    code: str = "linear"            # "linear" or "sigmoid"
    variational: bool = False
    code_gain: float = 1.0          # initial gain from code to coded integers (sigmoid codes: 2^bits - 1)

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}")
        if self.latent < 1 or any(h < 1 for h in self.hidden):
            raise ValueError("layer widths must be positive")

    @property
    def inputs(self) -> int:
        return self.channels * self.height * self.width

    @property
    def dims(self) -> list[int]:
        return [self.inputs, *self.hidden, self.latent]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


@dataclass
class Objective:
    """What the training loop minimises besides the network itself."""

    loss: str = "mse"                   # distortion: mse, bce or ms-ssim
    rate: float = 0.0                   # lambda: loss += rate * bits per pixel of the noisy code
    sparse: tuple = ()                  # () or ("l1", weight) or ("kl", target, weight)
    contractive: float = 0.0            # weight of ||d code / d x||_F^2
    beta: float = 1.0                   # weight of the KL term of a VAE

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}")


class DenseAE(nn.Module):
    def __init__(self, cfg: DenseConfig):
        super().__init__()
        self.cfg = cfg
        dims = cfg.dims
        n = len(dims) - 1                       # linear layers in the encoder (last one makes the code)
        self.enc = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(n))
        self.enc_bn = nn.ModuleList(nn.BatchNorm1d(dims[i + 1]) for i in range(n - 1)) if cfg.batchnorm else None
        self.logvar = nn.Linear(dims[-2], cfg.latent) if cfg.variational else None
        # decoder layer j maps dims[n - j] -> dims[n - j - 1]
        if cfg.tied:
            self.dec = None
            self.dec_bias = nn.ParameterList(nn.Parameter(torch.zeros(dims[i])) for i in reversed(range(n)))
        else:
            self.dec = nn.ModuleList(nn.Linear(dims[i + 1], dims[i]) for i in reversed(range(n)))
            self.dec_bias = None
        self.dec_bn = nn.ModuleList(nn.BatchNorm1d(dims[i]) for i in reversed(range(1, n))) if cfg.batchnorm else None
        self.eb = EntropyBottleneck(cfg.latent)
        self.register_buffer("gain", torch.full((cfg.latent,), float(cfg.code_gain)))
        self.reset_parameters()

    # -- structure ------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.enc)

    def act(self, h: torch.Tensor) -> torch.Tensor:
        if self.cfg.linear:
            return h
        return F.elu(h) if self.cfg.activation == "elu" else F.relu(h)

    def code_act(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(h) if self.cfg.code == "sigmoid" else h

    def out_act(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(h) if self.cfg.output == "sigmoid" else h

    def dec_weight(self, j: int) -> torch.Tensor:
        """Weight of decoder layer j, shape (out, in)."""
        return self.enc[self.depth - 1 - j].weight.t() if self.cfg.tied else self.dec[j].weight

    def dec_b(self, j: int) -> torch.Tensor:
        return self.dec_bias[j] if self.cfg.tied else self.dec[j].bias

    def reset_parameters(self) -> None:
        """He initialisation for layers followed by ELU/ReLU, Glorot for linear ones, zero biases."""
        layers = list(self.enc) + ([self.logvar] if self.logvar is not None else []) + (list(self.dec) if self.dec else [])
        for lin in layers:
            if self.cfg.linear:
                nn.init.xavier_uniform_(lin.weight)
            else:
                nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            nn.init.zeros_(lin.bias)
        if self.logvar is not None:
            nn.init.zeros_(self.logvar.weight)
            nn.init.constant_(self.logvar.bias, -4.0)
        if self.cfg.tied:
            for b in self.dec_bias:
                nn.init.zeros_(b)

    def init_output_bias(self, mean_image: torch.Tensor) -> None:
        """Start the output at the data mean (in the output unit's pre-activation space)."""
        m = mean_image.flatten().clamp(1e-3, 1 - 1e-3)
        v = torch.logit(m) if self.cfg.output == "sigmoid" else m
        with torch.no_grad():
            self.dec_b(self.depth - 1).copy_(v)

    # -- passes ---------------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened input -> last hidden activation (the input itself for a single-layer model)."""
        h = x
        for i in range(self.depth - 1):
            h = self.enc[i](h)
            if self.enc_bn is not None:
                h = self.enc_bn[i](h)
            h = self.act(h)
        return h

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, C, H, W) or (B, inputs) in [0, 1] -> {"code"} (+ "mu", "logvar" for a VAE).

        "code" is what is quantized and coded: the sigmoid activations of a sigmoid code layer, the
        mean of a VAE, the linear code units otherwise.
        """
        h = self.features(x.flatten(1))
        pre = self.enc[-1](h)
        if self.cfg.variational:
            logvar = torch.clamp(self.logvar(h), -12.0, 6.0)
            return {"code": pre, "mu": pre, "logvar": logvar}
        return {"code": self.code_act(pre), "pre": pre}

    def decode_logits(self, code: torch.Tensor) -> torch.Tensor:
        """Code -> output pre-activations, flattened."""
        h = code
        for j in range(self.depth):
            h = F.linear(h, self.dec_weight(j), self.dec_b(j))
            if j < self.depth - 1:
                if self.dec_bn is not None:
                    h = self.dec_bn[j](h)
                h = self.act(h)
        return h

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """Code -> (B, C, H, W) reconstruction (not clamped)."""
        c = self.cfg
        return self.out_act(self.decode_logits(code)).view(-1, c.channels, c.height, c.width)

    def quantize(self, code: torch.Tensor) -> torch.Tensor:
        """What the decoder sees after coding: round(code * gain) / gain."""
        return torch.round(code * self.gain) / self.gain

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, quantized: bool = True) -> torch.Tensor:
        code = self.encode(x)["code"]
        if quantized:
            code = self.quantize(code)
        return self.decode(code).clamp(0, 1)

    def code_likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """y: (B, latent) in coded units -> bin probabilities (B, latent)."""
        return self.eb.likelihood(y[:, :, None, None])[:, :, 0, 0]


# -- losses ----------------------------------------------------------------------------------------
def _gauss_window(size: int, sigma: float, device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _ssim_cs(a: torch.Tensor, b: torch.Tensor, win: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = a.shape[1]
    k = _gauss_window(win, 1.5, a.device)
    kh = k.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    kv = k.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def f(t):
        return F.conv2d(F.conv2d(t, kh, groups=c), kv, groups=c)

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = f(a), f(b)
    saa, sbb, sab = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
    cs = (2 * sab + c2) / (saa + sbb + c2)
    lum = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    return (lum * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


def ms_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image MS-SSIM of (B, C, H, W) tensors in [0, 1]; as many of the 5 scales as fit (window 11,
    or the image side for tiny images), weights renormalised (as aecompress.metrics does)."""
    weights = torch.tensor([0.0448, 0.2856, 0.3001, 0.2363, 0.1333], device=a.device)
    side = min(a.shape[2:])
    levels = 1
    while levels < 5 and side // (2**levels) >= 11:
        levels += 1
    w = weights[:levels] / weights[:levels].sum()
    win = min(11, side if side % 2 else side - 1)
    out = torch.ones(a.shape[0], device=a.device)
    for i in range(levels):
        s, cs = _ssim_cs(a, b, win)
        if i < levels - 1:
            out = out * torch.clamp(cs, min=1e-6) ** w[i]
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        else:
            out = out * torch.clamp(s, min=1e-6) ** w[i]
    return out


def distortion(model: DenseAE, logits: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-image distortion. logits: decoder pre-activations (B, inputs); target (B, C, H, W)."""
    t = target.flatten(1)
    if loss == "bce":
        if model.cfg.output != "sigmoid":
            raise ValueError("--loss bce needs sigmoid output units")
        return F.binary_cross_entropy_with_logits(logits, t, reduction="none").mean(1)
    x_hat = model.out_act(logits)
    if loss == "mse":
        return ((x_hat - t) ** 2).mean(1)
    return 1.0 - ms_ssim(x_hat.view_as(target).clamp(0, 1), target)


def sparsity_penalty(code: torch.Tensor, sparse: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """(penalty, mean activation) of a batch of codes."""
    kind = sparse[0]
    if kind == "l1":
        return float(sparse[1]) * code.abs().mean(), code.abs().mean()
    rho = float(sparse[1])
    rho_hat = code.mean(0).clamp(1e-6, 1 - 1e-6)
    kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
    return float(sparse[2]) * kl.sum(), code.mean()


def jacobian_frobenius(model: DenseAE, x: torch.Tensor, probes: int = 1, create_graph: bool = True) -> torch.Tensor:
    """Hutchinson estimate of mean ||d code / d x||_F^2 (exact in expectation; probes=latent with
    one-hot probes gives the exact value)."""
    x = x.flatten(1).detach().requires_grad_(True)
    code = model.encode(x)["code"]
    total = x.new_zeros(())
    for p in range(probes):
        if probes == model.cfg.latent:
            v = torch.zeros_like(code)
            v[:, p] = 1.0
        else:
            v = torch.randn_like(code)
        (g,) = torch.autograd.grad(code, x, v, create_graph=create_graph, retain_graph=True)
        total = total + (g**2).sum(1).mean()
    return total / (1 if probes == model.cfg.latent else probes)


def objective(model: DenseAE, x_in: torch.Tensor, target: torch.Tensor, obj: Objective) -> dict[str, torch.Tensor]:
    """Training loss of one batch. x_in: (possibly corrupted) input; target: the clean image."""
    pixels = target.shape[2] * target.shape[3]
    if obj.contractive > 0:
        x_in = x_in.detach().requires_grad_(True)
    enc = model.encode(x_in)
    code = enc["code"]
    terms: dict[str, torch.Tensor] = {}
    if model.cfg.variational:
        std = torch.exp(0.5 * enc["logvar"])
        z = enc["mu"] + std * torch.randn_like(std)
        logits = model.decode_logits(z)
        d = distortion(model, logits, target, obj.loss)
        if obj.loss == "mse":
            d = d / (2 * VAE_MSE_SIGMA**2)
        kl = -0.5 * (1 + enc["logvar"] - enc["mu"] ** 2 - enc["logvar"].exp()).sum(1)
        terms["kl"] = kl.mean()
        loss = d.mean() + obj.beta * kl.mean() / (pixels * model.cfg.channels)
    elif obj.rate > 0:
        y = code * model.gain
        y_noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        bits = -torch.log2(model.code_likelihood(y_noisy)).sum(1)
        logits = model.decode_logits(ste_round(y) / model.gain)
        d = distortion(model, logits, target, obj.loss)
        terms["bpp"] = (bits / pixels).mean()
        loss = d.mean() + obj.rate * terms["bpp"]
    else:
        logits = model.decode_logits(code)
        d = distortion(model, logits, target, obj.loss)
        loss = d.mean()
    terms["distortion"] = d.mean()
    if obj.sparse:
        pen, act = sparsity_penalty(code, obj.sparse)
        loss = loss + pen
        terms["mean_activation"] = act
    if obj.contractive > 0:
        v = torch.randn_like(code)
        (g,) = torch.autograd.grad(code, x_in, v, create_graph=True)
        jac = (g.flatten(1) ** 2).sum(1).mean()
        terms["jacobian"] = jac
        loss = loss + obj.contractive * jac
    with torch.no_grad():
        x_hat = model.out_act(logits).view_as(target).clamp(0, 1)
        terms["mse"] = ((x_hat - target) ** 2).mean()
    terms["loss"] = loss
    return terms


def entropy_fit_loss(model: DenseAE, code: torch.Tensor) -> torch.Tensor:
    """Bits per code of noisy scaled codes (trains only the entropy model: the code is detached)."""
    y = code.detach() * model.gain
    y = y + torch.empty_like(y).uniform_(-0.5, 0.5)
    return -torch.log2(model.code_likelihood(y)).sum(1).mean()


@torch.no_grad()
def calibrate_gain(model: DenseAE, x: torch.Tensor, quant_step: float, quant_bits: int) -> torch.Tensor:
    """Per-dimension gains for a model trained without a rate term.

    * sigmoid code: a uniform grid of 2^quant_bits levels on [0, 1] (gain 2^bits - 1);
    * VAE: step = the average posterior standard deviation of each dimension (the encoder knows the
      mean no better than that; dimensions the model does not use get step ~1 and cost ~0 bits);
    * otherwise: step = quant_step * the standard deviation of each code unit over the data.
    """
    model.eval()
    enc = model.encode(x)
    if model.cfg.code == "sigmoid":
        gain = torch.full((model.cfg.latent,), float(2**quant_bits - 1))
    elif model.cfg.variational:
        step = torch.exp(0.5 * enc["logvar"]).mean(0)
        gain = 1.0 / step.clamp(min=1e-4)
    else:
        std = enc["code"].std(0)
        gain = 1.0 / (quant_step * std.clamp(min=1e-6))
    model.gain.copy_(gain.to(model.gain.device))
    return model.gain


def describe(cfg: DenseConfig, obj: Objective) -> str:
    parts = [f"dense {cfg.height}x{cfg.width}x{cfg.channels}",
             "-".join(str(d) for d in cfg.dims[1:]) + (" linear" if cfg.linear else f" {cfg.activation}")]
    for flag in ("tied", "batchnorm", "variational"):
        if getattr(cfg, flag):
            parts.append(flag)
    if cfg.code == "sigmoid":
        parts.append("sigmoid code")
    if obj.sparse:
        parts.append("sparse " + ":".join(str(s) for s in obj.sparse))
    if obj.contractive:
        parts.append(f"contractive {obj.contractive}")
    if obj.rate:
        parts.append(f"rate {obj.rate}")
    parts.append(f"loss {obj.loss}")
    return ", ".join(parts)
