"""Every registry in one place, and a description of all components generated from them."""

from __future__ import annotations

from pyro_vae.components.decoders import DECODERS
from pyro_vae.components.guides import GUIDES
from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.components.priors import PRIORS
from pyro_vae.data import DATASETS

# config section -> the registry its spec is resolved against (pyro_vae.config); the order is the order of the listing
ALL_REGISTRIES = {
    "model.prior": PRIORS,
    "model.likelihood": LIKELIHOODS,
    "model.decoder": DECODERS,
    "guide": GUIDES,
    "data": DATASETS,
}


def _default(value) -> str:
    return "required" if value is ... else repr(value)


def _cell(text: str) -> str:
    """Markdown table cell text: a bare ``|`` would split the cell."""
    return str(text).replace("|", "\\|")


def describe(markdown: bool = False, heading: str = "###") -> str:
    """All registered components with their config keys, types and defaults (plain text, or Markdown tables)."""
    lines = []
    for section, registry in ALL_REGISTRIES.items():
        if markdown:
            lines += [f"{heading} `{section}.name`", "", "| name | description | parameters |", "|---|---|---|"]
        else:
            lines.append(f"{section}.name:")
        for entry in registry:
            params = entry.parameters()
            if markdown:
                shown = "<br>".join(f"`{k}`: {_cell(t)} = `{_cell(_default(d))}`" for k, (t, d) in params.items())
                lines.append(f"| `{entry.name}` | {_cell(entry.summary)} | {shown or 'none'} |")
            else:
                shown = ", ".join(f"{k}: {t} = {_default(d)}" for k, (t, d) in params.items())
                lines.append(f"  {entry.name:<20} {entry.summary}")
                lines.append(f"  {'':<20} keys: {shown or '(none)'}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
