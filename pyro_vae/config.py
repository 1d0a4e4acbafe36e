"""The config schema (pydantic), YAML loading, and typed ``--set key=value`` overrides.

Component sections (``model.prior``, ``model.decoder``, ``model.likelihood``, ``guide``,
``data``) hold the validated spec of a registered component (:class:`pyro_vae.registry.ComponentSpec`):
its ``name`` plus its own keys as typed fields, made from the registered class's constructor, so the
schema grows with the registries. ``Config.to_dict`` flattens each spec back to ``{name: ..., **keys}``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SerializeAsAny,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from pyro_vae.components.catalog import ALL_REGISTRIES
from pyro_vae.data import DataConfig
from pyro_vae.errors import ConfigError
from pyro_vae.registry import AnySpec, ComponentSpec, format_error

MAX_SEED = 2**32 - 1  # pyro.set_rng_seed seeds NumPy's legacy generator, which takes 32 bits


# component section -> its default component, which a spec that sets keys but no name refers to
DEFAULT_COMPONENTS = {"model.prior": "normal", "model.decoder": "mlp", "model.likelihood": "normal",
                      "guide": "mean_field", "data": "digits"}


class Section(BaseModel):
    # allow_inf_nan=False: a NaN or infinite number is refused here, naming its key, instead of surfacing
    # later as a non-finite loss
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


def _resolve(spec: Any, where: str) -> ComponentSpec:
    """Resolve the component spec of section ``where``; ``"name"`` alone is short for ``{name: ...}``, and a
    spec that sets keys but no name (``--set model.decoder.hidden=[16]``) refers to the default component.
    A spec that the section's registry made (a default, or a section of another config) is kept as it is."""
    registry = ALL_REGISTRIES[where]
    if isinstance(spec, ComponentSpec):
        if not registry.owns(spec):
            raise ValueError(f"expected a {registry.kind} spec from its registry's resolve() (got {type(spec).__name__})")
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"expected a mapping with a 'name' (got {spec!r})")
    return registry.resolve({"name": DEFAULT_COMPONENTS[where], **spec}, where=where)


def _default(where: str) -> Callable[[], ComponentSpec]:
    """The default factory of section ``where``: its default component's spec (a fresh object for every config)."""
    return lambda: ALL_REGISTRIES[where].resolve({"name": DEFAULT_COMPONENTS[where]}, where=where)


_DATA_NAME = TypeAdapter(DataConfig.model_fields["name"].annotation)


def _resolve_data(data: Any) -> Any:
    """The ``data`` section as its dataset's spec; a non-mapping is left for pydantic to refuse as not a DataConfig.

    ``data.name`` is checked as the typed field it is before the lookup, so ``name: 5`` reads as a wrong type."""
    if isinstance(data, dict) and "name" in data:
        try:
            _DATA_NAME.validate_python(data["name"])
        except ValidationError as err:
            raise ConfigError(format_error(err, prefix="data.name", valid_keys=lambda loc: [])) from None
    return _resolve(data, "data") if isinstance(data, (dict, ComponentSpec)) else data


class ModelConfig(Section):
    """``model``: the generative model p(z) p(x|z)."""

    latent_dim: PositiveInt = 2  # dimension of z (latent.png shows 1 or 2 dimensions as they are, more on their first two principal axes)
    prior: AnySpec = Field(default_factory=_default("model.prior"))  # p(z): a registered prior and its keys
    decoder: AnySpec = Field(default_factory=_default("model.decoder"))  # g(z; theta): a registered decoder and its keys
    likelihood: AnySpec = Field(default_factory=_default("model.likelihood"))  # p(x | g(z)): a registered likelihood and its keys

    @field_validator("prior", mode="before")
    @classmethod
    def _prior(cls, v):
        return _resolve(v, "model.prior")

    @field_validator("decoder", mode="before")
    @classmethod
    def _decoder(cls, v):
        return _resolve(v, "model.decoder")

    @field_validator("likelihood", mode="before")
    @classmethod
    def _likelihood(cls, v):
        return _resolve(v, "model.likelihood")


WAKE_SLEEP_OBJECTIVES = ("rws", "wake_sleep")  # fused engine only: pyro_vae.inference.rws


