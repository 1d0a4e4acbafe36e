"""Config schema, defaults, typed overrides and one-line errors that name the key."""

import pickle

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.components.priors import PRIORS, StudentTPrior
from pyro_vae.config import apply_overrides, dump, load, validate
from pyro_vae.data import DataConfig
from pyro_vae.errors import ConfigError
from pyro_vae.registry import ComponentSpec


def test_empty_config_is_the_default_and_round_trips(tmp_path):
    cfg = validate({})
    assert cfg.model.prior.model_dump() == {"name": "normal"}
    assert cfg.model.likelihood.model_dump() == {"name": "normal", "scale": 0.1, "learn_scale": "none", "scale_init": "data"}
    assert cfg.guide.name == "mean_field" and cfg.data.name == "digits"
    path = tmp_path / "c.yaml"
    path.write_text(dump(cfg))
    assert load(path) == cfg


def test_overrides_are_typed_and_component_keys_sit_beside_name():
    cfg = load(None, ["model.latent_dim=8", "model.prior.name=student_t", "model.prior.df=5",
                      "model.decoder.hidden=[32, 16]", "optim.clip_norm=null", "train.validate_args=true"])
    assert cfg.model.latent_dim == 8
    assert cfg.model.prior.model_dump() == {"name": "student_t", "df": 5.0}
    assert cfg.model.decoder.hidden == [32, 16]
    assert cfg.optim.clip_norm is None and cfg.train.validate_args is True


def test_component_sections_hold_typed_specs_that_build_their_component():
    cfg = load(None, ["model.prior=student_t", "model.prior.df=3", "model.likelihood.learn_scale=global",
                      "data.name=synthetic", "data.n=50", "data.binarize=static"])
    prior, likelihood, data = cfg.model.prior, cfg.model.likelihood, cfg.data
    assert isinstance(prior, ComponentSpec) and type(prior) is PRIORS.get("student_t").spec
    assert (prior.name, prior.df) == ("student_t", 3.0)
    assert likelihood.learn_scale == "global" and likelihood.scale == 0.1
    assert isinstance(data, DataConfig) and (data.name, data.n, data.binarize, data.source) == ("synthetic", 50, "static", None)
    built = PRIORS.build(prior, 2)
    assert isinstance(built, StudentTPrior)
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # a spec's class is found as its component's Spec
    with pytest.raises(TypeError, match="spec from resolve"):
        PRIORS.build({"name": "student_t", "df": 3.0}, 2)  # a mapping is resolved first, never built from
    with pytest.raises(TypeError, match="spec from resolve"):
        LIKELIHOODS.build(prior, 5)  # another registry's spec


def test_serialization_is_each_spec_flattened_and_round_trips_exactly():
    """config.yaml and the checkpoint's config_hash: a spec dumps as ``{name: ..., **its keys}`` in
    constructor order, the data section's own keys before the dataset's, so files of older runs load to
    the same config and the same hash."""
    text = ("data:\n  name: npz\n  binarize: none\n  val_fraction: 0.1\n  test_fraction: 0.1\n  path: x.npz\n"
            "model:\n  latent_dim: 2\n  prior:\n    name: student_t\n    df: 3.0\n")
    cfg = validate(yaml.safe_load(text))
    raw = cfg.to_dict()
    shown = {"data": raw["data"], "model": {"latent_dim": raw["model"]["latent_dim"], "prior": raw["model"]["prior"]}}
    assert yaml.safe_dump(shown, sort_keys=False) == text
    assert list(raw["model"]["likelihood"]) == ["name", "scale", "learn_scale", "scale_init"]
    again = validate(yaml.safe_load(dump(cfg)))
    assert again == cfg and again.hash() == cfg.hash() and dump(again) == dump(cfg)


def test_a_spec_from_another_registry_or_built_by_hand_is_refused():
    with pytest.raises(ConfigError, match=r"^model\.prior: expected a prior spec from its registry's resolve\(\) \(got likelihood_normal\)$"):
        validate({"model": {"prior": LIKELIHOODS.resolve({"name": "normal"})}})
    with pytest.raises(ConfigError, match=r"^data: expected a data spec"):
        validate({"data": DataConfig()})


@pytest.mark.parametrize("raw,message", [
    ({"data": {"name": 5}}, r"^data\.name: Input should be a valid string \(got 5\)$"),
    ({"data": "npz"}, r"^data: Input should be a valid dictionary or instance of DataConfig \(got 'npz'\)$"),
    ({"model": {"prior": {"name": [1]}}}, r"^model\.prior\.name: unknown prior '\[1\]'; choose one of: normal"),
])
def test_a_name_of_the_wrong_type_is_one_line(raw, message):
    with pytest.raises(ConfigError, match=message):
        validate(raw)


@pytest.mark.parametrize("overrides,message", [
    (["model.latnt_dim=3"], r"^model\.latnt_dim: unknown key \(did you mean 'latent_dim'\?\)$"),
    (["model.latent_dim=-2"], r"^model\.latent_dim: .*greater than 0 \(got -2\)$"),
    (["model.latent_dim=abc"], r"^model\.latent_dim: .*integer.*\(got 'abc'\)$"),
    (["model.prior.name=gaussian"], r"^model\.prior\.name: unknown prior 'gaussian'"),
    (["model.prior.name=student_t", "model.prior.dof=3"], r"^model\.prior\.dof: unknown key for prior 'student_t' \(did you mean 'df'\?\)$"),
    (["inference.kl=exact"], r"^inference\.kl: .*'analytic' or 'monte_carlo'"),
    (["trian.epochs=3"], r"^trian: unknown key \(did you mean 'train'\?\)$"),
    (["data.name=npz"], r"^data\.path: required key is missing$"),
    (["data.pth=x.npz", "data.name=npz"], r"^data\.pth: unknown key for data 'npz' \(did you mean 'path'\?\)$"),
    (["train.epochs"], r"^--set 'train\.epochs': expected key=value"),
])
def test_bad_config_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load(None, overrides)
    assert "\n" not in str(err.value)


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML at line"):
        load(bad)
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load(tmp_path / "nope.yaml")
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load(notmap)


keys = st.sampled_from(["seed", "model.latent_dim", "train.epochs", "train.batch_size", "inference.num_particles"])


@settings(max_examples=60, deadline=None)
@given(key=keys, value=st.integers(min_value=-5, max_value=10**6))
def test_integer_overrides_either_apply_exactly_or_fail_with_the_key(key, value):
    try:
        cfg = load(None, [f"{key}={value}"]).to_dict()
    except ConfigError as err:
        assert str(err).startswith(key) and value < 1
        return
    node = cfg
    for part in key.split("."):
        node = node[part]
    assert node == value


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20))
def test_any_override_text_yields_config_or_config_error(text):
    try:
        load(None, [f"optim.lr={text}"])
    except ConfigError as err:
        assert "\n" not in str(err)


@given(path=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4), value=st.integers())
def test_apply_overrides_sets_exactly_that_path(path, value):
    raw = apply_overrides({}, [f"{'.'.join(path)}={value}"])
    node = raw
    for part in path:
        node = node[part]
    assert node == value
    assert yaml.safe_load(yaml.safe_dump(raw)) == raw
