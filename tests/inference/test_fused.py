"""The fused ELBO against its oracle, Pyro's ELBO: same parameters and seed -> same value, gradients and RNG use."""

import itertools
import math

import pyro
import pytest
import torch

from pyro_vae import validate_config
from pyro_vae.components.decoders import DECODERS
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.inference.engine import FusedELBO
from pyro_vae.inference.elbo import declares_fast_path, fused_elbo_loss
from pyro_vae.inference.renyi import fused_renyi_loss
from pyro_vae.inference.objectives import unsupported_reason
from pyro_vae.components.guides import GUIDES
from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.model import VAE
from pyro_vae.inference.objectives import build_elbo
from pyro_vae.components.priors import PRIORS
from conftest import loss_and_grads

IMAGE = (4, 4)  # 16 features, so image-only components (conv) can join in
X_DIM = 16
BATCH = 5
SMALL = {"hidden": [8]}


def build(prior: str, guide: str, likelihood: str, decoder: str = "mlp", latent_dim: int = 2,
          guide_options: dict | None = None) -> VAE:
    """A tiny VAE of the named components (``build_vae``'s recipe, with an image shape for conv parts)."""
    pyro.clear_param_store()
    cfg = validate_config({"model": {"latent_dim": latent_dim, "prior": prior, "likelihood": likelihood,
                                     "decoder": {"name": decoder}}, "guide": {"name": guide, **(guide_options or {})}})
    m = cfg.model
    lik = LIKELIHOODS.build(m.likelihood, X_DIM)
    return VAE(prior=PRIORS.build(m.prior, latent_dim),
               decoder=DECODERS.build(m.decoder, latent_dim, X_DIM * lik.params_per_feature, IMAGE),
               likelihood=lik, encoder=GUIDES.build(cfg.guide, X_DIM, latent_dim, IMAGE),
               latent_dim=latent_dim, x_dim=X_DIM)


def data(likelihood: str) -> torch.Tensor:
    """Grey values in [0, 1], or their binarization for a likelihood that refuses them."""
    g = torch.Generator().manual_seed(11)
    x = torch.rand(BATCH, X_DIM, generator=g)
    try:
        LIKELIHOODS.build(LIKELIHOODS.resolve({"name": likelihood}), X_DIM).check_data(x, "test data")
    except DataError:
        x = torch.bernoulli(x, generator=g)
    return x


def assert_matches_pyro(vae: VAE, x: torch.Tensor, inference: dict, beta: float = 1.0, seed: int = 5):
    inf = validate_config({"inference": inference}).inference
    elbo = build_elbo(inf)
    vae.kl_weight = beta
    oracle = loss_and_grads(vae, lambda: elbo.differentiable_loss(vae.model, vae.guide, x), seed)
    # validation on: the likelihood's distribution; off (the training default): its closed form
    for validate in (True, False):
        with pyro.validation_enabled(validate):
            fused = loss_and_grads(vae, lambda: fused_elbo_loss(vae, x, inf.num_particles, inf.kl, beta), seed)
        torch.testing.assert_close(fused[0], oracle[0], rtol=1e-5, atol=1e-4)
        # a parameter Pyro leaves without gradient (unused) must get none or a zero one here
        for name in set(oracle[1]) | set(fused[1]):
            want = oracle[1].get(name, torch.zeros(()))
            got = fused[1].get(name, torch.zeros(()))
            torch.testing.assert_close(got.expand_as(want) if got.dim() == 0 else got,
                                       want.expand_as(got) if want.dim() == 0 else want,
                                       rtol=1e-4, atol=1e-5, msg=lambda m: f"gradient of {name}: {m}")
        assert torch.equal(fused[2], oracle[2]), "the fused ELBO consumed the random stream differently"


PAIRS = list(itertools.product(PRIORS.names(), GUIDES.names()))


def declares(registry, name: str, hook: str) -> bool:
    """Whether the registered class ``name`` declares the fast-path method ``hook``."""
    return callable(getattr(registry.get(name).cls, hook, None))


# the fast path's pairs, read from the registries: a new guide or prior with a hook joins every test below
NORMAL_GUIDES = [g for g in GUIDES.names() if declares(GUIDES, g, "loc_scale")]
KL_PRIORS = [p for p in PRIORS.names() if declares(PRIORS, p, "kl_from_normal")]
FAST_PAIRS = [(p, g) for p, g in PAIRS if p in KL_PRIORS and g in NORMAL_GUIDES]


