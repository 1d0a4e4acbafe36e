r"""Many seeds of one comparison: each method's numbers as mean and spread across seeds, and paired differences.

A comparison trains every method with seeds :math:`s = 1..S` (initialisation and minibatch order; the
data split is the same for all). For a metric :math:`m_s` (nats per test point, say) it reports

.. math:: \bar m = \frac1S \sum_s m_s, \qquad \mathrm{sd} = \Big(\frac{1}{S-1}\sum_s (m_s - \bar m)^2\Big)^{1/2},
          \qquad \mathrm{se} = \mathrm{sd}/\sqrt{S},

the spread between training runs (not the Monte Carlo or test-sampling error of one run). Against a
baseline method :math:`b` the difference is paired by seed, :math:`d_s = m_s - b_s`, reported as
:math:`\bar d \pm \mathrm{se}(d)`: the shared part of the seed's luck (the same initial decoder, the same
minibatches) cancels, so a real difference shows with fewer seeds than two unpaired spreads need.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

METRICS = ("test_log_likelihood", "test_elbo", "val_log_px", "seconds", "epochs", "examples_per_second")
DIFFERENCES = ("test_log_likelihood", "test_elbo", "val_log_px")  # paired against the baseline


def spread(values: Iterable[Optional[float]]) -> Dict[str, Any]:
    """``{"mean", "sd", "se", "min", "max", "n", "values"}`` of the finite ``values`` (None and NaN left out);
    ``sd`` (the n - 1 form) and ``se = sd / sqrt(n)`` are None below two values, every number None at none."""
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(kept)
    if n == 0:
        return {"mean": None, "sd": None, "se": None, "min": None, "max": None, "n": 0, "values": []}
    mean = math.fsum(kept) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in kept) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "se": sd / math.sqrt(n) if sd is not None else None,
            "min": min(kept), "max": max(kept), "n": n, "values": kept}


def paired_difference(values: Mapping[int, Optional[float]], baseline: Mapping[int, Optional[float]]) -> Dict[str, Any]:
    """:func:`spread` of ``d_s = values[s] - baseline[s]`` over the seeds ``s`` both have a number for,
    plus ``seeds``, the seeds used."""
    seeds = [s for s in values if s in baseline and values[s] is not None and baseline[s] is not None]
    result = spread(values[s] - baseline[s] for s in seeds)
    result["seeds"] = [s for s in seeds if math.isfinite(values[s] - baseline[s])]
    return result


def by_method(rows: Sequence[Mapping[str, Any]]) -> Dict[str, List[Mapping[str, Any]]]:
    """The rows grouped by method ``name``, methods in first-seen order, seeds in row order."""
    groups: Dict[str, List[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["name"], []).append(row)
    return groups


def summarize(rows: Sequence[Mapping[str, Any]], baseline: Optional[str] = None) -> Dict[str, Any]:
    """Aggregate the per-seed rows (:meth:`MethodResult.to_dict`) of a comparison, methods in first-seen order.

    ``methods``: per method ``name``, ``n_seeds``, ``n_converged``, ``seeds``, ``stop_reasons`` (reason ->
    count), ``estimator`` and a :func:`spread` per metric of :data:`METRICS`. ``differences``: for every other
    method and each metric of :data:`DIFFERENCES`, the :func:`paired_difference` method minus ``baseline``
    (default: the first method), with ``name``, ``baseline`` and ``metric``.
    """
    groups = by_method(rows)
    if baseline is None and groups:
        baseline = next(iter(groups))
    if baseline is not None and baseline not in groups:
        raise ValueError(f"baseline '{baseline}' is not one of the compared methods ({', '.join(groups)})")
    methods = []
    for name, group in groups.items():
        entry: Dict[str, Any] = {
            "name": name, "n_seeds": len(group), "n_converged": sum(bool(r["converged"]) for r in group),
            "seeds": [r["seed"] for r in group], "stop_reasons": dict(Counter(r["stop_reason"] for r in group)),
            "estimator": ", ".join(dict.fromkeys(r["estimator"] for r in group))}
        entry.update({m: spread(r[m] for r in group) for m in METRICS})
        methods.append(entry)
    differences = []
    if baseline is not None:
        base = groups[baseline]
        for name, group in groups.items():
            if name == baseline:
                continue
            for metric in DIFFERENCES:
                d = paired_difference({r["seed"]: r[metric] for r in group}, {r["seed"]: r[metric] for r in base})
                differences.append({"name": name, "baseline": baseline, "metric": metric, **d})
    return {"baseline": baseline, "methods": methods, "differences": differences}
