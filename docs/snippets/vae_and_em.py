"""EM and the VAE both climb the ELBO; EM can make q(z|x) the exact posterior, the VAE learns an approximation.

On probabilistic PCA data (x = W z + b + noise) the maximum-likelihood solution is known in closed
form. EM (exact E-step, closed-form M-step) reaches it; SVI on a VAE with a linear decoder, trained by
gradient ascent on the ELBO in both decoder and encoder at once, gets close, and its remaining
ELBO gap is exactly KL(q(z|x) || p(z|x)). For pPCA a mean-field q can be the exact posterior (at a
decoder whose W has orthogonal columns), so that gap is what the optimizer has not finished: it
stays while Adam keeps a large step size and goes when the step size is cut.
"""

import contextlib
import io

import torch
from torch.distributions import MultivariateNormal

from pyro_vae.baselines.ppca import ppca_closed_form, ppca_em
from pyro_vae.config import load
from pyro_vae.training.trainer import Trainer
from pyro_vae.build import prepare

torch.set_num_threads(1)
BASE = ["data.name=synthetic", "model.decoder.name=linear", "model.likelihood.learn_scale=global",
        "model.likelihood.scale=1.0", "guide.hidden=[]", "optim.lr=1e-2",
        "train.restore_best=false"]  # report the parameters training ended with, not the best epoch's
data, _ = prepare(load(None, BASE))
x = data.train.double()  # (1600, 10)

best = ppca_closed_form(x, latent_dim=2).log_likelihood
em = ppca_em(x, latent_dim=2, tol=1e-6, max_iter=1000)
print(f"closed-form maximum likelihood (pPCA)     {best:.4f} nats per point")
trace = em.history.log_likelihood
print("EM log-likelihood at iterations 1, 2, 5, 10: " + "  ".join(f"{trace[i]:.4f}" for i in (1, 2, 5, 10)))
print(f"EM converged after {em.iterations} iterations at {em.log_likelihood:.4f}")
print(f"EM never decreases it: {all(b >= a - 1e-9 for a, b in zip(trace, trace[1:]))}")


@torch.no_grad()
def exact(vae):
    """Exact log p(x), KL(q(z|x) || p(z|x)) and the least KL of any diagonal q, per training point (float64)."""
    W, b = vae.decoder.weight.double(), vae.decoder.bias.double()  # (10, 2), (10,)
    s2 = vae.likelihood.scale.double() ** 2
    log_px = MultivariateNormal(b, W @ W.T + s2 * torch.eye(len(b))).log_prob(x).mean()
    M = torch.eye(W.shape[1], dtype=x.dtype) + W.T @ W / s2  # the precision of p(z|x), the same for every x
    mu = torch.linalg.solve(M, W.T @ (x - b).T / s2).T  # (1600, 2): the mean of p(z|x)
    q = vae.encoder(data.train).base_dist  # mean-field: independent Normals
    m, v = q.loc.double(), q.scale.double() ** 2  # (1600, 2) each
    d = mu - m
    # KL(N(m, diag v) || N(mu, M^-1)), closed form, averaged over points
    kl = 0.5 * ((torch.diagonal(M) * v).sum(-1) + ((d @ M) * d).sum(-1) - len(M) - torch.logdet(M) - v.log().sum(-1))
    floor = 0.5 * (torch.diagonal(M).log().sum() - torch.logdet(M))  # 0 exactly when W^T W is diagonal
    # floor rounded, then + 0.0: a rounding error of -1e-17 prints as 0.0000, not -0.0000
    return log_px, kl.mean(), round(float(floor), 4) + 0.0


print("VAE by SVI, exact values in nats per point (ELBO = log p(x) - KL):")
print("  Adam step size, first -> last   epochs   log p(x)   KL(q || p(z|x))   least KL of a mean-field q")
for label, keys in (("fixed", ["train.stop=epochs", "train.epochs=40"]),
                    ("fixed", ["train.stop=epochs", "train.epochs=160"]),
                    ("halved on plateaus", ["train.stop=plateau", "train.epochs=1000"])):
    cfg = load(None, BASE + keys)
    data, vae = prepare(cfg)
    trainer = Trainer.from_config(cfg, data, vae, run=None, progress=False)
    with contextlib.redirect_stdout(io.StringIO()):  # per-epoch lines carry timings
        trainer.fit()
    log_px, kl, floor = exact(vae)
    last_lr = trainer.optimizer.param_groups[0]["lr"]
    print(f"  {label:<18} {cfg.optim.lr:g} -> {last_lr:<7g} {len(trainer.metrics):6d}  {log_px:9.4f}  {kl:16.4f}"
          f"  {floor:27.4f}")
