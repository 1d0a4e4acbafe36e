r"""Replicas of one stock VAE stacked along a leading dimension: their ELBO in batched products, and their Adam.

:class:`Stack` turns R replicas' parameters and Adam moments into views of tensors ``(R, *shape)``;
:class:`StackedELBO` computes every replica's loss in one pass over them, each ``nn.Linear`` becoming one
``baddbmm`` over the replica dimension, and its gradient by a hand-written backward pass in autograd's own
formulas (:meth:`StackedELBO.loss_and_grad`: at the digits' shapes autograd's graph and per-node dispatch cost
more than the arithmetic; without them a stacked step of 8 digits replicas took 0.85-0.93 ms against
1.23-1.33 ms on a Xeon); :meth:`Stack.adam_step` runs torch's fused Adam kernel on them. Adam
is elementwise, so one kernel over stacked tensors is R Adams, but the CPU kernel rounds a vector's elements
and a tensor's tail (its last ``numel mod`` vector-width elements) differently; so a stacked tensor is
stepped whole only where every replica's slice is whole vectors (:data:`WHOLE_VECTORS`) and every replica
steps alike (same step size and step count), and otherwise each replica's slice is its own tensor, as in
its single run: either way the kernel's arithmetic per element is the single run's.
:mod:`pyro_vae.training.replicas` trains with them.
"""

