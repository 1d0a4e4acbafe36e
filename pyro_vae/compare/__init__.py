"""Comparisons of inference methods on one split, seed, architecture and budget.

Importing the package registers every built-in method: the SVI variants (:mod:`.svi`), the
baselines (:mod:`.baselines`) and the EM-style methods for nonlinear decoders (:mod:`.em_style`).
"""

from pyro_vae.compare import baselines, em_style, svi  # noqa: F401  (they register their methods)
from pyro_vae.compare.comparison import compare, resolve_methods
from pyro_vae.compare.methods import METHODS, Budget, MethodResult

__all__ = ["METHODS", "Budget", "MethodResult", "compare", "resolve_methods"]
