"""Every random state of a run as plain tensors and numbers, so a checkpoint can restore it exactly."""

from __future__ import annotations

import random
from typing import Any, Dict

import numpy as np
import torch


def rng_state(generators: Dict[str, torch.Generator]) -> Dict[str, Any]:
    """Every random state as tensors and plain Python values (so checkpoints load with ``weights_only``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
            "python": [version, list(internal), gauss_next],
            **{k: g.get_state() for k, g in generators.items()}}


def set_rng_state(state: Dict[str, Any], generators: Dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    for k, g in generators.items():
        g.set_state(state[k])
