"""Training q(z|x) is fitting the model's own posterior p(z|x) = p(x|z) p(z) / p(x).

The decoder and prior define p(z|x) by Bayes' rule; nothing else does. With the decoder held fixed,
log p(x) cannot move, so every nat the ELBO gains is a nat of KL(q(z|x) || p(z|x)) lost. This decoder's
posterior is correlated (W^T W is not diagonal), so a mean-field q stops at a floor that a full-rank q
goes below; at the maximum-likelihood decoder of the same data the posterior is diagonal and the
floor is zero.
"""

import pyro
import torch
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import MultivariateNormal, kl_divergence

from pyro_vae import build_vae, load_config, load_data
from pyro_vae.baselines.ppca import ppca_closed_form

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
base = ["data.name=synthetic", "data.x_dim=5", "data.latent_dim=2", "model.decoder.name=linear",
        "model.likelihood.scale=0.5", "guide.hidden=[]"]  # hidden=[]: q's parameters are affine in x, like the exact posterior
cfg = load_config(None, base)
data = load_data(cfg.data, cfg.seed)
x = data.train[:256].double()


def exact(vae):
    """log p(x) per point and p(z|x) for the linear-Gaussian model, from its parameters."""
    W, b, s2 = vae.decoder.weight.detach(), vae.decoder.bias.detach(), vae.likelihood.scale.detach() ** 2
    log_px = MultivariateNormal(b, W @ W.T + s2 * torch.eye(len(b))).log_prob(x)
    cov = torch.linalg.inv(torch.eye(W.shape[1]) + W.T @ W / s2)
    return log_px, MultivariateNormal((x - b) @ W @ cov / s2, cov)


def mean_field_floor(W, s2):
    """The correlation of p(z|x) and the least KL(q || p(z|x)) of any diagonal-covariance q, nats per point.

    p(z|x) has precision M = I + W^T W / s2 for every x. The best diagonal q has p's mean and the
    variances 1 / M_ii, which leaves KL = (sum_i log M_ii - log det M) / 2: zero exactly when M is
    diagonal, i.e. when the columns of W are orthogonal.
    """
    M = torch.eye(W.shape[1]) + W.T @ W / s2
    cov = torch.linalg.inv(M)
    corr = cov[0, 1] / (cov[0, 0] * cov[1, 1]).sqrt()
    floor = 0.5 * (torch.diagonal(M).log().sum() - torch.logdet(M))
    # rounded, then + 0.0: a rounding error of -1e-17 prints as 0.0000, not -0.0000, on every BLAS
    return tuple(round(float(v), 4) + 0.0 for v in (corr, floor))


def as_mvn(q):
    if isinstance(q, MultivariateNormal):
        return q
    return MultivariateNormal(q.mean, torch.diag_embed(q.variance))


def fit_guide(guide_name, steps=600):
    """Train ONLY the encoder against a fixed decoder; report log p(x), ELBO and KL(q || p(z|x)) per point."""
    cfg = load_config(None, base + [f"guide.name={guide_name}"])
    pyro.set_rng_seed(0)
    vae = build_vae(cfg, data.x_dim)
    log_px, post = exact(vae)
    optim = torch.optim.Adam(vae.encoder.parameters(), lr=2e-2)  # decoder, prior, likelihood: frozen
    elbo = TraceMeanField_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    print(f"guide {guide_name}:")
    print("   step   log p(x)      ELBO   KL(q||p(z|x))   ELBO + KL")
    for step in range(steps + 1):
        if step in (0, 100, steps):
            with torch.no_grad():
                kl = kl_divergence(as_mvn(vae.encoder(x)), post).mean()
                # Pyro's own ELBO estimate (500 draws per point), independent of the closed-form KL above
                pyro.set_rng_seed(1)
                mc = -TraceMeanField_ELBO(num_particles=500, vectorize_particles=True,
                                          max_plate_nesting=1).loss(vae.model, vae.guide, x) / len(x)
            print(f"  {step:5d}  {log_px.mean():9.3f} {mc:9.3f}  {kl:14.4f}  {mc + kl:10.3f}")
        optim.zero_grad()
        (elbo.differentiable_loss(vae.model, vae.guide, x) / len(x)).backward()
        optim.step()


fit_guide("mean_field")
fit_guide("full_rank")

pyro.set_rng_seed(0)
vae = build_vae(load_config(None, base + ["guide.name=mean_field"]), data.x_dim)  # the decoder fit_guide froze
corr, floor = mean_field_floor(vae.decoder.weight.detach(), vae.likelihood.scale.detach() ** 2)
print(f"this decoder:             corr(z1, z2 | x) {corr:+.4f}   least KL of a mean-field q {floor:.4f}")
ml = ppca_closed_form(x, latent_dim=2).params
corr, floor = mean_field_floor(ml["W"], ml["noise_var"])
print(f"maximum-likelihood pPCA:  corr(z1, z2 | x) {corr:+.4f}   least KL of a mean-field q {floor:.4f}")
