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


@pytest.mark.parametrize("batch", [1, 9])
@pytest.mark.parametrize("n_features", [1, 3])
@pytest.mark.parametrize("variational", [True, False])
def test_sampled_continuations_equal_generate_bit_for_bit(
    batch: int, n_features: int, variational: bool
) -> None:
    """Serving samples continuations with ``sample_continuations``; training's ``generate``
    (the modules, differentiable) must draw the same numbers from the same generator."""
    torch.manual_seed(batch + n_features)
    model = RecurrentVAEGAN(ModelConfig(n_features=n_features, variational=variational))
    with torch.no_grad():  # log-variances beyond the clamp at +-8 on both sides
        model.prior[2].bias[model.config.latent_size :] = torch.tensor([-12.0, 12.0]).repeat(
            model.config.latent_size // 2 + 1
        )[: model.config.latent_size]
    h = torch.randn(batch, model.config.hidden_size)
    draws = [torch.Generator().manual_seed(7) for _ in range(2)]
    with torch.no_grad():
        expected = model.generate(h, 6, draws[0])
    got = model.sample_continuations(h, 6, draws[1])
    assert got.shape == (batch, 6, n_features)
    assert torch.equal(got, expected)
    assert torch.equal(draws[0].get_state(), draws[1].get_state())  # as many draws
    assert not got.requires_grad
