"""EM and the VAE both climb the ELBO; EM can make q(z|x) the exact posterior, the VAE learns an approximation.

On probabilistic PCA data (x = W z + b + noise) the maximum-likelihood solution is known in closed
form. EM (exact E-step, closed-form M-step) reaches it; SVI on a VAE with a linear decoder, trained by
gradient ascent on the ELBO in both decoder and encoder at once, gets close, and its remaining
ELBO gap is exactly KL(q(z|x) || p(z|x)).
"""

import contextlib
import io

import torch
from torch.distributions import MultivariateNormal

from pyro_vae.baselines.ppca import ppca_closed_form, ppca_em
from pyro_vae.config import load
from pyro_vae.train import Trainer, elbo_per_point, prepare

torch.set_num_threads(1)
cfg = load(None, ["data.name=synthetic", "model.decoder.name=linear", "model.likelihood.learn_scale=global",
                  "model.likelihood.scale=1.0", "guide.hidden=[]", "train.epochs=40", "optim.lr=1e-2"])
data, vae = prepare(cfg)
x = data.train.double()  # (1600, 10)

best = ppca_closed_form(x, latent_dim=2).log_likelihood
em = ppca_em(x, latent_dim=2, tol=1e-6, max_iter=1000)
print(f"closed-form maximum likelihood (pPCA)     {best:.4f} nats per point")
trace = em.history.log_likelihood
print("EM log-likelihood at iterations 1, 2, 5, 10: " + "  ".join(f"{trace[i]:.4f}" for i in (1, 2, 5, 10)))
print(f"EM converged after {em.iterations} iterations at {em.log_likelihood:.4f}")
print(f"EM never decreases it: {all(b >= a - 1e-9 for a, b in zip(trace, trace[1:]))}")

trainer = Trainer(cfg, data, vae, run=None, progress=False)
with contextlib.redirect_stdout(io.StringIO()):  # per-epoch lines carry timings
    trainer.fit()
with torch.no_grad():  # the trained decoder's exact marginal p(x) = N(b, W W^T + sigma^2 I)
    W, b = vae.decoder.weight.double(), vae.decoder.bias.double()
    s2 = vae.likelihood.scale.double() ** 2
    log_px = MultivariateNormal(b, W @ W.T + s2 * torch.eye(len(b))).log_prob(x).mean()
torch.manual_seed(0)
elbo = elbo_per_point(vae, trainer.elbo, data.train)
print(f"VAE by SVI, 40 epochs: exact log p(x) {log_px:.4f}   ELBO {elbo:.4f}   gap = KL(q || p(z|x)) {log_px - elbo:.4f}")
