"""For Bernoulli pixels, log p(x|z) is minus the binary cross-entropy between x and x_hat = sigmoid(g(z)).

The decoder outputs the Bernoulli parameters (logits) of every pixel, not an image; the image-like
x_hat is their mean. The expected log-likelihood E_q[log p(x|z)] is then the average of -BCE(x, x_hat)
over z ~ q(z|x): a cross-entropy loss, estimated with as many z draws as ``num_particles``.
"""

import pyro
import torch
import torch.nn.functional as F

from pyro_vae.config import load
from pyro_vae.build import prepare

torch.set_num_threads(1)
cfg = load(None, ["model.likelihood.name=bernoulli", "data.binarize=static", "model.decoder.hidden=[32]"])
data, vae = prepare(cfg)
x = data.train[:5]  # binarized pixels in {0, 1}, (5, 64)
pyro.set_rng_seed(0)
with torch.no_grad():
    z = vae.encoder(x).sample()  # one z ~ q(z|x) per image, (5, 2)
    logits = vae.decoder(z)  # (5, 64): one Bernoulli logit per pixel
    x_hat = torch.sigmoid(logits)  # what is usually drawn as "the reconstruction"
    log_lik = vae.likelihood(logits).log_prob(x)  # what the model's site "x" scores, (5,)
    bce = F.binary_cross_entropy(x_hat, x, reduction="none").sum(-1)  # -(x log x_hat + (1-x) log(1-x_hat)), summed over pixels
    by_hand = (x * torch.log(x_hat) + (1 - x) * torch.log1p(-x_hat)).sum(-1)

print("pixels per image:", x.shape[1], "  distinct pixel values:", sorted(x.unique().tolist()))
for i in range(len(x)):
    print(f"image {i}: log p(x|z) {log_lik[i]:9.4f}   -BCE(x, x_hat) {-bce[i]:9.4f}   "
          f"sum x log x_hat + (1-x) log(1-x_hat) {by_hand[i]:9.4f}")
print(f"log p(x|z) == -BCE up to float32 rounding (1e-4): {bool(torch.allclose(log_lik, -bce, atol=1e-4))}")

# E_q[log p(x|z)] by Monte Carlo = mean over z draws of -BCE
with torch.no_grad():
    pyro.set_rng_seed(0)
    zs = vae.encoder(x).sample((1000,))  # (1000, 5, 2)
    expected = -F.binary_cross_entropy_with_logits(vae.decoder(zs), x.expand(1000, -1, -1), reduction="none").sum(-1)
print("E_q[log p(x|z)] per image (1000 draws):", " ".join(f"{v:.3f}" for v in expected.mean(0)))
