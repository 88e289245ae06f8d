"""The online step applies the network's layers as functions; it must equal the modules."""

from __future__ import annotations

import pytest
import torch

from streamvgan.nn.model import ModelConfig, RecurrentVAEGAN


def _by_modules(model: RecurrentVAEGAN, x: torch.Tensor, h_prev: torch.Tensor) -> tuple:
    """The step written with the modules' own pieces (what ``step`` was before)."""
    with torch.no_grad():
        z_mu, _ = model.latent_posterior(h_prev, x)
        rec_mean, rec_scale = model.decode(z_mu, h_prev)
        recon = ((x - rec_mean).abs() / rec_scale).sum(-1)
        h = model.advance(x, h_prev)
        f_mean, f_scale = model.forecast(h, x)
    return h, recon, f_mean, f_scale


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("n_features", [1, 3])
@pytest.mark.parametrize("relative", [True, False])
def test_step_equals_the_modules_bit_for_bit(batch: int, n_features: int, relative: bool) -> None:
    torch.manual_seed(batch * 10 + n_features)
    model = RecurrentVAEGAN(
        ModelConfig(n_features=n_features, horizon=5, forecast_relative=relative)
    )
    x = torch.randn(batch, n_features)
    h_prev = torch.randn(batch, model.config.hidden_size)
    out = model.step(x, h_prev)
    expected = _by_modules(model, x, h_prev)
    got = (out.h, out.recon_error, out.forecast_mean, out.forecast_scale)
    for name, a, b in zip(("h", "recon_error", "forecast_mean", "forecast_scale"), got, expected):
        assert a.shape == b.shape, name
        assert torch.equal(a, b), f"{name} differs from the modules' result"
    assert not out.h.requires_grad  # scoring builds no graph


def _outputs(model: RecurrentVAEGAN, x: torch.Tensor, h_prev: torch.Tensor) -> tuple:
    out = model.step(x, h_prev)
    return out.h, out.recon_error, out.forecast_mean, out.forecast_scale


@pytest.mark.parametrize("how", ["load_state_dict", "assign", "double", "in_place"])
def test_step_follows_new_weights(how: str) -> None:
    """``step`` keeps its tensors in a lookup of its own: every way torch changes or replaces
    the weights must reach it (a stale lookup would score with the old weights)."""
    torch.manual_seed(0)
    model = RecurrentVAEGAN(ModelConfig(horizon=4))
    other = RecurrentVAEGAN(ModelConfig(horizon=4))
    x, h_prev = torch.randn(3, 1), torch.randn(3, model.config.hidden_size)
    before = _outputs(model, x, h_prev)
    if how == "load_state_dict":
        model.load_state_dict(other.state_dict())
    elif how == "assign":  # new parameter objects
        model.load_state_dict(other.state_dict(), assign=True)
    elif how == "in_place":
        with torch.no_grad():
            for mine, theirs in zip(model.parameters(), other.parameters()):
                mine.copy_(theirs)
    else:
        model, other = model.double(), model  # the same weights, as float64
        x, h_prev = x.double(), h_prev.double()
    got, expected = _outputs(model, x, h_prev), _by_modules(other, x, h_prev)
    for a, b in zip(got, expected):
        assert a.dtype == b.dtype and torch.equal(a, b)
    if how != "double":
        assert not torch.equal(got[0], before[0])  # the weights did change the output


def _generate_by_modules(
    model: RecurrentVAEGAN, h: torch.Tensor, steps: int, generator: torch.Generator
) -> torch.Tensor:
    """The closed loop written with the modules' own pieces (what ``generate`` was before)."""
    out = []
    for _ in range(steps):
        p_mu, p_logvar = model.latent_prior(h)
        if model.config.variational:
            eps = torch.randn(p_mu.shape, generator=generator, device=h.device)
            z = p_mu + torch.exp(0.5 * p_logvar) * eps
        else:
            z = p_mu
        mean, scale = model.decode(z, h)
        x = mean + scale * torch.randn(mean.shape, generator=generator, device=h.device)
        out.append(x)
        h = model.advance(x, h)
    return torch.stack(out, dim=1)


def _loop_model(batch: int, n_features: int, variational: bool) -> RecurrentVAEGAN:
    torch.manual_seed(batch + n_features)
    model = RecurrentVAEGAN(ModelConfig(n_features=n_features, variational=variational))
    with torch.no_grad():  # log-variances beyond the clamp at +-8 on both sides
        model.prior[2].bias[model.config.latent_size :] = torch.tensor([-12.0, 12.0]).repeat(
            model.config.latent_size // 2 + 1
        )[: model.config.latent_size]
    return model


@pytest.mark.parametrize("batch", [1, 9])
@pytest.mark.parametrize("n_features", [1, 3])
@pytest.mark.parametrize("variational", [True, False])
def test_generate_equals_the_modules_bit_for_bit(
    batch: int, n_features: int, variational: bool
) -> None:
    """``generate`` (training's adversarial term) and ``sample_continuations`` (serving) apply
    the layers as functions: the same numbers, draws and gradients as the modules."""
    model = _loop_model(batch, n_features, variational)
    h = torch.randn(batch, model.config.hidden_size)
    draws = [torch.Generator().manual_seed(7) for _ in range(3)]
    expected = _generate_by_modules(model, h, 6, draws[0])
    got = model.generate(h, 6, draws[1])
    served = model.sample_continuations(h, 6, draws[2])
    assert got.shape == (batch, 6, n_features)
    assert torch.equal(got, expected) and torch.equal(served, expected)
    assert torch.equal(draws[0].get_state(), draws[1].get_state())  # as many draws
    assert torch.equal(draws[0].get_state(), draws[2].get_state())
    assert not served.requires_grad
    params = [p for n, p in model.named_parameters() if not n.startswith("critic.")]
    grads_expected = torch.autograd.grad(expected.square().sum(), params, allow_unused=True)
    grads = torch.autograd.grad(got.square().sum(), params, allow_unused=True)
    for a, b in zip(grads, grads_expected):
        assert (a is None and b is None) or torch.equal(a, b)