@pytest.mark.parametrize("prior,guide", PAIRS)
def test_fused_matches_pyro_for_every_prior_guide_pair(prior, guide):
    """Every registered prior x guide, where the KL term lives: analytic KL with one particle, Monte Carlo
    KL with three vectorized particles under beta = 0.5, analytic KL with four particles under beta = 2
    (the code paths of TraceMeanField_ELBO and Trace_ELBO)."""
    vae = build(prior, guide, "normal")  # every pair must build: the test data have an image shape for conv
    x = data("normal")
    assert unsupported_reason(vae, validate_config({}).inference, x) is None
    assert_matches_pyro(vae, x, {"kl": "analytic", "num_particles": 1})
    assert_matches_pyro(vae, x, {"kl": "monte_carlo", "num_particles": 3}, beta=0.5)
    assert_matches_pyro(vae, x, {"kl": "analytic", "num_particles": 4}, beta=2.0)


@pytest.mark.parametrize("likelihood", LIKELIHOODS.names())
def test_fused_matches_pyro_for_every_likelihood(likelihood):
    """log p(x|z) does not interact with the KL term, so each likelihood is checked with an analytic
    (normal/mean_field) and a Monte Carlo (mixture/flow) KL pair rather than every pair."""
    x = data(likelihood)
    for prior, guide in (("normal", "mean_field"), ("mixture", "flow")):
        vae = build(prior, guide, likelihood)
        vae.likelihood.check_data(x, "test data")
        assert_matches_pyro(vae, x, {"kl": "analytic", "num_particles": 1})
        assert_matches_pyro(vae, x, {"kl": "analytic", "num_particles": 3}, beta=0.5)


@pytest.mark.parametrize("decoder", DECODERS.names())
def test_fused_matches_pyro_for_every_decoder(decoder):
    vae = build("normal", "mean_field", "normal", decoder=decoder)
    x = data("normal")
    assert_matches_pyro(vae, x, {"num_particles": 2})


def test_fused_matches_pyro_at_latent_dim_one():
    for prior, guide in (("flow", "flow"), ("normal", "full_rank"), ("mixture", "student_t")):
        vae = build(prior, guide, "normal", latent_dim=1)
        assert_matches_pyro(vae, data("normal"), {"num_particles": 2})


def assert_renyi_matches_pyro(vae: VAE, x: torch.Tensor, inference: dict, beta: float = 1.0, seed: int = 5):
    """``fused_renyi_loss`` against Pyro's :class:`RenyiBound` (the oracle): same value, gradients and draws.

    In float64: the log-sum-exp over particles of log-weights in the thousands leaves float32 gradients
    differing in their last digits (5e-6 of the largest) by the order of additions alone."""
    vae, x = vae.double(), x.double()
    inf = validate_config({"inference": inference}).inference
    alpha = 0.0 if inf.objective == "iwae" else inf.alpha
    bound = build_elbo(inf)
    vae.kl_weight = beta
    oracle = loss_and_grads(vae, lambda: bound.differentiable_loss(vae.model, vae.guide, x), seed)
    for validate in (True, False):
        with pyro.validation_enabled(validate):
            fused = loss_and_grads(vae, lambda: fused_renyi_loss(vae, x, inf.num_particles, alpha, beta), seed)
        torch.testing.assert_close(fused[0], oracle[0], rtol=1e-10, atol=1e-9)
        assert set(fused[1]) == set(oracle[1])
        for name, want in oracle[1].items():
            torch.testing.assert_close(fused[1][name], want, rtol=1e-9, atol=1e-9, msg=lambda m: f"gradient of {name}: {m}")
        assert torch.equal(fused[2], oracle[2]), "the fused bound consumed the random stream differently"


@pytest.mark.parametrize("prior,guide,likelihood", [("normal", "mean_field", "normal"), ("mixture", "flow", "bernoulli"),
                                                    ("vamp", "full_rank", "laplace"), ("student_t", "student_t", "normal")])
