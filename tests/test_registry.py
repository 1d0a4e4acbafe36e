"""The registry: schemas from constructor signatures, unknown keys refused with a suggestion."""

import pytest
from pydantic import PositiveFloat

from pyro_vae.errors import ConfigError
from pyro_vae.registry import Registry


def make_registry():
    reg = Registry("thing")

    @reg.register("a")
    class A:
        """An A."""

        def __init__(self, dim: int, *, width: PositiveFloat = 2.0, mode: str = "x"):
            self.dim, self.width, self.mode = dim, width, mode

    return reg


def test_resolve_fills_defaults_and_build_passes_context():
    reg = make_registry()
    spec = reg.resolve({"name": "a", "width": 3}, where="s")
    assert spec.model_dump() == {"name": "a", "width": 3.0, "mode": "x"}
    obj = reg.build(spec, 7)
    assert (obj.dim, obj.width, obj.mode) == (7, 3.0, "x")


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"s\.widht: unknown key for thing 'a' \(did you mean 'width'\?\)"):
        make_registry().resolve({"name": "a", "widht": 3}, where="s")


def test_unknown_name_and_bad_value():
    reg = make_registry()
    with pytest.raises(ConfigError, match=r"s\.name: unknown thing 'b'"):
        reg.resolve({"name": "b"}, where="s")
    with pytest.raises(ConfigError, match=r"s\.width: .*greater than 0.*-1"):
        reg.resolve({"name": "a", "width": -1}, where="s")


def test_duplicate_registration_refused():
    reg = make_registry()
    with pytest.raises(ValueError):
        reg.register("a")(type("B", (), {"__init__": lambda self: None}))
