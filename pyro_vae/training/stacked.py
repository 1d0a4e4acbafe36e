r"""Replicas of one stock VAE stacked along a leading dimension: their ELBO in batched products, and their Adam.

:class:`Stack` turns R replicas' parameters and Adam moments into views of tensors ``(R, *shape)``;
:class:`StackedELBO` computes every replica's loss in one pass over them, each ``nn.Linear`` becoming one
``baddbmm`` over the replica dimension; :meth:`Stack.adam_step` runs torch's fused Adam kernel on them. Adam
is elementwise, so one kernel over stacked tensors is R Adams, but the CPU kernel rounds a vector's elements
and a tensor's tail (its last ``numel mod`` vector-width elements) differently; so a stacked tensor is
stepped whole only where every replica's slice is whole vectors (:data:`WHOLE_VECTORS`) and every replica
steps alike (same step size and step count), and otherwise each replica's slice is its own tensor, as in
its single run: either way the kernel's arithmetic per element is the single run's.
:mod:`pyro_vae.training.replicas` trains with them.
"""

from __future__ import annotations

from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from pyro_vae.components.decoders import LinearDecoder, MLPDecoder
from pyro_vae.components.guides import MeanFieldGuide
from pyro_vae.components.likelihoods import Likelihood
from pyro_vae.components.networks import ACTIVATIONS, positive_scale
from pyro_vae.components.priors import NormalPrior
from pyro_vae.inference.elbo import declares_fast_path
from pyro_vae.model import VAE

WHOLE_VECTORS = 16  # elements: a slice of a multiple of this is whole SIMD vectors of the fused Adam kernel


def architecture_reason(vae: VAE) -> Optional[str]:
    """Why :class:`StackedELBO` does not cover ``vae`` (``None``: it does)."""
    enc, dec, prior, lik = vae.encoder, vae.decoder, vae.prior, vae.likelihood
    if type(vae).model is not VAE.model or type(vae).guide is not VAE.guide:
        return f"{type(vae).__name__} overrides model/guide"
    if type(enc) is not MeanFieldGuide:
        return f"guide {type(enc).__name__} (replicas cover mean_field)"
    if type(dec) not in (MLPDecoder, LinearDecoder):
        return f"decoder {type(dec).__name__} (replicas cover mlp and linear)"
    layers = (nn.Linear, nn.Sequential, *ACTIVATIONS.values())
    for m in [*enc.modules(), *dec.modules()]:
        if m is not enc and m is not dec and not isinstance(m, layers):
            return f"a {type(m).__name__} layer (replicas cover linear layers and activations)"
    if not declares_fast_path(enc, prior) or any(True for _ in prior.parameters()):
        return f"prior {type(prior).__name__} (replicas need a parameter-free prior declaring kl_from_normal)"
    if any(True for _ in lik.parameters()) or type(lik).log_prob is Likelihood.log_prob:
        return f"likelihood {type(lik).__name__} with learned parameters or no closed-form log_prob"
    return None