def test_fused_iwae_and_renyi_match_pyro(prior, guide, likelihood):
    """The IWAE bound with K = 1 (the ELBO's value) and K = 4 under beta = 0.5, and a Renyi bound at alpha = 0.5."""
    vae = build(prior, guide, likelihood)
    x = data(likelihood)
    assert unsupported_reason(vae, validate_config({"inference": {"objective": "iwae", "num_particles": 4}}).inference,
                              x) is None
    assert_renyi_matches_pyro(vae, x, {"objective": "iwae", "num_particles": 1})
    assert_renyi_matches_pyro(vae, x, {"objective": "iwae", "num_particles": 4}, beta=0.5)
    assert_renyi_matches_pyro(vae, x, {"objective": "renyi", "alpha": 0.5, "num_particles": 3})


def test_unsupported_objectives_fall_back_to_pyro():
    vae = build("normal", "mean_field", "normal")
    inf = validate_config({"inference": {"estimator": "score_function"}}).inference
    assert "score_function" in unsupported_reason(vae, inf)


def test_fused_elbo_class_matches_function_and_pyro():
    vae = build("normal", "mean_field", "bernoulli")
    x = data("bernoulli")
    inf = validate_config({"inference": {"num_particles": 2}}).inference
    pyro.set_rng_seed(3)
    a = FusedELBO(inf)(vae, x, 0.7)
    pyro.set_rng_seed(3)
    b = fused_elbo_loss(vae, x, 2, "analytic", 0.7)
    assert torch.equal(a, b)


def train(overrides: dict):
    """Train a tiny VAE on synthetic data; returns the trainer."""
    from pyro_vae.training.trainer import Trainer
    from pyro_vae.build import prepare

    raw = {"data": {"name": "synthetic", "x_dim": 6, "n": 120}, "model": {"decoder": SMALL}, "guide": SMALL,
           "train": {"epochs": 2, "batch_size": 32}}
    for key, value in overrides.items():
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = value
    cfg = validate_config(raw)
    data, vae = prepare(cfg)
    trainer = Trainer.from_config(cfg, data, vae, progress=False)
    trainer.fit()
    return trainer


@pytest.mark.parametrize("inference", [{}, {"inference.kl": "monte_carlo", "inference.num_particles": 2,
                                            "inference.beta": 0.5, "inference.kl_warmup_epochs": 1},
                                       {"inference.objective": "iwae", "inference.num_particles": 3}])
def test_trainer_fused_engine_takes_the_steps_pyro_takes(inference):
    """Same seed: the fused and the Pyro engine give the same parameters after two epochs (the fused
    Adam and the data order are shared, so any difference is the loss's rounding)."""
    fused = train({"train.engine": "fused", **inference})
    oracle = train({"train.engine": "pyro", **inference})
    assert (fused.engine, oracle.engine) == ("fused", "pyro")
    for (name, a), (_, b) in zip(fused.vae.named_parameters(), oracle.vae.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    for a, b in zip(fused.metrics, oracle.metrics):
        assert a["train_elbo"] == pytest.approx(b["train_elbo"], rel=1e-5)


def test_auto_engine_is_fused_for_the_elbo_and_pyro_otherwise():
    from pyro_vae.inference.engine import select_engine

    x = torch.rand(4, X_DIM)
    vae = build("normal", "mean_field", "normal")
    for inference, engine in (({}, "fused"), ({"objective": "iwae", "num_particles": 2}, "fused"),
                              ({"estimator": "score_function"}, "pyro")):
        cfg = validate_config({"inference": inference})
        assert select_engine(cfg, vae, build_elbo(cfg.inference), x)[0] == engine
    cfg = validate_config({"inference": {"estimator": "score_function"}, "train": {"engine": "fused"}})
    with pytest.raises(ConfigError, match="train.engine"):
        select_engine(cfg, vae, build_elbo(cfg.inference), x)
    cfg = validate_config({"train": {"engine": "pyro", "compile": True}})
    with pytest.raises(ConfigError, match="train.compile"):
        select_engine(cfg, vae, build_elbo(cfg.inference), x)


def test_compiled_fused_elbo_matches_eager_without_warnings(capfd):
    """torch.compile (one small graph, the first compile takes seconds) gives the eager value and gradients
    from the same seed: inductor falls back to eager random numbers. Warnings are errors here."""
    vae = build("normal", "mean_field", "bernoulli")
    x = data("bernoulli")
    inf = validate_config({"inference": {"num_particles": 2}}).inference
    compiled = FusedELBO(inf, compile=True)
    for beta in (0.5, 1.0, 1.0):  # the first call is eager; the second compiles; beta changes without recompiling
        got = loss_and_grads(vae, lambda: compiled(vae, x, beta), seed=7)
        want = loss_and_grads(vae, lambda: fused_elbo_loss(vae, x, 2, "analytic", beta), seed=7)
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-4)
        for name in want[1]:
            torch.testing.assert_close(got[1][name], want[1][name], rtol=1e-4, atol=1e-5)
        assert torch.equal(got[2], want[2])
    out, err = capfd.readouterr()
    assert "warn" not in (out + err).lower()


