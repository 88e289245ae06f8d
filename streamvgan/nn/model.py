"""The recurrent VAE-GAN: one readable file for the whole model.

The design follows the variational recurrent models used for streaming anomaly detection
(VRNN, Chung et al. 2015; OmniAnomaly, Su et al. 2019) with a window critic trained
adversarially as in TadGAN (Geiger et al. 2020):

* a GRU carries the state ``h_t`` over the normalised inputs ``x_1..x_t``;
* a learned prior ``p(z_t | h_{t-1})`` and a posterior ``q(z_t | h_{t-1}, x_t)``;
* a Gaussian decoder ``p(x_t | z_t, h_{t-1})`` (mean and scale);
* a forecast head giving a Gaussian for each of the next ``horizon`` steps from ``h_t``, its
  mean relative to the last value ``x_t`` (``forecast_relative``), so that persistence is
  the head's zero output and it learns only how the series moves on from there;
* a window critic with spectral normalisation and the hinge loss that tells real windows from
  windows the model generates by running prior, decoder and GRU forward.

Because the GRU reads only ``x`` (not ``z``), teacher-forced training runs the fused
``nn.GRU`` over a whole window in one call; closed-loop generation steps it one point at a time.

``variational=False`` makes it a deterministic recurrent autoencoder (posterior mean, no KL;
the prior network regresses the posterior mean so that generation still has a latent to
decode), ``adversarial=False`` drops the critic. Both exist for ablations.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from streamvgan.errors import ConfigurationError

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and loss settings; stored beside the weights in every checkpoint.

    Examples
    --------
    >>> ModelConfig(hidden_size=16).to_dict()["hidden_size"]
    16
    >>> ModelConfig(hidden_size=0)
    Traceback (most recent call last):
    ...
    streamvgan.errors.ConfigurationError: ModelConfig.hidden_size must be a positive int, got 0
    """

    n_features: int = 1  # values per time step the network reads
    hidden_size: int = 32  # GRU state size
    latent_size: int = 4  # z_t size
    horizon: int = 12  # steps the forecast head predicts
    critic_window: int = 16  # length of the windows the critic judges
    critic_channels: int = 16  # width of the critic's convolutions
    variational: bool = True  # False: deterministic recurrent autoencoder
    adversarial: bool = True  # False: no critic (plain recurrent VAE)
    min_scale: float = 0.02  # floor of every predicted scale, in normalised units
    free_bits: float = 0.05  # nats per latent dimension the KL is not pushed below
    adversarial_weight: float = 0.1  # weight of the generator's hinge term next to the ELBO
    forecast_weight: float = 1.0  # weight of the multi-step forecast NLL
    forecast_relative: bool = False  # the forecast head predicts the change from the last
    # value (persistence is its zero output, so it need not relearn level and scale); the
    # pretrained weights use it

    def __post_init__(self) -> None:
        for name in ("n_features", "hidden_size", "latent_size", "horizon", "critic_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(
                    f"ModelConfig.{name} must be a positive int, got {value!r}"
                )
        if not self.min_scale > 0:
            raise ConfigurationError(f"ModelConfig.min_scale must be > 0, got {self.min_scale!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown ModelConfig fields {unknown}; known: {sorted(known)}"
            )
        return cls(**data)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Elementwise negative log-likelihood of ``x`` under N(mean, scale^2)."""
    return 0.5 * (((x - mean) / scale) ** 2 + LOG_2PI) + torch.log(scale)


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """Elementwise KL(N(mu_q, var_q) || N(mu_p, var_p))."""
    return 0.5 * (
        logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1.0
    )


def _mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.Tanh(), nn.Linear(n_hidden, n_out))


def _mlp_params(mlp: nn.Sequential) -> tuple[torch.Tensor, ...]:
    """The (weight, bias, weight, bias) of an :func:`_mlp`, for :func:`_apply_mlp`."""
    first, last = cast(nn.Linear, mlp[0]), cast(nn.Linear, mlp[2])
    return first.weight, first.bias, last.weight, last.bias


def _apply_mlp(params: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` for an :func:`_mlp` given its :func:`_mlp_params`, as plain functions (the
    same kernels, no module calls)."""
    w1, b1, w2, b2 = params
    return F.linear(torch.tanh(F.linear(x, w1, b1)), w2, b2)


_Layer = TypeVar("_Layer", bound=nn.Module)


def _spectral(layer: _Layer, spectral: bool) -> _Layer:
    """``layer``, with spectral normalisation of its weight registered in place when
    ``spectral`` (torch returns the same module)."""
    if spectral:
        nn.utils.parametrizations.spectral_norm(layer)
    return layer


