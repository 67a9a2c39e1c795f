"""Sweeps: sweep files into Tune objects, a tiny sweep end to end, k-fold trials, and resume
after the driver is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from reprlab.cli import main
from reprlab.platform.core.config import load_config
from reprlab.platform.core.errors import ConfigError
from reprlab.platform.tune.sweep import (
    load_sweep,
    max_concurrent,
    param_space,
    scheduler,
    search_algorithm,
    trial_resources,
)

TUNE_CONFIGS = Path(__file__).resolve().parents[1] / "tune_configs"


def _write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def _tiny_sweep(tiny: list[str], **extra) -> dict:
    return {
        "name": "tiny", "base": "margin/glyphs", "overrides": tiny,
        "space": {"optim.lr": {"type": "logfloat", "low": 1e-4, "high": 1e-2}},
        "searcher": {"name": "optuna", "seed": 0}, "scheduler": {"name": "asha", "grace_period": 1},
        "trials": 3, "resources": {"workers": 0}, **extra,
    }


def test_shipped_sweeps_parse():
    names = {p.name for p in TUNE_CONFIGS.glob("*.yaml")}
    assert {"divide_conquer_k_glyphs.yaml", "mic_glyphs.yaml", "sharing_glyphs.yaml", "margin_glyphs.yaml"} <= names
    for path in TUNE_CONFIGS.glob("*.yaml"):
        if path.name.startswith("style_transfer"):  # its base is scored by a finished judge run or a classifier file
            with pytest.raises(ConfigError, match="method.judge: .*no such run directory|method.classifier: .*no such file"):
                load_sweep(path)
            continue
        load_sweep(path)


def test_sweep_file_parses_into_the_right_tune_objects(tmp_path):
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.search.sample import Categorical, Float, Integer

    spec = {
        "name": "all-kinds", "base": "margin/glyphs",
        "space": {
            "optim.lr": {"type": "logfloat", "low": 1e-4, "high": 1e-2},
            "method.beta": {"type": "float", "low": 0.6, "high": 1.2},
            "data.samples_per_class": {"type": "int", "low": 2, "high": 4},
            "optim.name": {"type": "categorical", "values": ["adam", "adamw"]},
        },
        "scheduler": {"name": "asha", "grace_period": 2, "reduction_factor": 3},
        "resources": {"workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 0.5},
    }
    sweep = load_sweep(_write(tmp_path / "s.yaml", spec))
    space = param_space(sweep.spec)
    assert isinstance(space["optim.lr"], Float) and type(space["optim.lr"].get_sampler()).__name__ == "_LogUniform"
    assert (space["optim.lr"].lower, space["optim.lr"].upper) == (1e-4, 1e-2)
    assert isinstance(space["method.beta"], Float) and type(space["method.beta"].get_sampler()).__name__ == "_Uniform"
    assert isinstance(space["data.samples_per_class"], Integer) and space["data.samples_per_class"].upper == 5
    assert isinstance(space["optim.name"], Categorical) and space["optim.name"].categories == ["adam", "adamw"]
    algo = search_algorithm(sweep.spec)
    from optuna.samplers import TPESampler

    assert isinstance(algo, OptunaSearch) and isinstance(algo._sampler, TPESampler)
    asha = scheduler(sweep.spec, epochs=10)
    assert isinstance(asha, ASHAScheduler)
    assert (asha._max_t, asha._reduction_factor, asha._time_attr) == (11, 3, "training_iteration")
    assert [milestone for milestone, _ in asha._brackets[0]._rungs] == [9, 3]  # reports: epochs 0..10
    assert trial_resources(sweep.spec) == {"CPU": 0.01}  # the trial drives; its workers hold the CPUs
    assert max_concurrent(sweep.spec, {"CPU": 16, "GPU": 4}) == 4  # 1 GPU per trial
    assert max_concurrent(sweep.spec, {"CPU": 3, "GPU": 8}) == 1  # 2 CPUs per trial

    grid = load_sweep(_write(tmp_path / "g.yaml", {
        "name": "grid", "base": "divide_conquer/glyphs", "searcher": {"name": "grid"}, "scheduler": {"name": "none"},
        "space": {"method.num_clusters": {"type": "grid", "values": [2, 4]}}}))
    assert param_space(grid.spec) == {"method.num_clusters": {"grid_search": [2, 4]}}
    assert isinstance(search_algorithm(grid.spec), BasicVariantGenerator) and scheduler(grid.spec, 10) is None
    assert trial_resources(grid.spec) == {"CPU": 1.0, "GPU": 0.0}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"serach": {}}, "sweep: s.yaml: serach: unknown key"),
        ({"space": {"optim.lr": {"type": "logfloat", "low": 0, "high": 1}}}, "space.optim.lr: type logfloat needs 'low' > 0"),
        ({"space": {"optim.lr": {"type": "float", "low": 1}}}, "type float needs 'low' < 'high'"),
        ({"space": {"method.bta": {"type": "float", "low": 0.5, "high": 1}}}, "space.method.bta: config: method.bta: unknown key"),
        ({"space": {"data.samples_per_class": {"type": "int", "low": 0, "high": 3}}}, "space.data.samples_per_class"),
        ({"space": {"method.num_clusters": {"type": "grid", "values": [2, 4]}}}, "type grid needs searcher grid"),
        ({"metric": "val/accuracy"}, "metric: margin reports no 'val/accuracy'"),  # a classifier's metric
        ({"metric": "accuracy"}, "metric: 'accuracy' is not val/<metric>"),
        ({"kfold": {"folds": 3}}, "ASHA cannot stop k-fold trials early"),
        ({"base": "nope/preset"}, "nope/preset: no such file or preset"),
        ({"overrides": ["optim.lr=-1"]}, "base: config: optim.lr"),
        ({"resources": {"workers": 3}}, "must be divisible by scaling.num_workers (3)"),
    ],
)
def test_bad_sweep_files_fail_with_one_line_before_ray_starts(tmp_path, capsys, change, message):
    spec = {"name": "s", "base": "margin/glyphs", "space": {"optim.lr": {"type": "logfloat", "low": 1e-4, "high": 1e-2}}}
    spec.update(change)
    path = _write(tmp_path / "s.yaml", spec)
    with pytest.raises(ConfigError, match=None) as err:
        load_sweep(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert main(["tune", str(path), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tiny_sweep_runs_to_completion_and_writes_table_and_best_config(ray_session, tiny, tmp_path, capsys):
    path = _write(tmp_path / "tiny.yaml", _tiny_sweep(tiny, trials=3))
    out = tmp_path / "sweep"
    assert main(["tune", str(path), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rank  trial" in printed and "trial-epochs" in printed
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    trials = {r["trial"] for r in rows}
    assert len(trials) == 3
    assert all(r["status"] in ("completed", "stopped early") for r in rows)
    assert {"param/optim.lr", "epoch", "val/map@r", "test/recall@1", "train/loss"} <= set(rows[-1])
    best = load_config(out / "best.yaml")  # a ready-to-run experiment
    best_lr = max((r for r in rows if r["epoch"] >= 1), key=lambda r: r["val/map@r"])["param/optim.lr"]
    assert best.optim.lr == pytest.approx(best_lr)
    assert (out / "params.png").stat().st_size > 1000
    for trial in trials:  # every trial is an ordinary run directory with its checkpoints
        assert (out / "trials" / trial / "metrics.parquet").is_file()
    assert main(["tune", str(path), "--output", str(out)]) == 2
    assert "already holds a sweep; pass --resume" in capsys.readouterr().err


@pytest.mark.slow
def test_kfold_trial_scores_the_mean_over_folds(ray_session, tiny, tmp_path):
    spec = _tiny_sweep(tiny + ["train.epochs=1"], trials=1, kfold={"folds": 2}, scheduler={"name": "none"})
    out = tmp_path / "kf"
    assert main(["tune", str(_write(tmp_path / "kf.yaml", spec)), "--output", str(out)]) == 0
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    trial = rows[0]["trial"]
    folds = [pq.read_table(out / "trials" / trial / f"fold{f}" / "metrics.parquet").to_pylist() for f in (0, 1)]
    for f in (0, 1):
        validation = load_config(out / "trials" / trial / f"fold{f}" / "config.yaml").data.validation
        assert (validation.protocol, validation.folds, validation.fold) == ("kfold", 2, f)
    for row in rows:
        e = int(row["epoch"])
        assert row["val/map@r"] == pytest.approx((folds[0][e]["val/map@r"] + folds[1][e]["val/map@r"]) / 2)
    assert folds[0][-1]["val/map@r"] != folds[1][-1]["val/map@r"], "different folds validate on different classes"


def _terminated_trials(exp_dir: Path) -> set[str]:
    """Trials Tune's saved experiment state marks TERMINATED."""
    import json

    states = sorted(exp_dir.glob("experiment_state-*.json"))
    if not states:
        return set()
    try:
        data = json.loads(states[-1].read_text())
    except ValueError:  # being written
        return set()
    trials = [json.loads(t) if isinstance(t, str) else t for t, _ in data["trial_data"]]
    return {t["trial_id"] for t in trials if t.get("status") == "TERMINATED"}


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_trials(tiny, tmp_path):
    # two trained epochs per trial are enough: a trial resumed from its checkpoint must still show
    # Tune every epoch, and three trials one at a time leave two to run when the driver is killed
    spec = _tiny_sweep(tiny + ["train.epochs=2"], trials=3, scheduler={"name": "none"},
                       resources={"workers": 0, "max_concurrent": 1})
    path = _write(tmp_path / "s.yaml", spec)
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "reprlab.cli", "tune", str(path), "--output", str(out)]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not _terminated_trials(out / "tune"):
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    driver.wait()
    finished = _terminated_trials(out / "tune")
    assert finished, "a trial finished before the kill"
    assert not (out / "trials.parquet").exists(), "killed before the sweep completed"
    subprocess.run(cmd + ["--resume"], check=True, capture_output=True, timeout=300)
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    trials = {r["trial"] for r in rows}
    assert len(trials) == 3 and all(r["status"] == "completed" for r in rows)
    for trial in finished:
        attempts = (out / "trials" / trial / "attempts.log").read_text().splitlines()
        assert len(attempts) == 1, f"finished trial {trial} ran again"
    for trial in trials:
        epochs = pq.read_table(out / "trials" / trial / "metrics.parquet").column("epoch").to_pylist()
        assert epochs == [0, 1, 2]
        assert sorted(int(r["epoch"]) for r in rows if r["trial"] == trial) == [0, 1, 2], "Tune saw every epoch"


def test_missing_data_fails_with_one_line_before_any_trial(tmp_path, capsys):
    spec = {"name": "s", "base": "margin/cub", "overrides": [f"data.root={tmp_path / 'no-cub'}"],
            "space": {"optim.lr": {"type": "logfloat", "low": 1e-6, "high": 1e-4}}}
    assert main(["tune", str(_write(tmp_path / "s.yaml", spec)), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reprlab: error: ") and "no-cub" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