@pytest.mark.parametrize("prior,guide", [("normal", "mean_field"), ("mixture", "flow"), ("vamp", "full_rank")])
def test_fused_log_weights_match_evaluate(prior, guide):
    """The IWAE weights against pyro_vae.evaluation.evaluate's traced ones: same seed, same (K, batch) values; and the
    chunked bound does not depend on the chunk size beyond the draws it takes."""
    from pyro_vae.evaluation import bounds
    from pyro_vae.evaluation.iwae import fused_iwae, fused_log_weights

    vae = build(prior, guide, "bernoulli")
    x = data("bernoulli")
    with torch.no_grad():
        pyro.set_rng_seed(2)
        want = bounds.log_weights(vae.model, vae.guide, x, 7)
        pyro.set_rng_seed(2)
        got = fused_log_weights(vae, x, 7)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
        pyro.set_rng_seed(2)
        bound = fused_iwae(vae, x, 7, chunk=7)
    torch.testing.assert_close(bound, torch.logsumexp(want, 0) - math.log(7), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name,learn_scale", [("normal", "none"), ("normal", "global"), ("normal", "per_feature"),
                                              ("laplace", "none"), ("laplace", "per_feature"), ("student_t", "global"),
                                              ("bernoulli", None), ("continuous_bernoulli", None)])
def test_likelihood_closed_form_matches_its_distribution(name, learn_scale):
    """``Likelihood.log_prob(params, x)`` (the fused hot path, no distribution built) against
    ``likelihood(params).log_prob(x)``: values and gradients, with and without a particle dimension."""
    spec = {"name": name} if learn_scale is None else {"name": name, "learn_scale": learn_scale, "scale": 0.3}
    lik = LIKELIHOODS.build(LIKELIHOODS.resolve(spec), X_DIM)
    if learn_scale == "per_feature":  # distinct sigmas, so a feature/scale mix-up cannot cancel out
        with torch.no_grad():
            lik.log_scale.copy_(torch.linspace(-1.5, 0.5, X_DIM))
    x = data(name)
    g = torch.Generator().manual_seed(4)
    for shape in ((BATCH,), (3, BATCH)):  # (batch,) and (K, batch) of decoder outputs
        params = torch.randn(*shape, X_DIM * lik.params_per_feature, generator=g).requires_grad_()
        results = []
        for compute in (lambda: lik(params).log_prob(x), lambda: lik.log_prob(params, x)):
            lik.zero_grad(set_to_none=True)
            params.grad = None
            value = compute()
            (value * torch.linspace(0.5, 1.5, value.numel()).reshape(value.shape)).sum().backward()
            results.append((value.detach(), params.grad.clone(), [p.grad.clone() for p in lik.parameters()]))
        (want, want_g, want_pg), (got, got_g, got_pg) = results
        assert got.shape == want.shape == shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(got_g, want_g, rtol=1e-4, atol=1e-5)
        for a, b in zip(got_pg, want_pg):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_analytic_kl_with_unexpanded_prior_is_the_plate_broadcast():
    """p(z) with batch shape () against q with batch (K, B): the same per-point KL sum as the data plate's
    ``p.expand(q.batch_shape)``; a pair without a closed form gives None (the Monte Carlo fallback)."""
    from pyro.distributions.kl import kl_divergence

    from pyro_vae.inference.kl import analytic_kl

    torch.manual_seed(1)
    for prior in ("normal", "laplace", "learned_normal"):
        p = PRIORS.build(PRIORS.resolve({"name": prior}), 3)()
        q = pyro.distributions.Normal(torch.randn(2, 4, 3), torch.rand(2, 4, 3) + 0.1).to_event(1)
        torch.testing.assert_close(analytic_kl(q, p), kl_divergence(q, p.expand(q.batch_shape)).sum())
    assert analytic_kl(q, PRIORS.build(PRIORS.resolve({"name": "mixture"}), 3)()) is None


