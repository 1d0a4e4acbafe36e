"""Registries of named components whose constructor keyword arguments are their config schema."""

from __future__ import annotations

import difflib
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, Iterable, Iterator, Tuple, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from pyro_vae.errors import ConfigError


def closest(key: str, options: Iterable[str]) -> str:
    """A ``" (did you mean 'x'?)"`` suffix naming the closest valid option, or ``""``."""
    match = difflib.get_close_matches(str(key), list(options), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


@dataclass(frozen=True)
class Entry:
    """One registered component: its name, class and the schema of its keyword arguments."""

    name: str
    cls: type
    schema: type[BaseModel]

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.cls) or ""
        return doc.splitlines()[0] if doc else ""

    def parameters(self) -> Dict[str, Tuple[str, Any]]:
        """``{param: (type name, default)}``; a required parameter has default ``...``."""
        out = {}
        for key, field in self.schema.model_fields.items():
            out[key] = (type_name(field.annotation, field.metadata), ... if field.is_required() else field.default)
        return out


def type_name(annotation: Any, metadata: list = ()) -> str:
    """A short readable name for a config key's type: ``float > 0``, ``one of: a, b``, ``list[int > 0]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of: " + " | ".join(str(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0], list(annotation.__metadata__))
    if origin in (list, typing.List):
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin is typing.Union:
        inner = [type_name(a) for a in args if a is not type(None)]
        return " | ".join(inner) + (" | null" if type(None) in args else "")
    name = getattr(annotation, "__name__", str(annotation))
    for m in metadata:
        for attr, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(m, attr, None) is not None:
                name += f" {op} {getattr(m, attr)}"
    return name


def _schema_from_signature(kind: str, name: str, cls: type) -> type[BaseModel]:
    """A pydantic model of ``cls.__init__``'s keyword-only arguments (unknown keys forbidden).

    Positional arguments are the build context (``latent_dim``, ``x_dim``...), supplied by the
    builder, never by the user's config.
    """
    fields = {}
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if p.name not in hints:
            raise TypeError(f"{kind} '{name}': keyword argument '{p.name}' needs a type annotation")
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (hints[p.name], default)
    model_name = f"{kind}_{name}".replace("-", "_")
    return create_model(model_name, __config__=ConfigDict(extra="forbid", allow_inf_nan=False), **fields)


E = TypeVar("E")


class Named(Generic[E]):
    """A name -> entry map whose lookups fail with one line naming the closest valid name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, E] = {}

    def _add(self, name: str, entry: E) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[E]:
        return iter(self._entries.values())

    def names(self) -> list[str]:
        return list(self._entries)

    def lookup(self, name: str, at: str) -> E:
        """The entry called ``name``; else a ConfigError for the config key or flag ``at``."""
        if name not in self._entries:
            raise ConfigError(f"{at}: unknown {self.kind} '{name}'{closest(name, self._entries)}; "
                              f"choose one of: {', '.join(self._entries)}")
        return self._entries[name]


class Registry(Named[Entry]):
    """Named components of one kind (priors, guides, ...), each built from a config spec.

    A spec is a dict ``{"name": ..., **params}``; ``params`` are validated against the
    component's keyword-only constructor arguments, so a misspelt key is an error, never
    silently swallowed.
    """

    def register(self, name: str) -> Callable[[type], type]:
        def decorator(cls: type) -> type:
            self._add(name, Entry(name, cls, _schema_from_signature(self.kind, name, cls)))
            cls.registry_name = name
            return cls

        return decorator

    def get(self, name: str, where: str = "") -> Entry:
        return self.lookup(name, f"{where}.name" if where else f"{self.kind} name")

    def resolve(self, spec: Dict[str, Any], where: str = "", reserved: Iterable[str] = ()) -> Dict[str, Any]:
        """Validate ``spec`` and return it with every default filled in.

        ``reserved`` keys belong to the enclosing section (for example ``data.binarize``) and
        are passed through untouched.
        """
        spec = dict(spec)
        name = spec.pop("name", None)
        if name is None:
            raise ConfigError(f"{where or self.kind}.name: missing; choose one of: {', '.join(self._entries)}")
        entry = self.get(name, where)
        kept = {k: spec.pop(k) for k in list(spec) if k in set(reserved)}
        try:
            params = entry.schema.model_validate(spec).model_dump()
        except ValidationError as err:
            valid = list(entry.schema.model_fields) + list(reserved)
            raise ConfigError(format_error(err, prefix=where, valid_keys=lambda loc: valid, what=f"{self.kind} '{name}'")) from None
        return {"name": name, **kept, **params}

    def build(self, spec: Dict[str, Any], *context: Any, reserved: Iterable[str] = ()) -> Any:
        """Construct the component named by ``spec`` with ``context`` as positional arguments."""
        spec = dict(spec)
        for key in reserved:
            spec.pop(key, None)
        entry = self.get(spec.pop("name"))
        return entry.cls(*context, **spec)


def format_error(err: ValidationError, prefix: str, valid_keys: Callable[[tuple], Iterable[str]], what: str = "") -> str:
    """One line for the first problem in a pydantic ``ValidationError``, naming the key."""
    errors = err.errors()
    e = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a typo explains a "missing" too
    loc = tuple(str(p) for p in e["loc"])
    path = ".".join(p for p in (prefix, *loc) if p)
    if e["type"] == "extra_forbidden":
        owner = f" for {what}" if what else ""
        return f"{path}: unknown key{owner}{closest(loc[-1], valid_keys(loc[:-1]))}"
    if e["type"] == "missing":
        return f"{path}: required key is missing"
    given = e.get("input")
    shown = repr(given) if not isinstance(given, dict) else "a mapping"
    msg = e["msg"].replace("Value error, ", "")
    return f"{path}: {msg}" + ("" if "(got " in msg else f" (got {shown})")  # a validator may have said it