class InferenceConfig(Section):
    """``inference``: the objective and its estimator."""

    objective: Literal["elbo", "iwae", "renyi", "rws", "wake_sleep"] = "elbo"  # renyi: RenyiELBO(alpha); iwae is renyi with alpha = 0; rws: reweighted wake-sleep (num_particles defaults to 5); wake_sleep: K = 1, sleep-phi (inference/rws.py)
    estimator: Literal["reparam", "score_function", "stl", "dreg"] = "reparam"  # score_function: TraceGraph_ELBO on a non-reparameterized q; stl (elbo), dreg (iwae): path derivatives
    kl: Literal["analytic", "monte_carlo"] = "analytic"  # TraceMeanField_ELBO (closed form where one exists) or Trace_ELBO
    num_particles: PositiveInt = 1  # z samples per data point, vectorized
    alpha: float = 0.0  # order of the Renyi bound (objective: renyi); alpha = 1 is the ELBO
    phi_update: Literal["wake", "sleep", "both"] = "wake"  # objective rws: how q(z|x) is fitted: wake-phi on the data's weighted draws, sleep-phi on dreams from the model, or their average
    beta: PositiveFloat = 1.0  # poutine.scale needs > 0
    kl_warmup_epochs: NonNegativeInt = 0  # ramp beta linearly from 0 over this many epochs

    @model_validator(mode="after")
    def _consistent(self):
        """IWAE, Renyi and the score-function, STL and DReG estimators have no closed-form KL term: an unset ``kl``
        becomes ``monte_carlo`` (so config.yaml and the KL report say what is used), a set one is an error.

        ConfigError (not ValueError) passes through pydantic unwrapped, so the message stays one clean line."""
        if self.objective in WAKE_SLEEP_OBJECTIVES:
            self._wake_sleep()
        elif self.phi_update != "wake":
            raise ConfigError(f"inference.phi_update: {self.phi_update} is used by objective=rws only, "
                              f"not {self.objective}")
        if self.objective == "renyi" and self.alpha == 1.0:
            raise ConfigError("inference.alpha: 1 makes the Renyi bound the ELBO; use inference.objective=elbo")
        if self.objective != "elbo" and self.estimator == "score_function":
            raise ConfigError("inference.estimator: score_function is supported with inference.objective=elbo only")
        if self.estimator == "stl" and self.objective != "elbo":
            raise ConfigError("inference.estimator: stl is supported with inference.objective=elbo only (iwae: dreg)")
        if self.estimator == "dreg" and self.objective != "iwae":
            raise ConfigError("inference.estimator: dreg is supported with inference.objective=iwae only")
        if self.objective != "elbo" or self.estimator != "reparam":
            if self.kl == "analytic" and "kl" in self.model_fields_set:
                what = f"objective={self.objective}" if self.objective != "elbo" else f"estimator={self.estimator}"
                raise ConfigError(f"inference.kl: 'analytic' is not available with inference.{what}; set inference.kl=monte_carlo")
            self.kl = "monte_carlo"
        return self


    def _wake_sleep(self) -> None:
        """rws / wake_sleep: no reparameterization and no KL term, so estimator and beta are refused when set;
        rws with an unset num_particles takes 5 (wake-phi needs K >= 2); wake_sleep is K = 1 with sleep-phi."""
        o, fields = self.objective, self.model_fields_set
        if self.estimator != "reparam":
            raise ConfigError(f"inference.estimator: {self.estimator} is not used by objective={o}, whose "
                              f"gradients need no reparameterization; leave it unset")
        for key, default in (("beta", 1.0), ("kl_warmup_epochs", 0)):
            if getattr(self, key) != default:
                raise ConfigError(f"inference.{key}: not used by objective={o} (it has no KL term to weight)")
        if o == "wake_sleep":
            for key, value in (("num_particles", 1), ("phi_update", "sleep")):
                if key in fields and getattr(self, key) != value:
                    raise ConfigError(f"inference.{key}: wake_sleep has {key}={value!r}; use objective=rws for others")
            self.num_particles, self.phi_update = 1, "sleep"
            return
        if "num_particles" not in fields:
            self.num_particles = 5
        if self.phi_update == "wake" and self.num_particles == 1:
            raise ConfigError("inference.num_particles: 1 with phi_update=wake gives phi a gradient of mean 0 "
                              "(its one weight is 1); use num_particles >= 2 or phi_update=sleep")


class OptimConfig(Section):
    """``optim``: Adam and optional gradient-norm clipping."""

    lr: PositiveFloat = 3e-3  # Adam's first step size (train.stop: plateau cuts it towards train.min_lr)
    clip_norm: Optional[PositiveFloat] = None  # clip the global gradient norm to this (null: no clipping)


