"""Gradient noise statistics against a loss whose gradient distribution is known in closed form."""

import math

import torch

from pyro_vae import build_vae, validate_config
from pyro_vae.evaluation.gradients import gradient_statistics, gradient_variance

REPEATS = 400
CFG = {"data": {"name": "synthetic", "x_dim": 6, "latent_dim": 2, "n": 40}, "model": {"latent_dim": 2},
       "guide": {"hidden": [8]}}


class KnownGradient:
    """A stand-in for a Pyro loss: per data point, the gradient of coordinate i is ``m_i + s_i * eps_i``,
    eps ~ N(0, 1) independent, with SNR |m_i| / s_i = ``encoder_snr`` on the encoder and 0 on the rest."""

    def __init__(self, vae, encoder_snr: float, gen: torch.Generator):
        self.terms = []  # (group, parameter, m, s)
        for name, p in vae.named_parameters():
            group = "encoder" if name.startswith("encoder.") else "decoder"
            s = torch.rand(p.shape, generator=gen) + 0.5
            self.terms.append((group, p, (encoder_snr if group == "encoder" else 0.0) * s, s))
        self.gen = gen

    def differentiable_loss(self, model, guide, x):
        g = sum((p * (m + s * torch.randn(p.shape, generator=self.gen))).sum() for _, p, m, s in self.terms)
        return g * x.shape[0]  # gradient_statistics divides by the batch size


def test_variance_and_snr_match_their_closed_forms_within_monte_carlo_error():
    cfg = validate_config(CFG)
    vae = build_vae(cfg, 6)
    loss = KnownGradient(vae, encoder_snr=2.0, gen=torch.Generator().manual_seed(0))
    stats = gradient_statistics(vae, loss, torch.zeros(4, 6), REPEATS)
    for group, snr in (("encoder", 2.0), ("decoder", 0.0)):
        s = torch.cat([t[3].flatten() for t in loss.terms if t[0] == group]).double()
        # trace of the covariance: each s_i^2 estimate has sd s_i^2 sqrt(2 / (R - 1))
        variance, var_se = float(s.pow(2).sum()), float(s.pow(4).sum().sqrt() * math.sqrt(2 / (REPEATS - 1)))
        assert abs(stats[group]["variance"] - variance) < 4 * var_se, (group, stats[group], variance, var_se)
        # |g_bar| / s_hat per coordinate: mean snr (or the no-signal floor sqrt(2 / (pi R))), averaged over P
        # coordinates; 1% more for the small-sample bias of 1 / s_hat (about 3 / (4 R) = 0.2% at R = 400)
        if snr > 0:
            expected, sd_one = snr, math.sqrt((1 + snr ** 2 / 2) / REPEATS)
        else:
            expected, sd_one = math.sqrt(2 / (math.pi * REPEATS)), math.sqrt((1 - 2 / math.pi) / REPEATS)
        assert abs(stats[group]["snr"] - expected) < 4 * sd_one / math.sqrt(s.numel()) + 0.01 * expected, \
            (group, stats[group]["snr"], expected)
        if snr > 0:  # every coordinate's SNR is 2: so is the median (its sd about 1.25 sd_one / sqrt(P))
            assert abs(stats[group]["snr_median"] - snr) < 4 * 1.25 * sd_one / math.sqrt(s.numel()) + 0.01 * snr
    assert stats["encoder"]["snr_floor"] == math.sqrt(2 / (math.pi * REPEATS))
    assert gradient_variance(vae, loss, torch.zeros(4, 6), 50).keys() == {"encoder", "decoder"}