from __future__ import annotations

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
    """Minus the ELBO of R stacked replicas of one stock VAE, ``(R,)``, each summed over its batch, and its
    gradient, both written out: :func:`~pyro_vae.inference.elbo.fused_elbo_loss`'s fast path in its operations and
    order, each ``nn.Linear`` (``addmm(b, h, W^T)``) a batched product over the replica dimension, the prior's
    ``kl_from_normal`` per replica and the likelihood's closed form as is; and the backward pass autograd would run
    on it, step by step in autograd's own formulas (so the same bits), without autograd's graph and per-node
    dispatch, which cost more than the arithmetic at the digits' shapes. ``P`` are the stacked parameters
    ``(R, *shape)``, in ``vae.named_parameters()`` order (:attr:`names`); :func:`architecture_reason` says which
    VAEs it covers. A prior other than the standard Normal, or a likelihood that does not declare
    ``log_prob_vjp``, is differentiated by autograd locally (its few operations alone)."""

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
        # is written out, in kl_normal_normal's operations and order, summed per replica, with its backward)
        self.standard = type(prior) is NormalPrior and bool((prior.loc == 0).all() and (prior.scale == 1).all())
        self.kl = _kl_standard_normal if self.standard else torch.vmap(prior.kl_from_normal)
        self.prior, self.likelihood, self.num_particles = prior, vae.likelihood, num_particles
        self._bound: Optional[Tuple[List[torch.Tensor], List[torch.Tensor]]] = None  # (P, _views(P))
        self._seeds: Dict[tuple, torch.Tensor] = {}

    def __call__(self, P: List[torch.Tensor], x: torch.Tensor, eps: torch.Tensor,
                 kl_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` ``(R, B, x_dim)``, ``eps`` ``(R, [K,] B, latent_dim)``, ``kl_weight`` ``(R,)`` or None (beta = 1)."""
        with torch.no_grad():
            return self._forward(P, x, eps, kl_weight)[0]

    def loss_and_grad(self, P: List[torch.Tensor], x: torch.Tensor, eps: torch.Tensor,
                      kl_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        r"""The losses per point ``(R,)`` (:meth:`__call__` over the batch size ``B``), and in ``P[i].grad`` the
        gradient of their sum: replica r's slice is :math:`\nabla_{\theta_r} \ell_r / B`, as
        ``(losses / B).sum().backward()`` gives it, bit for bit."""
        R, B, K = x.shape[0], x.shape[1], self.num_particles
        grads: List[Optional[torch.Tensor]] = [None] * len(P)
        with torch.no_grad():
            loss, (tapes, loc, scale, raw, out) = self._forward(P, x, eps, kl_weight)
            g = self._seed_grad(R, B, x.device)
            g_kl = g if kl_weight is None else g * kl_weight
            g_loc, g_scale = self._kl_vjp(loc, scale, g_kl)
            g_lik = g.neg()  # loss = beta KL - log_lik
            if K > 1:  # log_lik = log_prob(out, x).sum((1, 2)) / K
                g_out = self._log_prob_vjp(out, x.unsqueeze(1), (g_lik / K)[:, None, None].expand(R, K, B))
                g_z = _backward(tapes[3], P, g_out.reshape(R, K * B, -1), grads, True).reshape(R, K, B, -1)
                g_loc, g_scale = g_z.sum(1) + g_loc, (g_z * eps).sum(1) + g_scale
            else:
                g_z = _backward(tapes[3], P, self._log_prob_vjp(out, x, g_lik[:, None].expand(R, B)), grads, True)
                g_loc, g_scale = g_z + g_loc, g_z * eps + g_scale
            g_raw = torch.ops.aten.softplus_backward(g_scale, raw, 1, 20)  # positive_scale = softplus(raw) + MIN_SCALE
            shared = bool(self.trunk)
            g_h = _backward(tapes[1], P, g_loc, grads, shared)
            g_h2 = _backward(tapes[2], P, g_raw, grads, shared)
            if shared:
                _backward(tapes[0], P, g_h + g_h2, grads, False)
        for p, grad in zip(P, grads):
            p.grad = grad
        return loss / B

    def _forward(self, P, x, eps, kl_weight):
        """The losses ``(R,)`` and what the backward pass reads: each network's tape, loc, scale, raw scale, out."""
        R, B, K = x.shape[0], x.shape[1], self.num_particles
        tapes: List[list] = [[], [], [], []]
        V = self._views(P)
        h = _forward(self.trunk, V, x, tapes[0])
        loc, raw = _forward(self.loc, V, h, tapes[1]), _forward(self.scale, V, h, tapes[2])  # (R, B, d) each
        scale = positive_scale(raw)
        kl = self.kl(loc, scale)  # (R,) = sum_b KL(q(z|x_rb) || p)
        if K > 1:  # z (R, K, B, d), as rsample_normal broadcasts loc (B, d) against eps (K, B, d)
            z = loc.unsqueeze(1) + eps * scale.unsqueeze(1)
            out = _forward(self.decoder, V, z.reshape(R, K * B, -1), tapes[3]).reshape(R, K, B, -1)
            log_lik = self.likelihood.log_prob(out, x.unsqueeze(1)).sum((1, 2)) / K
        else:
            out = _forward(self.decoder, V, loc + eps * scale, tapes[3])
            log_lik = self.likelihood.log_prob(out, x).sum(1)
        loss = (kl if kl_weight is None else kl_weight * kl) - log_lik
        return loss, (tapes, loc, scale, raw, out)

    def _views(self, P: List[torch.Tensor]) -> List[torch.Tensor]:
        """Each weight's ``W^T`` ``(R, in, out)`` and bias's ``b[:, None]`` ``(R, 1, out)``, views of ``P`` made once
        per stack (they follow Adam's in-place steps)."""
        if self._bound is None or self._bound[0] is not P:
            self._bound = (P, [p.transpose(1, 2) if p.dim() == 3 else p.unsqueeze(1) for p in P])
        return self._bound[1]

    def _seed_grad(self, R: int, B: int, device: torch.device) -> torch.Tensor:
        """``d(sum_r loss_r / B) / d loss_r`` ``(R,)``: the backward pass's start, as ``(loss / B).sum()`` gives it."""
        key = (R, B, device)
        if key not in self._seeds:
            self._seeds[key] = torch.ones(R, device=device) / B
        return self._seeds[key]

    def _kl_vjp(self, loc, scale, grad):
        """``grad`` ``(R,)`` times the KL's gradient in ``loc`` and ``scale``."""
        if self.standard:
            return _kl_standard_normal_vjp(loc, scale, grad)
        return _local_vjp(self.kl, (loc, scale), grad)

    def _log_prob_vjp(self, out, x, grad):
        """``grad`` (log_prob's shape) times log_prob's gradient in the decoder's output."""
        g = self.likelihood.log_prob_vjp(out, x, grad)
        return g if g is not None else _local_vjp(lambda o: self.likelihood.log_prob(o, x), (out,), grad)[0]


def _local_vjp(fn, inputs, grad):
    """``grad`` times ``fn``'s gradient in ``inputs``, by autograd on ``fn`` alone."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in inputs]
        return torch.autograd.grad(fn(*leaves), leaves, grad)


def _kl_standard_normal(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """:func:`~pyro_vae.components.priors.kl_normal_normal` against the prior's buffers, summed per replica ``(R,)``,
    without its ``- 0`` and ``/ 1`` (exact in floating point: the same bits, four operations fewer)."""
    var_ratio = scale.pow(2)
    return (0.5 * (var_ratio + loc.pow(2) - 1 - var_ratio.log())).sum((1, 2))


def _kl_standard_normal_vjp(loc: torch.Tensor, scale: torch.Tensor,
                            grad: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    r""":func:`_kl_standard_normal`'s backward as autograd runs it: with :math:`r = s^2`,
    :math:`\partial/\partial s = \tfrac12 g (1 - 1/r)\, 2s` and :math:`\partial/\partial m = \tfrac12 g\, 2m`."""
    half = grad[:, None, None] * 0.5  # the sum's and 0.5 *'s backward: (R, 1, 1), broadcast
    g_ratio = half + half.neg() / scale.pow(2)  # var_ratio's two uses: the sum, and - log
    return half * (2 * loc), g_ratio * (2 * scale)


def _plan(module: nn.Module, prefix: str, index: Dict[str, int]) -> list:
    """A Linear, or a Sequential of Linears and activations, as steps: ``(weight, bias)`` indices or the activation."""
    named = [(f"{prefix}.{i}", m) for i, m in enumerate(module)] if isinstance(module, nn.Sequential) \
        else [(prefix, module)]
    return [(index[f"{n}.weight"], index.get(f"{n}.bias")) if isinstance(m, nn.Linear) else m for n, m in named]


def _forward(steps: list, V: List[torch.Tensor], h: torch.Tensor, tape: list) -> torch.Tensor:
    """The steps on ``h`` ``(R, N, in)``, each Linear ``h W^T + b`` per replica (``V``: :meth:`StackedELBO._views`);
    ``tape`` gets each step's input (and an activation's output) for :func:`_backward`."""
    for step in steps:
        if isinstance(step, tuple):
            tape.append((step, h))
            h = torch.bmm(h, V[step[0]]) if step[1] is None else torch.baddbmm(V[step[1]], h, V[step[0]])
        else:
            y = step(h)
            tape.append((step, h, y))
            h = y
    return h


def _backward(tape: list, P: List[torch.Tensor], g: torch.Tensor, grads: list, need_input: bool):
    """Autograd's backward of :func:`_forward` from the output's gradient ``g``: a Linear's weight gradient as
    ``g^T h`` in the weight's own layout (as torch's ``mm_mat2_backward`` gives it for ``W^T``), its input's as
    ``g W``, its bias's as the sum of ``g`` over the rows; an activation's by :data:`ACTIVATION_GRADS`. Writes
    ``grads[i]``; returns the input's gradient (None unless ``need_input``)."""
    for k in range(len(tape) - 1, -1, -1):
        if isinstance(tape[k][0], tuple):
            (i, j), h = tape[k]
            grads[i] = torch.bmm(g.transpose(1, 2), h)
            if j is not None:
                grads[j] = g.sum(1)
            g = torch.bmm(g, P[i]) if k > 0 or need_input else None
        else:
            act, a, y = tape[k]
            g = ACTIVATION_GRADS[type(act)](act, g, a, y)
    return g


_aten = torch.ops.aten
# activation -> its backward (module, grad, input, output), autograd's own formula (derivatives.yaml)
ACTIVATION_GRADS = {
    nn.Tanh: lambda m, g, a, y: _aten.tanh_backward(g, y),
    nn.ReLU: lambda m, g, a, y: _aten.threshold_backward(g, y, 0),
    nn.ELU: lambda m, g, a, y: _aten.elu_backward(g, m.alpha, 1, 1, False, a),
    nn.Softplus: lambda m, g, a, y: _aten.softplus_backward(g, a, m.beta, m.threshold),
    nn.GELU: lambda m, g, a, y: _aten.gelu_backward(g, a, approximate=m.approximate),
    nn.LeakyReLU: lambda m, g, a, y: _aten.leaky_relu_backward(g, a, m.negative_slope, False),
}


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
        self.lists: Optional[Tuple[list, list, list, list]] = None  # adam_step's, while uniform
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
        if everyone and self.uniform and len(groups) == 1:  # the common step: the kernel's lists made once
            if self.lists is None:
                self.lists = self._lists(True, take)
            params, exp_avgs, exp_avg_sqs, steps = self.lists
            grads = [g for p, whole in zip(self.P, self.whole) for g in ((p.grad,) if whole else p.grad.unbind(0))]
            torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lrs[0], **self.hyper)
            return
        for lr, js in groups.items():
            params, exp_avgs, exp_avg_sqs, steps = self._lists(False, js)
            grads = [p.grad[j] for p in self.P for j in js]
            # torch.optim.adam._fused_adam without its regrouping: the steps were counted above
            torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, **self.hyper)

    def _lists(self, stacked: bool, js: Sequence[int]) -> Tuple[list, list, list, list]:
        """The fused kernel's parameter, moment and step lists for members ``js``: each parameter's stacked tensors
        where ``stacked`` and its slices are whole vectors, else its members' slices, in :meth:`adam_step`'s order
        of gradients."""
        params, exp_avgs, exp_avg_sqs, steps = [], [], [], []
        for i, p in enumerate(self.P):
            parts = [(p.data, self.M[i], self.V[i], self.S[0, i])] if stacked and self.whole[i] else \
                [self.slices[i][j] for j in js]
            for data, m, v, step in parts:
                params.append(data)
                exp_avgs.append(m)
                exp_avg_sqs.append(v)
                steps.append(step)
        return params, exp_avgs, exp_avg_sqs, steps


def _adam_state(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> Dict[str, torch.Tensor]:
    """``optimizer.state[p]``, made as torch's fused Adam makes it on its first step when it is empty."""
    state = optimizer.state[p]
    if not state:
        state.update(step=torch.zeros((), dtype=torch.float32, device=p.device),
                     exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                     exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format))
    return state
