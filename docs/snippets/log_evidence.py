"""log p(x) is a constant under q(z|x), so log p(x) = E_q[log p(x)] = ELBO + KL(q(z|x) || p(z|x)).

On a linear-Gaussian VAE (linear decoder, Normal prior and likelihood: probabilistic PCA) p(x) and
p(z|x) have closed forms, so every term can be computed exactly and checked against Monte Carlo.
"""

import math

import pyro
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from pyro_vae import build_vae, load_config, load_data

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)  # the identities hold to rounding error; float64 makes that ~1e-12
cfg = load_config(None, ["data.name=synthetic", "data.x_dim=5", "data.latent_dim=2",
                         "model.decoder.name=linear", "model.likelihood.scale=0.5", "guide.hidden=[16]"])
data = load_data(cfg.data, cfg.seed)
pyro.set_rng_seed(0)
vae = build_vae(cfg, data.x_dim)  # untrained: the identity holds for ANY decoder and ANY q
x = data.train[:1].double()  # one data point, (1, 5)

# Exact answers from the model's own parameters: p(x) = N(b, W W^T + s^2 I), p(z|x) by Bayes' rule.
W, b, s2 = vae.decoder.weight.detach(), vae.decoder.bias.detach(), vae.likelihood.scale.detach() ** 2
log_px = MultivariateNormal(b, W @ W.T + s2 * torch.eye(5)).log_prob(x)
post_cov = torch.linalg.inv(torch.eye(2) + W.T @ W / s2)
post = MultivariateNormal((x - b) @ W @ post_cov / s2, post_cov)

with torch.no_grad():
    q = vae.encoder(x)  # q(z|x): Normal(mu(x), v(x)^2), event shape (2,)
    z = q.sample((100_000,))  # (K, 1, 2)
    log_joint = vae.prior().log_prob(z) + vae.likelihood(vae.decoder(z)).log_prob(x)  # log p(x, z), (K, 1)
    log_q = q.log_prob(z)
const = log_joint - post.log_prob(z)  # log p(x, z) - log p(z|x) = log p(x), whatever z is
log_w = log_joint - log_q  # the ELBO's integrand
q_full = MultivariateNormal(q.mean, torch.diag_embed(q.variance))
kl = kl_divergence(q_full, post)
elbo, se = log_w.mean(), log_w.std() / math.sqrt(len(log_w))

print(f"exact log p(x)                              {log_px.item():.4f}")
print(f"log p(x,z) - log p(z|x) over 100000 z ~ q:  min {const.min():.4f}   max {const.max():.4f}")
print(f"ELBO = E_q[log p(x,z) - log q(z|x)]         {elbo:.4f} +- {se:.4f} (Monte Carlo, 1 s.e.)")
print(f"KL(q(z|x) || p(z|x)), closed form           {kl.item():.4f}")
print(f"ELBO + KL                                   {elbo + kl.item():.4f}")
kl_mc = (log_q - post.log_prob(z)).mean()
print(f"KL(q(z|x) || p(z|x)), Monte Carlo           {kl_mc:.4f}")
print(f"ELBO + KL, both Monte Carlo on the same z   {elbo + kl_mc:.4f}")