@pytest.mark.parametrize("name", ["normal", "laplace", "student_t"])
def test_fixed_prior_cache_follows_buffers_and_validation(name):
    """A prior without parameters returns one cached p(z) per step, and a new one as soon as a cached one could
    be stale: a buffer changed in place (load_state_dict) or replaced (.double()), or validation switched."""
    prior = PRIORS.build(PRIORS.resolve({"name": name}), 3)
    first = prior()
    assert prior() is first
    state = {k: v + 0.5 for k, v in prior.state_dict().items()}
    prior.load_state_dict(state)
    moved = prior()
    assert moved is not first and torch.equal(moved.mean, prior.distribution().mean)
    assert torch.equal(moved.base_dist.loc, state["loc"])
    with pyro.validation_enabled(False):
        unchecked = prior()
        assert unchecked is not moved and not unchecked._validate_args and prior() is unchecked
    assert prior()._validate_args
    prior.double()
    assert prior().base_dist.loc.dtype == torch.float64
    with torch.inference_mode():
        assert prior() is not prior.distribution() and prior().base_dist.loc.dtype == torch.float64


def test_learned_prior_is_rebuilt_after_every_optimizer_step():
    """Learned priors build p(z) on every call: a gradient must reach this step's parameters, and a stale
    p(z) after an Adam step would train against the old prior."""
    vae = build("learned_normal", "mean_field", "normal")
    x = data("normal")
    opt = torch.optim.Adam(vae.parameters(), lr=0.1)
    before = vae.prior()
    scale_before = before.base_dist.scale.detach().clone()
    with pyro.validation_enabled(False):
        fused_elbo_loss(vae, x).backward()
    assert vae.prior.raw_scale.grad is not None and vae.prior.raw_scale.grad.abs().sum() > 0
    opt.step()
    after = vae.prior()
    assert after is not before and after.base_dist.scale.grad_fn is not None
    assert not torch.equal(after.base_dist.scale, scale_before)
    torch.testing.assert_close(after.base_dist.scale, torch.nn.functional.softplus(vae.prior.raw_scale) + 1e-4)


def test_fused_takes_the_hook_path_exactly_where_guide_and_prior_declare_hooks():
    """For every registered pair: with ``kl: analytic`` and validation off, a pair in FAST_PAIRS builds
    neither q (the guide's ``forward``) nor p (the prior's) and takes the KL from ``kl_from_normal``; every
    other pair (a Student-t or flow guide, a mixture prior), Monte Carlo KL and validation on build both."""
    assert ("normal", "mean_field") in FAST_PAIRS and ("normal", "conv") in FAST_PAIRS  # the selection is not empty
    assert ("normal", "student_t") not in FAST_PAIRS and ("mixture", "mean_field") not in FAST_PAIRS
    x = data("normal")
    for prior, guide in PAIRS:
        vae = build(prior, guide, "normal")
        assert declares_fast_path(vae.encoder, vae.prior) == ((prior, guide) in FAST_PAIRS), (prior, guide)
        calls = []
        for module, name in ((vae.encoder, "forward"), (vae.prior, "forward"), (vae.prior, "kl_from_normal")):
            if hasattr(module, name):  # an instance attribute shadows the method for this VAE only
                method = getattr(module, name)
                setattr(module, name, lambda *a, _m=method, _n=(module is vae.prior, name): calls.append(_n) or _m(*a))
        for kl, validate in (("analytic", False), ("monte_carlo", False), ("analytic", True)):
            calls.clear()
            with pyro.validation_enabled(validate):
                fused_elbo_loss(vae, x, 2, kl)
            if (prior, guide) in FAST_PAIRS and kl == "analytic" and not validate:
                assert calls == [(True, "kl_from_normal")], (prior, guide, calls)
            else:
                assert (False, "forward") in calls and (True, "forward") in calls, (prior, guide, kl, validate, calls)
                assert (True, "kl_from_normal") not in calls, (prior, guide, kl, validate)


