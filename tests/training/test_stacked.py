"""The stacked ELBO's hand-written backward pass: each replica's slice of the gradient is autograd's on that
replica's own fused loss, for every activation, the likelihoods with a written-out ``log_prob_vjp`` and one
without, the standard Normal prior and a vmapped one, K = 1 and K > 1 particles, a shared or separate encoder
trunk, a linear decoder and a per-replica beta."""

import pyro
import pytest
import torch

from pyro_vae import validate_config
from pyro_vae.build import build_seeded
from pyro_vae.components.networks import ACTIVATIONS
from pyro_vae.data import load_data
from pyro_vae.inference.elbo import fused_elbo_loss
from pyro_vae.training.stacked import ACTIVATION_GRADS, Stack, StackedELBO, architecture_reason

R, B = 3, 32
BETA = [1.0, 0.5, 2.0]


def config(seed, model=None, guide=None, K=1):
    return validate_config({
        "seed": seed, "data": {"name": "synthetic", "x_dim": 6, "n": 300},
        "model": {"decoder": {"hidden": [8, 8]}, **(model or {})}, "guide": {"hidden": [8], **(guide or {})},
        "inference": {"num_particles": K}})


def stacked_and_single(K=1, beta=False, binary=False, **sections):
    """One ``loss_and_grad`` of R replicas and, per replica, autograd on its own fused loss (same z variates):
    returns both losses ``(R,)`` and ``[(name, stacked gradient slice, single-run gradient)]``."""
    cfgs = [config(s, K=K, **sections) for s in range(R)]
    data = load_data(cfgs[0].data, 0)
    vaes = [build_seeded(c, data) for c in cfgs]
    assert architecture_reason(vaes[0]) is None  # a VAE the replicas cover
    stack = Stack([(v, torch.optim.Adam(v.parameters(), fused=True)) for v in vaes])
    x = data.train[torch.arange(R * B).reshape(R, B)]
    x = (x > 0).float() if binary else x
    eps = torch.randn(R, *((K,) if K > 1 else ()), B, 2, generator=torch.Generator().manual_seed(1))
    betas = BETA if beta else [1.0] * R
    pairs, want = [], []
    with pyro.validation_enabled(False):
        got = StackedELBO(vaes[0], K).loss_and_grad(stack.P, x, eps, torch.tensor(BETA) if beta else None)
        for r, v in enumerate(vaes):
            loss = fused_elbo_loss(v, x[r], K, kl_weight=betas[r], eps=eps[r]) / B
            want.append(loss.detach())
            grads = torch.autograd.grad(loss, list(v.parameters()))
            pairs += [(f"replica {r} {n}", p.grad[r], g) for (n, _), g, p in zip(v.named_parameters(), grads, stack.P)]
    return got, torch.stack(want), pairs


def assert_pairs(pairs, exact=False):
    for name, got, want in pairs:
        if exact:
            assert torch.equal(got, want), name
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=name)


def test_every_activation_has_a_backward():
    assert set(ACTIVATION_GRADS) == set(ACTIVATIONS.values())


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_gradient_is_each_replicas_own_for_every_activation(activation):
    got, want, pairs = stacked_and_single(model={"decoder": {"hidden": [8, 8], "activation": activation}},
                                          guide={"activation": activation})
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert_pairs(pairs)


@pytest.mark.parametrize("likelihood", ["normal", "bernoulli", "laplace"])  # laplace: no log_prob_vjp, autograd
@pytest.mark.parametrize("prior", ["normal", "laplace"])  # normal: written out; laplace: its hook vmapped
@pytest.mark.parametrize("K", [1, 3])
def test_gradient_is_each_replicas_own_for_likelihoods_priors_and_particles(likelihood, prior, K):
    got, want, pairs = stacked_and_single(K=K, beta=True, binary=likelihood == "bernoulli",
                                          model={"likelihood": likelihood, "prior": prior})
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert_pairs(pairs)


@pytest.mark.parametrize("sections", [{"guide": {"shared_trunk": False}},
                                      {"model": {"decoder": {"name": "linear"}}}], ids=["separate-trunk", "linear"])
def test_gradient_is_each_replicas_own_for_other_networks(sections):
    got, want, pairs = stacked_and_single(**sections)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert_pairs(pairs)


def test_full_batch_gradient_is_bit_for_bit():
    """At a full batch of 32 rows of this shape the batched products round as the single run's: the same bits."""
    got, want, pairs = stacked_and_single()
    assert torch.equal(got, want)
    assert_pairs(pairs, exact=True)
