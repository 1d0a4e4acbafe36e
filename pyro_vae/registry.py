"""Registries of named components whose constructor keyword arguments are their config schema.

Each registered component gets a spec model, a subclass of the registry's :class:`ComponentSpec`
base with one typed field per keyword-only constructor argument; a config section holds an
instance of it (``cfg.model.prior.df``), and :meth:`Registry.build` constructs the component from it.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Dict,
    Generic,
    Iterable,
    Iterator,
    Literal,
    Mapping,
    Tuple,
    TypeVar,
)

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializeAsAny,
    ValidationError,
    create_model,
)

from pyro_vae.errors import ConfigError


def closest(key: str, options: Iterable[str]) -> str:
    """A ``" (did you mean 'x'?)"`` suffix naming the closest valid option, or ``""``."""
    match = difflib.get_close_matches(str(key), list(options), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


class ComponentSpec(BaseModel):
    """A validated component spec: the registered ``name``, plus (in the subclass that the registry makes
    for each component) the component's keyword-only constructor arguments as typed fields.

    A registry's base may add keys of the enclosing config section (``data.binarize``): they are fields of
    every spec of that registry, never passed to the constructor.
    """

    # allow_inf_nan=False: a NaN or infinite number is refused here, naming its key, instead of surfacing
    # later as a non-finite loss
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str


# A config field holding some registry's spec: annotated with the base class, so without SerializeAsAny
# pydantic would dump only ``name`` and drop the component's own keys from config.yaml and the config hash.
AnySpec = SerializeAsAny[ComponentSpec]


@dataclass(frozen=True)
class Entry:
    """One registered component: its name, class, spec model, and which of the spec's fields are constructor arguments."""

    name: str
    cls: type
    spec: type[ComponentSpec]
    params: Tuple[str, ...]  # the keyword-only constructor arguments (the spec's fields beyond the registry base's)

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.cls) or ""
        return doc.splitlines()[0] if doc else ""

    def parameters(self) -> Dict[str, Tuple[str, Any]]:
        """``{param: (type name, default)}``; a required parameter has default ``...``."""
        out = {}
        for key in self.params:
            field = self.spec.model_fields[key]
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


def _spec_from_signature(kind: str, name: str, cls: type, base: type[ComponentSpec]) -> Tuple[type[ComponentSpec], Tuple[str, ...]]:
    """The spec model of ``cls``: ``base`` with ``name`` fixed and one field per keyword-only argument of
    ``cls.__init__`` (unknown keys forbidden), and the names of those arguments.

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
        if p.name in base.model_fields:
            raise TypeError(f"{kind} '{name}': keyword argument '{p.name}' is a key of the {kind} section itself")
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (hints[p.name], default)
    spec = create_model(f"{kind}_{name}".replace("-", "_"), __base__=base, __module__=cls.__module__,
                        __doc__=f"The validated config of {kind} '{name}': its name and {cls.__name__}'s keyword arguments.",
                        name=(Literal[name], name), **fields)
    spec.__qualname__ = f"{cls.__qualname__}.Spec"  # with cls.Spec (set by register), pickle finds the class
    return spec, tuple(fields)


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
        if not isinstance(name, str) or name not in self._entries:  # a YAML number or list is never a name (nor hashable)
            raise ConfigError(f"{at}: unknown {self.kind} '{name}'{closest(name, self._entries)}; "
                              f"choose one of: {', '.join(self._entries)}")
        return self._entries[name]


class Registry(Named[Entry]):
    """Named components of one kind (priors, guides, ...), each built from its validated spec.

    :meth:`resolve` validates a config mapping ``{"name": ..., **params}`` into the component's spec
    model, so a misspelt key is an error, never silently swallowed; :meth:`build` constructs the
    component from that spec. ``base`` is the spec base of every component of this kind.
    """

    def __init__(self, kind: str, base: type[ComponentSpec] = ComponentSpec):
        super().__init__(kind)
        self.base = base

    def register(self, name: str) -> Callable[[type], type]:
        """A class decorator registering the class under ``name``: its keyword-only constructor arguments,
        with their type annotations, become the typed fields of its spec model (``cls.Spec``), which the
        config section holds and :meth:`build` constructs the class from; its positional arguments are
        the build context."""

        def decorator(cls: type) -> type:
            entry = Entry(name, cls, *_spec_from_signature(self.kind, name, cls, self.base))
            self._add(name, entry)
            cls.registry_name, cls.Spec = name, entry.spec
            return cls

        return decorator

    def get(self, name: str, where: str = "") -> Entry:
        return self.lookup(name, f"{where}.name" if where else f"{self.kind} name")

    def owns(self, spec: Any) -> bool:
        """Whether ``spec`` is a spec that this registry's :meth:`resolve` makes (of a component registered here)."""
        return isinstance(spec, ComponentSpec) and spec.name in self and type(spec) is self._entries[spec.name].spec

    def resolve(self, raw: Mapping[str, Any], where: str = "") -> ComponentSpec:
        """Validate the mapping ``raw`` (a ``name`` and that component's keys) into its spec, every default filled in.

        ``where`` is the config key of the section (``model.prior``), for the one-line error naming the key.
        """
        name = raw.get("name")
        if name is None:
            raise ConfigError(f"{where or self.kind}.name: missing; choose one of: {', '.join(self._entries)}")
        entry = self.get(name, where)
        try:
            return entry.spec.model_validate(dict(raw))
        except ValidationError as err:
            valid = [k for k in entry.spec.model_fields if k != "name"]
            raise ConfigError(format_error(err, prefix=where, valid_keys=lambda loc: valid, what=f"{self.kind} '{name}'")) from None

    def build(self, spec: ComponentSpec, *context: Any) -> Any:
        """Construct the component that ``spec`` (from :meth:`resolve`) names, with ``context`` as positional
        arguments and the spec's constructor fields as keyword arguments."""
        if not self.owns(spec):
            raise TypeError(f"{self.kind} registry: build takes a spec from resolve() of a registered {self.kind} (got {spec!r})")
        entry = self._entries[spec.name]
        return entry.cls(*context, **{key: getattr(spec, key) for key in entry.params})


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
