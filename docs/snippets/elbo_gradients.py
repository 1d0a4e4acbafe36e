"""The loss Pyro differentiates is minus a Monte Carlo ELBO, and its gradient reaches encoder AND decoder.

ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)): the decoder (theta) sits in the first term, the
encoder (phi) in both, through the reparameterized draw z = mu(x) + v(x) * eps.
"""

import pyro
import torch
from pyro.infer import Trace_ELBO

from pyro_vae import build_vae, load_config, load_data

torch.set_num_threads(1)  # same float summation order on every machine
cfg = load_config(None, ["model.decoder.hidden=[32]", "guide.hidden=[32]"])
data = load_data(cfg.data, cfg.seed)
x = data.train[:256]
pyro.set_rng_seed(0)
vae = build_vae(cfg, data.x_dim)

# 1. The loss is minus the ELBO estimate: same eps, computed by hand from the components.
pyro.set_rng_seed(1)
loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
pyro.set_rng_seed(1)
q = vae.encoder(x)  # q(z|x), batch (256,), event (2,)
z = q.rsample()  # z = mu(x) + v(x) * eps
elbo = (vae.likelihood(vae.decoder(z)).log_prob(x) + vae.prior().log_prob(z) - q.log_prob(z)).sum()
n = len(x)
print(f"Pyro loss per point              {loss.item() / n:.3f}")
print(f"minus the hand-computed ELBO     {-elbo.item() / n:.3f}")

# 2. Split the ELBO into its two terms and see which parameters each one reaches.
def grad_norms(term):
    vae.zero_grad()
    (term / n).backward(retain_graph=True)  # per point, like the trainer
    enc = sum(p.grad.norm() ** 2 for p in vae.encoder.parameters() if p.grad is not None) ** 0.5
    dec = sum(p.grad.norm() ** 2 for p in vae.decoder.parameters() if p.grad is not None) ** 0.5
    return float(enc), float(dec)

z = q.rsample()
reconstruction = vae.likelihood(vae.decoder(z)).log_prob(x).sum()
kl = torch.distributions.kl_divergence(q, vae.prior()).sum()
for name, term in [("E_q[log p(x|z)]", reconstruction), ("KL(q || p(z))", kl), ("ELBO", reconstruction - kl)]:
    enc, dec = grad_norms(term)
    print(f"|grad| of {name:<16} encoder {enc:9.3f}   decoder {dec:9.3f}")

# 3. Ascend the ELBO for 200 steps: both networks move, and the ELBO rises.
before = {n: p.detach().clone() for n, p in vae.named_parameters()}
optim = torch.optim.Adam(vae.parameters(), lr=1e-3)
elbo_loss = Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
with torch.no_grad():
    start = -elbo_loss.loss(vae.model, vae.guide, x) / len(x)
for step in range(200):
    optim.zero_grad()
    (elbo_loss.differentiable_loss(vae.model, vae.guide, x) / len(x)).backward()
    optim.step()
with torch.no_grad():
    end = -elbo_loss.loss(vae.model, vae.guide, x) / len(x)
moved = {part: sum((p.detach() - before[n]).norm() ** 2 for n, p in vae.named_parameters() if n.startswith(part)) ** 0.5
         for part in ("encoder", "decoder")}
print(f"parameter change after 200 steps: encoder {float(moved['encoder']):.3f}   decoder {float(moved['decoder']):.3f}")
print(f"ELBO per point: before {start:.2f}   after {end:.2f}")