class WindowCritic(nn.Module):
    """Scores a window (B, W, F): high for windows that look real. Spectral norm keeps it
    1-Lipschitz-ish so the hinge game stays stable."""

    def __init__(self, config: ModelConfig, spectral: bool = True) -> None:
        super().__init__()
        self.config = config
        c = config.critic_channels
        # each layer is normalised as soon as it is built: the power iteration's random start
        # vectors are drawn between the layers' initial weights, as they always were
        self.conv1 = _spectral(nn.Conv1d(config.n_features, c, kernel_size=3, padding=1), spectral)
        self.conv2 = _spectral(nn.Conv1d(c, c, kernel_size=3, padding=1, stride=2), spectral)
        self.out = _spectral(nn.Linear(2 * c, 1), spectral)

    @torch.no_grad()
    def frozen(self) -> WindowCritic:
        """A plain copy for scoring, spectral normalisation folded into its weights (the
        parametrisation costs more than the convolutions themselves at small batch sizes)."""
        plain = WindowCritic(self.config, spectral=False).to(self.out.bias.device)
        for name in ("conv1", "conv2", "out"):
            src, dst = getattr(self, name), getattr(plain, name)
            dst.weight.copy_(src.weight)  # the normalised weight W / sigma(W)
            dst.bias.copy_(src.bias)
        return plain.eval()

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        y = window.transpose(1, 2)  # (B, F, W)
        y = F.leaky_relu(self.conv1(y), 0.2)
        y = F.leaky_relu(self.conv2(y), 0.2)  # (B, C, W/2)
        pooled = torch.cat([y.mean(dim=2), y.amax(dim=2)], dim=1)  # (B, 2C)
        return self.out(pooled).squeeze(-1)  # (B,)


@dataclass
class StepOutput:
    """What one online step returns for a batch of B streams (normalised units)."""

    h: torch.Tensor  # (B, Hd) new state h_t
    recon_error: torch.Tensor  # (B,) sum of |x_t - mean| / scale of p(x_t | z_t, h_{t-1}) at
    # the posterior mean of z_t: the reconstruction error in units of the decoder's own scale
    forecast_mean: torch.Tensor  # (B, H, F) for x_{t+1..t+H}
    forecast_scale: torch.Tensor  # (B, H, F)


@dataclass
class Losses:
    """What :meth:`RecurrentVAEGAN.losses` returns for one minibatch."""

    total: torch.Tensor  # the weighted sum to minimise
    terms: dict[str, torch.Tensor]  # reconstruction, kl, forecast, and generator if adversarial
    fake: torch.Tensor | None  # (B, critic_window, F) generated windows, detached, for the
    # critic's step; None without a critic or when the windows are too short


