"""Guards around a training step: non-finite losses and gradients (with a diagnosis naming the site), signals."""

from __future__ import annotations

from typing import Dict, List, Optional

import pyro
import pyro.poutine as poutine
import torch

from pyro_vae.errors import UserError
from pyro_vae.errors import one_line as _first_line
from pyro_vae.model import VAE


class NonFiniteError(UserError):
    """The loss or a gradient became NaN/inf and ``train.on_nonfinite`` is ``stop``."""

    exit_code = 3


class Interrupted(UserError):
    """SIGINT/SIGTERM stopped training after a whole step (and, with a run directory, a checkpoint)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


@torch.no_grad()
def diagnose(vae: VAE, xb: torch.Tensor, rows: Optional[torch.Tensor] = None) -> List[str]:
    """Re-trace guide then model on ``xb`` ``(batch, x_dim)`` and name what is not finite: parameters, and
    each sample site's value or log-probability (with the first offending data row, ``rows[i]``)."""
    found = []
    bad_params = [n for n, p in vae.named_parameters() if not torch.isfinite(p).all()]
    if bad_params:
        found.append(f"non-finite parameters {', '.join(bad_params[:3])}{' ...' if len(bad_params) > 3 else ''}")
    # fork_rng: diagnosing must not shift the random stream of the run it diagnoses
    with torch.random.fork_rng(devices=[]), pyro.validation_enabled(False):
        try:
            guide_tr = poutine.trace(vae.guide).get_trace(xb)
            model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(xb)
        except Exception as err:  # a NaN can break a distribution's constructor; say where tracing stopped
            return found + [f"tracing model and guide failed ({_first_line(err)})"]
        for who, tr in (("guide", guide_tr), ("model", model_tr)):
            for name, site in tr.nodes.items():
                if site["type"] != "sample":
                    continue
                value = site["value"]
                if not torch.isfinite(value).all():
                    found.append(f"{who} site '{name}': sampled value is not finite")
                    continue
                log_prob = site["fn"].log_prob(value).reshape(-1)  # (batch,)
                bad = (~torch.isfinite(log_prob)).nonzero().reshape(-1)
                if len(bad):
                    i = int(bad[0])
                    row = int(rows[i]) if rows is not None and log_prob.numel() == len(rows) else i
                    found.append(f"{who} site '{name}': log_prob is {float(log_prob[i])} for {len(bad)} of "
                                 f"{log_prob.numel()} points (first: train row {row})")
    return found


def grads_finite(params: List[torch.Tensor]) -> bool:
    """Whether every gradient is finite, in one fused pass over all of them: the kernel AMP's GradScaler
    uses to find inf/NaN, "unscaling" by 1 (``x * 1.0`` is ``x``, so the gradients are unchanged). It tests
    elements, not norms, so huge finite gradients pass; it costs ~5 us at the digits shape where the
    L2 norms of every gradient cost ~30 us (and a per-tensor ``isfinite().all()`` loop ~40x more)."""
    grads = [p.grad for p in params]
    if not grads:
        return True
    device = grads[0].device
    found, one = torch.zeros(1, device=device), _ONE.get(device)
    if one is None:
        one = _ONE[device] = torch.ones(1, device=device)
    try:
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, one)
    except (AttributeError, NotImplementedError, RuntimeError):  # a torch or device without the kernel
        return all(bool(torch.isfinite(g).all()) for g in grads)
    return not bool(found)


_ONE: Dict[torch.device, torch.Tensor] = {}  # grads_finite's unscale factor per device, made once