@pytest.mark.parametrize("guide", NORMAL_GUIDES)
def test_guide_loc_scale_is_its_distribution(guide):
    """A guide declaring ``loc_scale`` returns exactly ``Normal(*loc_scale(x)).to_event(1)`` from ``forward``,
    ``loc`` and ``scale`` of shape ``(batch, latent_dim)``: the fast path draws from the q Pyro would."""
    vae = build("normal", guide, "normal", latent_dim=3)
    x = data("normal")
    loc, scale = vae.encoder.loc_scale(x)
    q = vae.encoder(x)
    assert loc.shape == scale.shape == (BATCH, 3)
    assert isinstance(q, torch.distributions.Independent) and q.reinterpreted_batch_ndims == 1
    assert type(q.base_dist) is pyro.distributions.Normal
    assert torch.equal(q.base_dist.loc, loc) and torch.equal(q.base_dist.scale, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("prior", KL_PRIORS)
def test_prior_kl_from_normal_is_torchs_closed_form(prior, dtype):
    """``kl_from_normal(loc, scale)`` against the generic path's ``analytic_kl(q, p)`` (torch's registered
    ``kl_divergence`` on the base distributions, summed): the same value and gradients (for loc, scale and
    the prior's parameters) bit for bit; and against Pyro's own ``kl_divergence(q, p.expand(batch))`` to
    rounding. Every buffer and parameter is moved off its default, so the hook must read them."""
    from pyro.distributions.kl import kl_divergence

    from pyro_vae.inference.kl import analytic_kl

    torch.manual_seed(3)
    module = PRIORS.build(PRIORS.resolve({"name": prior}), 3).to(dtype)
    with torch.no_grad():
        for name, buffer in module.named_buffers():
            buffer.add_(torch.rand_like(buffer) * 0.5 if "scale" in name else torch.randn_like(buffer) * 0.5)
        for param in module.parameters():
            param.add_(0.3 * torch.randn_like(param))
    loc = torch.randn(BATCH, 3, dtype=dtype, requires_grad=True)
    scale = (torch.rand(BATCH, 3, dtype=dtype) + 0.1).requires_grad_()
    results = []
    for compute in (lambda: module.kl_from_normal(loc, scale),
                    lambda: analytic_kl(pyro.distributions.Normal(loc, scale).to_event(1), module())):
        for t in (loc, scale, *module.parameters()):
            t.grad = None
        with pyro.validation_enabled(False):
            value = compute()
        value.backward()
        results.append((value.detach(), [t.grad.clone() for t in (loc, scale, *module.parameters())]))
    (got, got_grads), (want, want_grads) = results
    assert got.shape == () and got.dtype == dtype
    assert torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(got_grads, want_grads))
    q = pyro.distributions.Normal(loc, scale).to_event(1)
    torch.testing.assert_close(got, kl_divergence(q, module().expand(q.batch_shape)).sum().detach())


FAST_CASES = [(p, g, {}) for p, g in FAST_PAIRS] + [(p, g, {"shared_trunk": False}) for p, g in FAST_PAIRS
                                                    if g == "mean_field"]


@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("prior,guide,options", FAST_CASES,
                         ids=[f"{p}-{g}" + "".join(f"-{k}={v}" for k, v in o.items()) for p, g, o in FAST_CASES])
def test_hook_path_is_the_generic_path_bit_for_bit_and_matches_pyro(monkeypatch, prior, guide, options, num_particles):
    """Each pair in FAST_PAIRS: the hook path (no q or p built) against the generic path through the
    distributions with the prior's hook switched off: identical loss, gradients and random stream; and the
    fused loss against Pyro's ``TraceMeanField_ELBO`` (the oracle) under beta = 0.7."""
    vae = build(prior, guide, "normal", latent_dim=3, guide_options={"hidden": [8], **options} if options else None)
    x = data("normal")
    assert declares_fast_path(vae.encoder, vae.prior)
    with pyro.validation_enabled(False):
        hook = loss_and_grads(vae, lambda: fused_elbo_loss(vae, x, num_particles, "analytic", 0.7), seed=9)
        monkeypatch.setattr(type(vae.prior), "kl_from_normal", None, raising=False)  # undeclared, for this test
        assert not declares_fast_path(vae.encoder, vae.prior)
        generic = loss_and_grads(vae, lambda: fused_elbo_loss(vae, x, num_particles, "analytic", 0.7), seed=9)
    assert torch.equal(hook[0], generic[0])
    assert hook[1].keys() == generic[1].keys()
    assert all(torch.equal(hook[1][n], generic[1][n]) for n in generic[1])
    assert torch.equal(hook[2], generic[2])
    monkeypatch.undo()  # the hook back: assert_matches_pyro's validation-off pass takes the hook path
    assert declares_fast_path(vae.encoder, vae.prior)
    assert_matches_pyro(vae, x, {"kl": "analytic", "num_particles": num_particles}, beta=0.7)
