"""List every registered component (priors, decoders, likelihoods, guides, datasets) with its parameters."""

from __future__ import annotations

from pyro_vae.components.catalog import describe


def add_arguments(p) -> None:
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (as in the docs)")


def run(args) -> int:
    print(describe(markdown=args.markdown))
    return 0
