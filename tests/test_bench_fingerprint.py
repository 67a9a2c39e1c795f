"""``reprlab bench methods`` reuses a finished run only when its config and code are this run's."""

from __future__ import annotations

import json

import pytest

from reprlab.bench import methods_bench as mb
from reprlab.platform.core.errors import ConfigError


@pytest.fixture
def fake_training(monkeypatch):
    """run_training replaced by a stub that writes a summary and counts its calls."""
    calls = []

    def train(cfg, run_dir, resume=False):
        calls.append(run_dir)
        summary = {"selected_epoch": 1, "test": dict.fromkeys(mb.REPORTED, 0.5),
                   "initial": dict.fromkeys(mb.REPORTED, 0.1)}
        (run_dir / "config.yaml").write_text("x: 1\n")
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr("reprlab.platform.run.driver.run_training", train)
    return calls


def test_finished_runs_are_reused_only_with_the_same_config_and_code(fake_training, tmp_path, monkeypatch):
    # Catches: reuse by directory name alone (the bug: old numbers printed as new after a
    # change of config or of code), and a stale run deleted instead of kept beside the new one.
    variants = (mb.Variant("Margin", "margin/glyphs"),)
    mb.run_comparison(variants, [0], tmp_path)
    assert len(fake_training) == 1
    record = json.loads((tmp_path / "margin" / "seed0" / "bench.json").read_text())
    assert set(record) == {"config_sha256", "code", "wall_s"} and record["code"].startswith("0.1.0+src.")
    rows = mb.run_comparison(variants, [0], tmp_path)
    assert len(fake_training) == 1, "same config and code: reused"
    assert rows[0]["wall_s"] == record["wall_s"], "a reused run reports the wall time it recorded"

    with pytest.raises(ConfigError, match="another config.*--rerun-stale"):
        mb.run_comparison(variants, [0], tmp_path, ["optim.lr=0.001"])
    mb.run_comparison(variants, [0], tmp_path, ["optim.lr=0.001"], rerun=True)
    assert len(fake_training) == 2
    assert len(list((tmp_path / "margin").glob("seed0.stale-*"))) == 1

    monkeypatch.setattr(mb, "code_version", lambda: "0.1.0+src.0000000000000000")
    with pytest.raises(ConfigError, match="other code"):
        mb.run_comparison(variants, [0], tmp_path, ["optim.lr=0.001"])


def test_the_config_hash_covers_every_resolved_key():
    from reprlab.platform.core.config import load_config

    base = load_config("margin/glyphs", [])
    assert mb.config_hash(base) == mb.config_hash(load_config("margin/glyphs", []))
    assert mb.config_hash(base) != mb.config_hash(load_config("margin/glyphs", ["method.margin=0.3"]))


def test_a_comparison_file_names_the_metrics_its_table_reports(tmp_path, monkeypatch):
    # Catches: the table hard-wired to the retrieval metrics (an image method's comparison would
    # fail on a KeyError or print R@1 columns), a metric's scale or decimals ignored, and deltas
    # taken against another variant than the first.
    (tmp_path / "cmp.yaml").write_text(
        "metrics: [psnr, {key: ssim, digits: 3}, {key: l1, lower_is_better: true, scale: 100}]\n"
        "deltas: [psnr, l1]\n"
        "plot: {file: by_ev.png, metrics: [psnr, ev_0], x: [all, '0'], ylabel: dB}\n"
        "variants:\n"
        "  - {label: input, preset: margin/glyphs}\n"
        "  - {label: full, preset: margin/glyphs, overrides: [optim.lr=0.001]}\n")
    comparison = mb.load_comparison(str(tmp_path / "cmp.yaml"))
    assert [m.key for m in comparison.metrics] == ["psnr", "ssim", "l1"] and comparison.deltas == ("psnr", "l1")

    def train(cfg, run_dir, resume=False):
        full = cfg.optim.lr == 0.001
        test = {"psnr": 20.0 + 4 * full + cfg.experiment.seed, "ssim": 0.5 + 0.25 * full, "ev_0": 30.0 + full}
        if full:  # the input variant does not measure l1: its cell and the deltas to it are "-"
            test["l1"] = 0.08
        summary = {"selected_epoch": 3, "selection": "val/psnr", "test": test, "initial": test}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr("reprlab.platform.run.driver.run_training", train)
    rows = mb.run_comparison(comparison.variants, [0, 1], tmp_path / "out", metrics=comparison.collected)
    assert rows[0]["selection"] == "val/psnr" and rows[3]["test/ev_0"] == 31.0, "the plot's metrics are collected"
    assert mb.write_plot(rows, comparison.plot, tmp_path).read_bytes()[:4] == b"\x89PNG"
    table = mb.format_table(mb.aggregate(rows, comparison.metrics), comparison.metrics, comparison.deltas)
    lines = table.splitlines()
    assert lines[0] == "| method | seeds | psnr | ssim | l1 | dpsnr | dl1 (lower is better) | wall s/run |"
    assert lines[2].startswith("| input | 2 | 20.50 +- 0.71 | 0.500 +- 0.000 | - | +0.00 | - |")
    assert lines[3].startswith("| full | 2 | 24.50 +- 0.71 | 0.750 +- 0.000 | 8.00 +- 0.00 | +4.00 | - |")


def test_a_comparison_without_metrics_reports_retrieval_and_bad_metrics_are_one_line(tmp_path):
    glyphs = mb.load_comparison("glyphs")
    assert glyphs.metrics == mb.RETRIEVAL and glyphs.deltas == ("recall@1", "map@r")
    exposure = mb.load_comparison("exposure_photos")
    assert exposure.metrics[0].key == "psnr" and exposure.deltas == ("psnr", "psnr/under", "psnr/over")
    for name in ("pads_glyphs", "disentangle_sprites"):  # every shipped comparison loads
        assert mb.load_comparison(name).variants
    for text, what in [("metrics: []\n", "non-empty list"), ("metrics: [{label: x}]\n", "expected a summary key"),
                       ("metrics: [{key: psnr, colour: red}]\n", "unknown field 'colour'"),
                       ("metrics: [psnr]\ndeltas: [ssim]\n", "deltas"),
                       ("plot: {file: a.png, metrics: [psnr], x: [a, b]}\n", "plot: expected"),
                       ("lower_is_better: [psnr]\n", "unknown key 'lower_is_better'")]:
        path = tmp_path / "bad.yaml"
        path.write_text(text + "variants:\n  - {label: a, preset: margin/glyphs}\n")
        with pytest.raises(ConfigError, match=what):
            mb.load_comparison(str(path))
    path.write_text("variants:\n  - {label: plain (no KL, no MI), preset: margin/glyphs}\n")  # the comma splits the label
    with pytest.raises(ConfigError, match="variant 'plain \\(no KL': unknown key 'no MI\\)'"):
        mb.load_comparison(str(path))