class TrainConfig(Section):
    """``train``: the loop, and when it stops (the rules are in ``stopping.py``)."""

    epochs: PositiveInt = 1000  # the most passes over the training split (stop: epochs runs exactly this many)
    stop: Literal["plateau", "epochs"] = "plateau"  # plateau: cut the step size when the validation ELBO stops improving, stop once it stops at min_lr; epochs: run all train.epochs
    patience: PositiveInt = 20  # epochs without an improvement before a cut (or, at min_lr, the stop); with stop: epochs, only for summary.json's converged
    min_delta: float = Field(0.1, ge=0.0)  # an improvement: validation ELBO more than this above the last improving epoch's (nats per point)
    lr_factor: float = Field(0.5, gt=0.0, lt=1.0)  # a cut multiplies the step size (optim.lr at the start) by this
    min_lr: float = Field(1e-4, ge=0.0)  # the step size is never cut below this; a plateau at it ends training (>= optim.lr: no cuts)
    restore_best: bool = True  # end with the parameters of the epoch with the best validation ELBO (false: the last epoch's)
    batch_size: PositiveInt = 64  # data points per step (the global batch under torch.distributed)
    validate_args: bool = False  # Pyro's distribution checks: on in tests, off in the hot loop for speed
    checkpoint_every_steps: Optional[PositiveInt] = None  # also checkpoint mid-epoch (None: at epoch ends only)
    on_nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss or gradient: stop, or skip that step
    engine: Literal["auto", "pyro", "fused"] = "auto"  # pyro: Pyro's loss; fused: the same objective (elbo, iwae or renyi with the reparam estimator, elbo with stl, iwae with dreg; rws and wake_sleep, which have no Pyro loss) without Pyro's tracing (inference/elbo.py, renyi.py, path_gradients.py); auto: fused where it covers the config, else pyro
    compile: bool = False  # torch.compile the fused loss and its backward (the first compile takes seconds to a minute)
    device: Literal["cpu", "cuda", "auto"] = "cpu"  # where parameters and batches live; auto: cuda if available


class Config(Section):
    """The whole run: every key has a default, so an empty file is the default run."""

    seed: int = Field(0, ge=0, le=MAX_SEED)  # seeds the split, the initialisation and every random draw (at most 2**32 - 1)
    data: SerializeAsAny[DataConfig] = Field(default_factory=_default("data"))
    model: ModelConfig = Field(default_factory=ModelConfig)
    guide: AnySpec = Field(default_factory=_default("guide"))  # q(z|x): a registered guide and its keys
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("data", mode="before")
    @classmethod
    def _data(cls, v):
        return _resolve_data(v)

    @field_validator("guide", mode="before")
    @classmethod
    def _guide(cls, v):
        return _resolve(v, "guide")

    def to_dict(self) -> Dict[str, Any]:
        """Plain data (what ``config.yaml`` holds): every section a mapping, each spec ``{name: ..., **its keys}``."""
        return self.model_dump(mode="json")

    def hash(self) -> str:
        """sha256 of the resolved config, to tie checkpoints to the config that made them."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _valid_keys(loc: tuple) -> List[str]:
    """Valid keys at ``loc`` (a path of section names), for 'did you mean' hints."""
    model: Any = Config
    for part in loc:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = field.annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def validate(raw: Dict[str, Any]) -> Config:
    """Validate a raw config mapping into a :class:`Config` with every default filled in."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping of sections (got {type(raw).__name__})")
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_error(err, prefix="", valid_keys=_valid_keys)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"'{key}' appears twice in one mapping (lines {seen[key] + 1} and "
                                  f"{key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, error: type = ConfigError) -> Any:
    """Parse the YAML file ``path`` (duplicate keys refused); every problem is one ``error`` naming the file."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a directory, not a YAML config file")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot read config ({getattr(err, 'strerror', None) or err.__class__.__name__})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as err:
        raise error(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise error(f"{path}: not valid YAML{f' at line {mark.line + 1}' if mark else ''}") from None


def load(path: Optional[str | Path], overrides: List[str] = ()) -> Config:
    """Read a YAML config (``None``: the default), apply ``key=value`` overrides, validate."""
    raw: Dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(Path(path)) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    raw = apply_overrides(raw, overrides)
    return validate(raw)


def apply_overrides(raw: Dict[str, Any], overrides: List[str]) -> Dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML (``3`` int, ``[64, 64]`` list, ``null``)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value (for example model.latent_dim=8)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {key!r}: malformed key")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: cannot parse value {text!r} as YAML") from None
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if isinstance(child, str) and i > 0:  # "prior: student_t" shorthand becomes a mapping
                child = {"name": child}
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: '{'.'.join(parts[:i + 1])}' is not a section")
            node[part] = child
            node = child
        node[parts[-1]] = value
    return raw


def dump(cfg: Config) -> str:
    """The resolved config as YAML (what ``config.yaml`` in a run directory holds)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