class RecurrentVAEGAN(nn.Module):
    """The network; see the module docstring. Build it inside ``torch.random.fork_rng`` with a
    seed (as :class:`streamvgan.engine.StreamEngine` does) for reproducible weights.

    Examples
    --------
    >>> import torch
    >>> model = RecurrentVAEGAN(ModelConfig(horizon=6))
    >>> x, h = torch.zeros(4, 1), torch.zeros(4, 32)  # 4 streams, 1 feature, hidden state 32
    >>> out = model.step(x, h)
    >>> tuple(out.h.shape), tuple(out.forecast_mean.shape)
    ((4, 32), (4, 6, 1))
    >>> losses = model.losses(torch.randn(2, 40, 1), torch.ones(2, 40), burn_in=8)
    >>> sorted(losses.terms), tuple(losses.fake.shape)  # fake: windows for the critic's step
    (['forecast', 'generator', 'kl', 'reconstruction'], (2, 16, 1))
    >>> tuple(model.generate(h, steps=5).shape)
    (4, 5, 1)
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        n_f, n_h, n_z = config.n_features, config.hidden_size, config.latent_size
        self.rnn = nn.GRU(n_f, n_h, batch_first=True)
        self.prior = _mlp(n_h, n_h, 2 * n_z)
        self.posterior = _mlp(n_h + n_f, n_h, 2 * n_z)
        self.decoder = _mlp(n_z + n_h, n_h, 2 * n_f)
        self.forecaster = _mlp(n_h, 2 * n_h, 2 * config.horizon * n_f)
        self.critic = WindowCritic(config) if config.adversarial else None
        self._step_params = self._collect_step_params()

    def _collect_step_params(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """The tensors :meth:`step` uses, by part: looked up once, not through the modules'
        attribute machinery at every step (at one stream that cost a tenth of a step). A
        plain dict of tensors, so not registered again as parameters; rebuilt wherever torch
        may replace a parameter object (:meth:`_apply`, :meth:`load_state_dict`)."""
        # all_weights[0] is (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0)
        return {
            "prior": _mlp_params(self.prior),
            "posterior": _mlp_params(self.posterior),
            "decoder": _mlp_params(self.decoder),
            "forecaster": _mlp_params(self.forecaster),
            "gru": tuple(self.rnn.all_weights[0]),
        }

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), .double(), ...
        result = super()._apply(fn, recurse)
        self._step_params = self._collect_step_params()
        return result

    def load_state_dict(self, state_dict, strict=True, assign=False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._step_params = self._collect_step_params()  # assign=True makes new parameters
        return result

    # -- pieces -------------------------------------------------------------------------------
    def _scale(self, raw: torch.Tensor) -> torch.Tensor:
        return F.softplus(raw) + self.config.min_scale

    def latent_prior(self, h_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.prior(h_prev).chunk(2, dim=-1)
        return mu, logvar.clamp(-8.0, 8.0)

    def latent_posterior(self, h_prev, x) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.posterior(torch.cat([h_prev, x], dim=-1)).chunk(2, dim=-1)
        return mu, logvar.clamp(-8.0, 8.0)

    def decode(self, z, h_prev) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw_scale = self.decoder(torch.cat([z, h_prev], dim=-1)).chunk(2, dim=-1)
        return mean, self._scale(raw_scale)

    def forecast(self, h: torch.Tensor, x_last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian forecast of the next ``horizon`` steps from state h (..., Hd) and the
        last value x_last (..., F) it has read."""
        out = self.forecaster(h)  # (..., 2*H*F)
        out = out.unflatten(-1, (self.config.horizon, 2 * self.config.n_features))
        mean, raw_scale = out.chunk(2, dim=-1)  # (..., H, F) each
        if self.config.forecast_relative:
            mean = mean + x_last.unsqueeze(-2)
        return mean, self._scale(raw_scale)

    def advance(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """h_t from x_t (B, F) and h_{t-1} (B, Hd)."""
        # the fused cell with the GRU's own weights: same maths as self.rnn, less overhead
        # all_weights[0] is (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0), typed as
        # tensors (attribute access on a Module is typed Tensor | Module)
        w_ih, w_hh, b_ih, b_hh = self.rnn.all_weights[0]
        return torch.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)

    # -- online ------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, x: torch.Tensor, h_prev: torch.Tensor) -> StepOutput:
        """One online step for B streams: reconstruct x_t (B, F), advance the state, forecast.

        The same operations as :meth:`latent_posterior`, :meth:`decode`, :meth:`advance` and
        :meth:`forecast` (bit for bit: ``tests/nn/test_model.py``), with the layers applied
        as functions: at one stream a step is ~15 tiny kernels, and the modules' call
        machinery cost a third as much again."""
        cfg, p = self.config, self._step_params
        z_mu = _apply_mlp(p["posterior"], torch.cat([h_prev, x], dim=-1)).chunk(2, dim=-1)[0]
        rec_mean, raw_scale = _apply_mlp(p["decoder"], torch.cat([z_mu, h_prev], dim=-1)).chunk(
            2, dim=-1
        )
        recon_error = ((x - rec_mean).abs() / (F.softplus(raw_scale) + cfg.min_scale)).sum(-1)
        h = torch.gru_cell(x, h_prev, *p["gru"])
        out = _apply_mlp(p["forecaster"], h).unflatten(-1, (cfg.horizon, 2 * cfg.n_features))
        f_mean, raw_f = out.chunk(2, dim=-1)
        if cfg.forecast_relative:
            f_mean = f_mean + x.unsqueeze(-2)
        return StepOutput(h, recon_error, f_mean, F.softplus(raw_f) + cfg.min_scale)

    def generate(
        self, h: torch.Tensor, steps: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Run prior -> decoder -> GRU forward ``steps`` times from state h (B, Hd).

        Returns sampled x (B, steps, F). Differentiable (reparameterised), so the critic's
        gradient reaches the generator during training. The layers are applied as functions,
        as :meth:`step` does (the same numbers and gradients as :meth:`latent_prior`,
        :meth:`decode` and :meth:`advance`, bit for bit: ``tests/nn/test_step.py``): serving
        runs it 12 times per poll in which a continuation is due, and the modules' call
        machinery was a third of its time there.
        """
        cfg, p = self.config, self._step_params
        out = []
        for _ in range(steps):
            p_mu, p_logvar = _apply_mlp(p["prior"], h).chunk(2, dim=-1)
            if cfg.variational:
                eps = torch.randn(p_mu.shape, generator=generator, device=h.device)
                z = p_mu + torch.exp(0.5 * p_logvar.clamp(-8.0, 8.0)) * eps
            else:
                z = p_mu
            mean, raw_scale = _apply_mlp(p["decoder"], torch.cat([z, h], dim=-1)).chunk(2, dim=-1)
            eps_x = torch.randn(mean.shape, generator=generator, device=h.device)
            x = mean + (F.softplus(raw_scale) + cfg.min_scale) * eps_x
            out.append(x)
            h = torch.gru_cell(x, h, *p["gru"])
        return torch.stack(out, dim=1)

    @torch.inference_mode()
    def sample_continuations(
        self, h: torch.Tensor, steps: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """:meth:`generate` for serving: the same draws and numbers, no graph."""
        return self.generate(h, steps, generator)

    # -- training ----------------------------------------------------------------------------
    def losses(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        burn_in: int,
        generator: torch.Generator | None = None,
    ) -> Losses:
        """Generator-side losses on windows x (B, T, F) with per-step weights (B, T).

        The first ``burn_in`` steps only warm the state. Returns the terms, their weighted
        ``total`` (ELBO + forecast NLL + adversarial hinge term) and the windows generated
        for the adversarial term (for the critic's own step, :meth:`critic_loss`).
        """
        cfg = self.config
        b, t, _ = x.shape
        hs, _ = self.rnn(x)  # (B, T, Hd): h_1..h_T
        h_prev = torch.cat([hs.new_zeros(b, 1, cfg.hidden_size), hs[:, :-1]], dim=1)
        w = weight[:, burn_in:]
        w_sum = w.sum().clamp_min(1.0)
        hp, xt = h_prev[:, burn_in:], x[:, burn_in:]

        q_mu, q_logvar = self.latent_posterior(hp, xt)
        p_mu, p_logvar = self.latent_prior(hp)
        if cfg.variational:
            eps = torch.randn(q_mu.shape, generator=generator, device=x.device)
            z = q_mu + torch.exp(0.5 * q_logvar) * eps
            kl = gaussian_kl(q_mu, q_logvar, p_mu, p_logvar)  # (B, T', Z)
            # free bits: no pressure below `free_bits` nats per dimension (batch average)
            kl_dim = (kl * w.unsqueeze(-1)).sum((0, 1)) / w_sum
            kl_loss = torch.clamp(kl_dim, min=cfg.free_bits).sum()
            kl_report = kl_dim.sum()
        else:
            z = q_mu
            prior_fit = ((p_mu - q_mu.detach()) ** 2).sum(-1)
            kl_loss = (prior_fit * w).sum() / w_sum
            kl_report = kl_loss
        rec_mean, rec_scale = self.decode(z, hp)
        recon = (gaussian_nll(xt, rec_mean, rec_scale).sum(-1) * w).sum() / w_sum

        # multi-step forecast from every h_t whose targets lie inside the window
        horizon = cfg.horizon
        n_origins = t - burn_in - horizon
        if n_origins > 0:
            origins = slice(burn_in - 1, burn_in - 1 + n_origins)
            f_mean, f_scale = self.forecast(hs[:, origins], x[:, origins])
            targets = x[:, burn_in:].unfold(1, horizon, 1)[:, :n_origins]  # (B, n, F, H)
            targets = targets.permute(0, 1, 3, 2)  # (B, n, H, F)
            tw = weight[:, burn_in:].unfold(1, horizon, 1)[:, :n_origins]  # (B, n, H)
            nll = gaussian_nll(targets, f_mean, f_scale).sum(-1)  # (B, n, H)
            forecast = (nll * tw).sum() / tw.sum().clamp_min(1.0)
        else:
            forecast = x.new_zeros(())

        total = recon + kl_loss + cfg.forecast_weight * forecast
        terms = {"reconstruction": recon, "kl": kl_report, "forecast": forecast}
        fake = None
        if self.critic is not None and t - burn_in >= cfg.critic_window:
            fake = self.generate(hs[:, burn_in - 1], cfg.critic_window, generator)
            adv = -self.critic(fake).mean()
            total = total + cfg.adversarial_weight * adv
            terms["generator"] = adv
            fake = fake.detach()
        return Losses(total, terms, fake)

    def critic_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """Hinge loss of the critic on real and generated windows (B, W, F)."""
        assert self.critic is not None
        return F.relu(1.0 - self.critic(real)).mean() + F.relu(1.0 + self.critic(fake)).mean()
