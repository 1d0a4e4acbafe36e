"""The lecture's Q_i(z) = N(q(x; phi), diag v(x; psi)^2) in the code: two networks, a diagonal covariance, one M-step.

1. ``guide.shared_trunk: false`` builds the mean network q(x; phi) and the scale network v(x; psi) as two separate
   MLPs: they share no parameter, and the gradient of the mean with respect to psi (of the scale with respect to
   phi) is exactly 0. The default, ``shared_trunk: true``, lets both heads read one hidden layer.
2. q(z|x) is ``Independent(Normal(loc, scale), 1)``: log Q(z) is the sum of the log Q_j(z_j), and the covariance
   of its samples is diagonal up to Monte Carlo error.
3. With q held fixed (one draw z), the gradient of the ELBO with respect to theta is the gradient of log p(x, z; theta):
   the M-step's objective; the KL term and log q contribute nothing to it.
"""

import pyro
import torch
from torch.distributions import Independent, Normal

from pyro_vae.build import prepare
from pyro_vae.config import load
from pyro_vae.inference.elbo import fused_elbo_loss

torch.set_num_threads(1)  # same float summation order on every machine
DRAWS = 200000


def ids(module):
    return {id(p) for p in module.parameters()}


def count(params):
    return sum(p.numel() for p in params)


# 1. The two networks, separate (shared_trunk: false) and with the default shared hidden layer.
cfg = load(None, ["guide.shared_trunk=false"])
data, vae = prepare(cfg)
guide = vae.encoder
shared = ids(guide.loc_net) & ids(guide.scale_net)
print(f"guide.shared_trunk=false: {type(guide).__name__}.loc_net (phi) {count(guide.loc_net.parameters())} parameters,"
      f" .scale_net (psi) {count(guide.scale_net.parameters())}, shared {len(shared)}")
x = data.train[:8]
loc, scale = guide.loc_scale(x)  # (8, 2) each
d_loc_psi = torch.autograd.grad(loc.sum(), list(guide.scale_net.parameters()), allow_unused=True)
d_scale_phi = torch.autograd.grad(scale.sum(), list(guide.loc_net.parameters()), allow_unused=True)
unused = [g is None for g in d_loc_psi + d_scale_phi]  # None: autograd found no path from that tensor
print(f"  autograd finds no path from psi to mu(x) nor from phi to v(x): {all(unused)} ({len(unused)} tensors)")
default = prepare(load(None, []))[1].encoder
both = count(p for p in default.parameters() if id(p) in ids(default.trunk))
print(f"guide.shared_trunk=true (the default): trunk {both} parameters read by both heads,"
      f" loc_head {count(default.loc_head.parameters())}, scale_head {count(default.scale_head.parameters())}")

# 2. Q(z) = prod_j Q_j(z_j): the distribution's structure, log Q as a sum, and the covariance of its samples.
pyro.set_rng_seed(0)
with torch.no_grad():
    q = guide(x)
    print(f"q(z|x): {type(q).__name__}({type(q.base_dist).__name__}), reinterpreted_batch_ndims"
          f" {q.reinterpreted_batch_ndims}, batch_shape {tuple(q.batch_shape)}, event_shape {tuple(q.event_shape)}")
    z = q.sample((DRAWS,))  # (DRAWS, 8, 2)
    by_coordinate = Normal(loc, scale).log_prob(z).sum(-1)  # sum_j log Q_j(z_j)
    print(f"  max |log Q(z) - sum_j log Q_j(z_j)| over {DRAWS} draws x 8 points: "
          f"{(q.log_prob(z) - by_coordinate).abs().max():.1e}")
    assert isinstance(q, Independent)
    c = z[:, 0] - z[:, 0].mean(0)  # the first data point's draws, centred, (DRAWS, 2)
    cov = c.T @ c / (DRAWS - 1)
    se = float(scale[0, 0] * scale[0, 1]) / DRAWS ** 0.5  # s.e. of a sample covariance of independent coordinates
    print(f"  first point: v^2 {scale[0, 0] ** 2:.5f} {scale[0, 1] ** 2:.5f}; sample covariance diagonal"
          f" {cov[0, 0]:.5f} {cov[1, 1]:.5f}, off-diagonal {cov[0, 1]:+.5f} (Monte Carlo s.e. {se:.5f})")
    offdiag = []
    for i in range(len(x)):
        c = z[:, i] - z[:, i].mean(0)
        offdiag.append(float((c[:, 0] * c[:, 1]).sum() / (DRAWS - 1)) / (float(scale[i].prod()) / DRAWS ** 0.5))
    print(f"  off-diagonal / its s.e., all 8 points: {' '.join(f'{v:+.2f}' for v in offdiag)}"
          f"   (sum of squares {sum(v * v for v in offdiag):.1f}; about 8 +- 4 for independent coordinates)")

# 3. The M-step: with z drawn from q and then held fixed, grad_theta ELBO = grad_theta log p(x, z; theta).
vae, x = vae.double(), x.double()  # float64: the two sides below sum in different orders
loc, scale = vae.encoder.loc_scale(x)
pyro.set_rng_seed(0)
eps = torch.randn(len(x), cfg.model.latent_dim, dtype=torch.float64)
theta = [p for n, p in vae.named_parameters() if not n.startswith("encoder.")]
with pyro.validation_enabled(False):  # the fused loss takes given eps on its fast path only
    elbo = -fused_elbo_loss(vae, x, eps=eps)  # E_q[log p(x|z)] (this eps) - KL(q || p(z)), summed over the 8 points
grad_elbo = torch.autograd.grad(elbo, theta, allow_unused=True)
z = (loc + eps * scale).detach()  # the same z, now a constant: q is fixed
log_joint = (vae.likelihood(vae.decoder(z)).log_prob(x) + vae.prior().log_prob(z)).sum()
grad_joint = torch.autograd.grad(log_joint, theta, allow_unused=True)
diff = max(0.0 if a is None and b is None else float((a - b).abs().max()) for a, b in zip(grad_elbo, grad_joint))
print(f"theta ({count(theta)} parameters): max |grad_theta ELBO - grad_theta log p(x, z; theta)| at the same z:"
      f" {diff:.1e}")
