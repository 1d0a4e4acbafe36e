"""Guards around a training step: non-finite losses and gradients (with a diagnosis naming the site), signals."""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
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


def nonfinite_step(vae: VAE, xb: torch.Tensor, rows: Optional[torch.Tensor], what: str, where: str, *,
                   skip: bool, err: Optional[Exception] = None, checkpoint: Optional[Path] = None,
                   announce: bool = True) -> None:
    """A step whose loss or gradient is not finite (``what`` says which; ``where`` is e.g. ``step 7 (epoch 2)``):
    diagnose it on ``xb`` ``(batch, x_dim)`` (``rows``: its rows of the training split) and raise a
    :class:`NonFiniteError` naming the offending sites, or with ``skip`` warn (when ``announce``: under
    torch.distributed every rank skips the same step and one says so) and return None, the step dropped.

    ``err`` is the exception computing the loss raised, if it did (Pyro's argument validation rejecting a
    NaN parameter); one that no non-finite value explains is re-raised, being a bug and not a divergence.
    ``checkpoint`` is the last good checkpoint, which a stop leaves in place, named in the message.
    """
    found = diagnose(vae, xb, rows)
    if err is not None and not found:
        raise err
    sites = "; ".join(found) or ("every site's log_prob is finite on re-tracing (the non-finite value arose "
                                 "in the ELBO's arithmetic)")
    msg = f"{where}: {what}; {sites}"
    if skip:
        if announce:
            print(f"pyro-vae: warning: skipped non-finite {msg}", file=sys.stderr, flush=True)
        return None
    kept = f"; kept the last good checkpoint {checkpoint}" if checkpoint is not None else ""
    raise NonFiniteError(f"non-finite {msg}{kept} (lower optim.lr, set optim.clip_norm, or set train.on_nonfinite=skip)")


class SignalCatcher:
    """SIGINT/SIGTERM while training: the first one is recorded in ``received`` (the loop finishes its step,
    checkpoints when it can and raises :func:`interrupted`), a second one stops at once (KeyboardInterrupt).

    Only the main thread can install handlers; elsewhere :meth:`catching` catches nothing.
    """

    def __init__(self, checkpoints: bool = True):
        self.received: Optional[int] = None  # the first signal's number
        self.checkpoints = checkpoints  # whether the loop writes a checkpoint on a signal (what the notice says)

    @contextmanager
    def catching(self):
        """Install the handlers for the body of the ``with``; the previous ones come back after it."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        then = " and writing a checkpoint" if self.checkpoints else ""

        def handler(signum, frame):
            if self.received is not None:
                raise KeyboardInterrupt
            self.received = signum
            print(f"\npyro-vae: {signal.Signals(signum).name}: finishing the current step{then} "
                  f"(send again to stop at once)", file=sys.stderr, flush=True)

        for s in previous:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def interrupted(signum: int, where: str, run_path: Optional[Path] = None) -> Interrupted:
    """The error that ends a run stopped by signal ``signum`` at ``where`` (e.g. ``step 9 (end of epoch 1)``);
    with ``run_path`` (a checkpoint was written there) it says how to continue."""
    hint = f"; checkpoint written; continue with: pyro-vae resume {shlex.quote(str(run_path))}" \
        if run_path is not None else ""
    return Interrupted(signum, f"interrupted by {signal.Signals(signum).name} at {where}{hint}")
