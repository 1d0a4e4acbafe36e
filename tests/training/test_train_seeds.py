"""`pyro-vae train --seeds N`: one run directory per seed, each the seed's own `pyro-vae train` run (stacked as
replicas where the config allows, else one after another), resumable one by one, failures reported per seed."""

import signal

import pytest
import torch

from pyro_vae import validate_config
from pyro_vae.cli import main
from pyro_vae.errors import RunDirError
from pyro_vae.runs.run import load_run, resume_run, train_run, train_seeds
from pyro_vae.training.guards import Interrupted
from pyro_vae.training.replicas import ReplicaTrainer

# 240 training rows (a seed's own split of 300) at B=32: 8 steps an epoch, the last one short
BASE = {"data": {"name": "synthetic", "x_dim": 6, "n": 300}, "model": {"decoder": {"hidden": [8]}},
        "guide": {"hidden": [8]}, "train": {"epochs": 3, "batch_size": 32, "stop": "epochs"}}
ARGS = ["--set", "data.name=synthetic", "--set", "data.x_dim=6", "--set", "data.n=300",
        "--set", "model.decoder.hidden=[8]", "--set", "guide.hidden=[8]", "--set", "train.epochs=2",
        "--set", "train.batch_size=32", "--set", "train.stop=epochs", "--no-progress"]
CLOSE = dict(rtol=1e-4, atol=1e-5)  # float rounding: batched products round apart from addmm at some shapes


def config(**sections):
    d = {**BASE}
    for section, keys in sections.items():
        d[section] = {**d.get(section, {}), **keys} if isinstance(keys, dict) else keys
    return validate_config(d)


def assert_same_parameters(a, b, exact=False):
    sa, sb = a.vae.state_dict(), b.vae.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        if exact:
            assert torch.equal(sa[name], sb[name]), name
        else:
            torch.testing.assert_close(sa[name], sb[name], **CLOSE, msg=name)


def test_each_seed_is_its_single_run(tmp_path, capsys):
    """Seeds 5 and 6 stacked: two run directories whose parameters, metrics and test ELBO are those of two
    single `train` runs with --set seed=5 and 6 (each with its own data split)."""
    cfg = config(seed=5)
    results = train_seeds(cfg, 2, tmp_path / "seeds", progress=False)
    assert "training seeds 5, 6 as 2 replicas stacked" in capsys.readouterr().out
    assert [(r.seed, r.path.name, r.stacked, r.failure) for r in results] == \
        [(5, "seed-5", True, None), (6, "seed-6", True, None)]
    for r in results:
        single = train_run(config(seed=r.seed), tmp_path / f"single{r.seed}", progress=False)
        got = load_run(r.path)
        assert got.config == single.config
        assert_same_parameters(got, single)
        assert r.run.summary["test_elbo"] == pytest.approx(single.summary["test_elbo"], rel=1e-4)
        assert r.run.summary["replicas"] == 2 and r.run.summary["epochs"] == single.summary["epochs"] == 3
        assert [m["val_elbo"] for m in got.metrics] == pytest.approx([m["val_elbo"] for m in single.metrics], rel=1e-5)
        assert (r.path / "plots" / "learning_curves.png").is_file()
        assert resume_run(r.path) is None  # finished: nothing to do


def test_an_interrupted_seed_resumes_alone(tmp_path, monkeypatch):
    """SIGINT after step 11 (mid-epoch 2): every seed has its checkpoint, the error says how to continue, and
    `pyro-vae resume` of one seed's directory ends where that seed's single run ends."""
    cfg = config(seed=0)
    step = ReplicaTrainer.step

    def stop_after(self, x, rows):
        out = step(self, x, rows)
        if self.replicas[0].step + 1 == 11:  # the loop counts this step once it returns
            self.signals.received = signal.SIGINT
        return out

    monkeypatch.setattr(ReplicaTrainer, "step", stop_after)
    with pytest.raises(Interrupted, match="continue each seed with pyro-vae resume: .*seed-0 .*seed-1") as err:
        train_seeds(cfg, 2, tmp_path / "seeds", progress=False)
    assert err.value.exit_code == 130
    monkeypatch.undo()
    resumed = resume_run(tmp_path / "seeds" / "seed-1", progress=False)
    single = train_run(config(seed=1), tmp_path / "single", progress=False)
    assert resumed.summary["epochs"] == 3 and len(resumed.metrics) == 3
    assert_same_parameters(resumed, single)
    assert resumed.summary["test_elbo"] == pytest.approx(single.summary["test_elbo"], rel=1e-4)


def test_cli_refuses_an_existing_out_first_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "runs"
    (out / "seed-0").mkdir(parents=True)
    (out / "seed-0" / "notes.txt").write_text("mine")
    assert main(["train", *ARGS, "--seeds", "2", "--out", str(out)]) == 2
    assert "directory exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == ["notes.txt", "seed-0"]  # nothing written
    (out / "mine.txt").write_text("x")
    assert main(["train", *ARGS, "--seeds", "2", "--out", str(out), "--overwrite"]) == 2
    assert "holds mine.txt, which is not a seed's run directory" in capsys.readouterr().err
    (out / "mine.txt").unlink()
    assert main(["train", *ARGS, "--seeds", "2", "--out", str(out), "--overwrite"]) == 0
    text = capsys.readouterr().out
    assert "test ELBO over 2 seeds:" in text and f"{out / 'seed-1'}" in text
    assert (out / "seed-0" / "notes.txt").read_text() == "mine" and (out / "seed-1" / "summary.json").is_file()
    with pytest.raises(RunDirError):
        load_run(out / "seed-2")


def test_unsupported_configs_train_one_after_another(tmp_path, capsys):
    """IWAE is not stacked: the seeds train one at a time (said once, with why), each its single run."""
    results = train_seeds(config(inference={"objective": "iwae", "num_particles": 2}), 2, tmp_path / "iwae",
                          progress=False)
    assert "training the seeds one after another (inference.objective=iwae" in capsys.readouterr().out
    assert [(r.seed, r.stacked, r.failure) for r in results] == [(0, False, None), (1, False, None)]
    assert load_run(results[1].path).config.seed == 1


def test_a_nonfinite_seed_fails_alone_and_exits_3(tmp_path, capsys, monkeypatch):
    """A NaN in seed 0's decoder once training starts (its step-0 checkpoint written): seed 0 is reported in the
    table with where it failed and keeps no summary, seed 1 finishes, and the exit status is 3."""
    fit = ReplicaTrainer.fit

    def poisoned(self):
        with torch.no_grad():
            self.replicas[0].vae.decoder.net[0].weight[0, 0] = float("nan")
        return fit(self)

    monkeypatch.setattr(ReplicaTrainer, "fit", poisoned)
    assert main(["train", *ARGS, "--seeds", "2", "--out", str(tmp_path / "nan")]) == 3
    out = capsys.readouterr().out
    assert "FAILED (non-finite)" in out and "replica 0 (seed 0) step 1 (epoch 1)" in out
    assert "1 of 2 seeds failed at a non-finite step: 0" in out
    assert (tmp_path / "nan" / "seed-1" / "summary.json").is_file()
    assert not (tmp_path / "nan" / "seed-0" / "summary.json").exists()