class StackedELBO:
    """Minus the ELBO of R stacked replicas of one stock VAE, ``(R,)``, each summed over its batch:
    :func:`~pyro_vae.inference.elbo.fused_elbo_loss`'s fast path in its operations and order, each ``nn.Linear``
    (``addmm(b, h, W^T)``) a batched product over the replica dimension (:class:`BatchedLinear`), the prior's
    ``kl_from_normal`` per replica and the likelihood's closed form as is. ``P`` are the stacked parameters
    ``(R, *shape)``, in ``vae.named_parameters()`` order (:attr:`names`); :func:`architecture_reason` says which
    VAEs it covers."""

    def __init__(self, vae: VAE, num_particles: int = 1):
        self.names = [n for n, _ in vae.named_parameters()]
        index = {n: i for i, n in enumerate(self.names)}
        enc, dec = vae.encoder, vae.decoder
        heads = ("loc_head", "scale_head") if enc.shared_trunk else ("loc_net", "scale_net")
        self.trunk = _plan(enc.trunk, "encoder.trunk", index) if enc.shared_trunk else []
        self.loc, self.scale = (_plan(getattr(enc, h), f"encoder.{h}", index) for h in heads)
        self.decoder = _plan(dec.net, "decoder.net", index) if isinstance(dec, MLPDecoder) else \
            _plan(dec.linear, "decoder.linear", index)
        prior = vae.prior
        # (R, B, d) twice -> (R,): the prior's hook per replica (vmap costs ~0.1 ms a call; the standard Normal's
        # is written out, in kl_normal_normal's operations and order, summed per replica)
        self.kl = partial(_kl_standard_normal, prior) if type(prior) is NormalPrior \
            else torch.vmap(prior.kl_from_normal)
        self.likelihood, self.num_particles = vae.likelihood, num_particles

    def __call__(self, P: List[torch.Tensor], x: torch.Tensor, eps: torch.Tensor,
                 kl_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` ``(R, B, x_dim)``, ``eps`` ``(R, [K,] B, latent_dim)``, ``kl_weight`` ``(R,)`` or None (beta = 1)."""
        R, B, K = x.shape[0], x.shape[1], self.num_particles
        h = _forward(self.trunk, P, x)
        loc, scale = _forward(self.loc, P, h), positive_scale(_forward(self.scale, P, h))  # (R, B, d) each
        kl = self.kl(loc, scale)  # (R,) = sum_b KL(q(z|x_rb) || p)
        if K > 1:  # z (R, K, B, d), as rsample_normal broadcasts loc (B, d) against eps (K, B, d)
            z = loc.unsqueeze(1) + eps * scale.unsqueeze(1)
            out = _forward(self.decoder, P, z.reshape(R, K * B, -1)).reshape(R, K, B, -1)
            log_lik = self.likelihood.log_prob(out, x.unsqueeze(1)).sum((1, 2)) / K
        else:
            log_lik = self.likelihood.log_prob(_forward(self.decoder, P, loc + eps * scale), x).sum(1)
        return (kl if kl_weight is None else kl_weight * kl) - log_lik


def _kl_standard_normal(prior: NormalPrior, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """:func:`~pyro_vae.components.priors.kl_normal_normal` against the prior's buffers, summed per replica ``(R,)``."""
    var_ratio = (scale / prior.scale).pow(2)
    t1 = ((loc - prior.loc) / prior.scale).pow(2)
    return (0.5 * (var_ratio + t1 - 1 - var_ratio.log())).sum((1, 2))


def _plan(module: nn.Module, prefix: str, index: Dict[str, int]) -> list:
    """A Linear, or a Sequential of Linears and activations, as steps: ``(weight, bias)`` indices or the activation."""
    named = [(f"{prefix}.{i}", m) for i, m in enumerate(module)] if isinstance(module, nn.Sequential) \
        else [(prefix, module)]
    return [(index[f"{n}.weight"], index.get(f"{n}.bias")) if isinstance(m, nn.Linear) else m for n, m in named]


def _forward(steps: list, P: List[torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    for step in steps:
        if isinstance(step, tuple):
            h = BatchedLinear.apply(h, P[step[0]], None if step[1] is None else P[step[1]])
        else:
            h = step(h)
    return h


class BatchedLinear(torch.autograd.Function):
    """``F.linear`` of R replicas, ``h`` ``(R, N, in)``, ``w`` ``(R, out, in)``, ``b`` ``(R, out)`` or None, with
    ``addmm``'s backward written out per replica: the weight's gradient as ``g^T h`` in the weight's own layout
    (as torch's ``mm_mat2_backward`` gives it for ``W^T``; ``bmm``'s own would be ``h^T g``, transposed and copied),
    the input's as ``g W`` and the bias's as the sum of ``g`` over the rows."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(h, w)  # forward(ctx, ...): no setup_context, whose signature binding costs ~50 us a call
        return torch.bmm(h, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        h, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        return (torch.bmm(g, w) if need[0] else None, torch.bmm(g.transpose(1, 2), h) if need[1] else None,
                g.sum(1) if need[2] else None)


class Stack:
    """The parameters and Adam state of ``members`` (each a module and its torch fused Adam, of one architecture),
    stacked: member j's parameters become views ``P[i][j]`` of leaves ``P[i]`` ``(R, *shape)`` (what the stacked
    loss differentiates), its moments views of ``M[i]``, ``V[i]`` and its step counts of ``S`` ``(R, n)``; every
    write to the stack is a write to the members', and the members' state dicts read the stack."""

    def __init__(self, members: Sequence[Tuple[nn.Module, torch.optim.Optimizer]]):
        params = [list(module.parameters()) for module, _ in members]  # [member][parameter]
        states = [[_adam_state(opt, p) for p in ps] for (_, opt), ps in zip(members, params)]
        n = len(params[0])
        self.P = [torch.stack([ps[i].detach() for ps in params]).requires_grad_() for i in range(n)]
        self.M = [torch.stack([st[i]["exp_avg"] for st in states]) for i in range(n)]
        self.V = [torch.stack([st[i]["exp_avg_sq"] for st in states]) for i in range(n)]
        self.S = torch.stack([torch.stack([s["step"] for s in st]) for st in states])  # (R, n) Adam steps
        for j, (ps, st) in enumerate(zip(params, states)):
            for i, (p, s) in enumerate(zip(ps, st)):
                p.data = self.P[i].data[j]
                s.update(exp_avg=self.M[i][j], exp_avg_sq=self.V[i][j], step=self.S[j, i])
        self.whole = [p[0].numel() % WHOLE_VECTORS == 0 for p in self.P]
        # each member's slices, for the kernel calls that step members apart: [parameter][member]
        self.slices = [list(zip(p.data.unbind(0), m.unbind(0), v.unbind(0), self.S[:, i].unbind(0)))
                       for i, (p, m, v) in enumerate(zip(self.P, self.M, self.V))]
        self.uniform = bool((self.S == self.S[0]).all())  # every member has taken every step
        group = members[0][1].param_groups[0]
        self.hyper = dict(beta1=group["betas"][0], beta2=group["betas"][1], weight_decay=group["weight_decay"],
                          eps=group["eps"], amsgrad=False, maximize=False, grad_scale=None, found_inf=None)

    @staticmethod
    def release(module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Give a member leaving the stack copies of its own parameters and Adam state."""
        for p in module.parameters():
            p.data = p.data.clone()
        for state in optimizer.state.values():
            state.update({k: v.clone() for k, v in state.items()})

    def zero_grad(self) -> None:
        for p in self.P:
            p.grad = None

    def bad_gradients(self, names: Sequence[str]) -> Dict[int, str]:
        """``{j: the first parameter name whose gradient is not finite}`` for the members that have one."""
        finite = torch.stack([torch.isfinite(p.grad).flatten(1).all(1) for p in self.P], 1)  # (R, n)
        return {j: names[int((~finite[j]).nonzero()[0])] for j in (~finite.all(1)).nonzero().flatten().tolist()}

    def adam_step(self, ok: Sequence[bool], lrs: Sequence[float]) -> None:
        """torch's fused Adam for the members whose step is ``ok``, member j at step size ``lrs[j]``: on the
        stacked tensors where all step alike and a slice is whole vectors of the kernel, else on the slices."""
        take = [j for j, good in enumerate(ok) if good]
        if not take:
            return
        everyone = len(take) == len(ok)
        if everyone:
            self.S.add_(1)
        else:
            self.S[take] += 1
            self.uniform = False
        groups: Dict[float, List[int]] = {}
        for j in take:
            groups.setdefault(lrs[j], []).append(j)
        stacked = everyone and self.uniform and len(groups) == 1
        for lr, js in groups.items():
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for i, p in enumerate(self.P):
                if stacked and self.whole[i]:
                    parts = [(p.data, self.M[i], self.V[i], self.S[0, i])]
                    grad = [p.grad]
                else:
                    parts = [self.slices[i][j] for j in js]
                    g = p.grad.unbind(0)
                    grad = [g[j] for j in js]
                grads += grad
                for data, m, v, step in parts:
                    params.append(data)
                    exp_avgs.append(m)
                    exp_avg_sqs.append(v)
                    steps.append(step)
            # torch.optim.adam._fused_adam without its regrouping: the steps were counted above
            torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, **self.hyper)


def _adam_state(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> Dict[str, torch.Tensor]:
    """``optimizer.state[p]``, made as torch's fused Adam makes it on its first step when it is empty."""
    state = optimizer.state[p]
    if not state:
        state.update(step=torch.zeros((), dtype=torch.float32, device=p.device),
                     exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                     exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format))
    return state
