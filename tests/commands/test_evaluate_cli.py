"""``pyro-vae evaluate --ais --bdmc N --posterior hmc`` end to end, and its bad flag values: exit 2, one line,
evaluation.json untouched."""

import json

import pytest

from pyro_vae import load_config, train_run
from pyro_vae.cli import main

TINY = ["train.epochs=1", "guide.hidden=[16]"]
DIGITS = ["model.decoder.hidden=[16]"]
LINEAR = ["data.name=synthetic", "model.decoder.name=linear"]
REFERENCES = ["--ais", "--ais-steps", "3", "--ais-chains", "2", "--bdmc", "4", "--bdmc-steps", "2,4",
              "--posterior", "hmc", "--posterior-points", "2", "--posterior-samples", "20"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two one-epoch runs: the default model on the bundled digits, and a linear-Gaussian one (exact log p(x))."""
    root = tmp_path_factory.mktemp("runs")
    for name, extra in (("digits", DIGITS), ("linear", LINEAR)):
        train_run(load_config(None, TINY + extra), root / name, progress=False)
    return root


@pytest.mark.parametrize("name", ["digits", "linear"])
def test_evaluate_writes_and_prints_the_reference_sections(runs, name, capsys):
    run = runs / name
    assert main(["evaluate", str(run), "--samples", "20", "--no-progress", *REFERENCES]) == 0
    printed = capsys.readouterr().out
    out = json.loads((run / "evaluation.json").read_text())
    ais = out["ais"]
    assert {"mean", "se", "mc_se", "per_point", "steps", "chains", "leapfrog_steps", "initial", "accept", "ess",
            "seconds"} <= set(ais)
    assert (ais["steps"], ais["chains"], ais["leapfrog_steps"], ais["initial"]) == (3, 2, 10, "encoder")
    assert len(ais["per_point"]) == out["n"]
    assert [row["steps"] for row in out["bdmc"]["rows"]] == [2, 4] and out["bdmc"]["num_points"] == 4
    assert set(out["bdmc"]["rows"][0]) >= {"steps", "lower", "upper", "gap", "gap_se", "seconds"}
    post = out["posterior"]
    assert post["points"] == 2 and post["samples"] == 20 and post["warmup"] == 300
    assert {"r_hat_max", "n_eff_min", "divergences"} <= set(post["nuts"]) and len(post["per_point"]["khat"]) == 2
    assert "ais_minus_iwae" in out["paired"]
    lines = printed.splitlines()
    ais_row = next(line for line in lines if line.strip().startswith("ais "))
    assert "T = 3, 2 chains" in ais_row and "ais - iwae" in printed
    assert "BDMC on 4 points" in printed and "NUTS diagnostics" in printed and "PSIS k-hat" in printed
    if name == "linear":
        assert out["log_likelihood"]["exact"] and "exact_minus_ais" in out["paired"]
        assert out["posterior"]["exact"] is not None and out["bdmc"]["log_likelihood"] is not None
        assert "log p(x) - ais" in printed and "exact KL(q || p(z|x))" in printed and "HMC vs closed form" in printed
        assert "exact log p(x)" in next(line for line in lines if "BDMC on" in line)
    else:
        assert out["log_likelihood"] is None and out["posterior"]["exact"] is None
        assert out["kl_to_true_posterior"]["what"].startswith("estimate: ais - elbo")


def test_without_the_flags_the_sections_are_null(runs, capsys):
    run = runs / "digits"
    assert main(["evaluate", str(run), "--samples", "5", "--no-progress"]) == 0
    out = json.loads((run / "evaluation.json").read_text())
    assert out["ais"] is None and out["bdmc"] is None and out["posterior"] is None
    assert "ais -" not in capsys.readouterr().out


BAD_FLAGS = [
    (["--ais", "--ais-steps", "0"], "--ais-steps 0: must be >= 1"),
    (["--ais", "--ais-chains", "-2"], "--ais-chains -2: must be >= 1"),
    (["--hmc-leapfrog", "0"], "--hmc-leapfrog 0: must be >= 1"),
    (["--bdmc", "-1"], "--bdmc -1: must be >= 0"),
    (["--bdmc", "4", "--bdmc-steps", "10,x"], "--bdmc-steps 10,x: expected comma-separated integers"),
    (["--bdmc", "4", "--bdmc-steps", "10,0"], "--bdmc-steps 10,0: every number of temperatures must be >= 1"),
    (["--posterior", "hmc", "--posterior-samples", "3"], "--posterior-samples 3: must be >= 4"),
    (["--posterior", "hmc", "--posterior-points", "0"], "--posterior-points 0: must be >= 1"),
    (["--posterior", "nuts"], "argument --posterior: invalid choice: 'nuts'"),
    (["--ais", "--ais-start", "middle"], "argument --ais-start: invalid choice: 'middle'"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flag_values_exit_2_with_one_line_and_leave_evaluation_json(runs, flags, message, capsys):
    path = runs / "digits" / "evaluation.json"
    path.write_text('{"precious": true}\n')
    try:
        code = main(["evaluate", str(runs / "digits"), "--no-progress", *flags])
    except SystemExit as exit:  # argparse's own errors (a choice not offered) exit from the parser
        code = exit.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("pyro-vae") and message in lines[0], err
    assert path.read_text() == '{"precious": true}\n'


def test_bad_settings_from_python_are_refused_before_anything_is_written(runs):
    from pyro_vae.errors import ConfigError
    from pyro_vae.runs.evaluate import evaluate_run

    path = runs / "digits" / "evaluation.json"
    path.write_text('{"precious": true}\n')
    for kwargs, match in (({"ais": {"steps": 0}}, "ais steps 0"), ({"bdmc": {"points": 4, "steps": ()}}, "bdmc steps"),
                          ({"posterior": {"method": "vi"}}, "posterior method"), ({"ais": {"stepz": 3}}, "stepz")):
        with pytest.raises(ConfigError, match=match):
            evaluate_run(runs / "digits", samples=5, **kwargs)
    assert path.read_text() == '{"precious": true}\n'
