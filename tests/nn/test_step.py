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
