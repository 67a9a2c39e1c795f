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
    assert set(record) == {"config_sha256", "code"} and record["code"].startswith("0.1.0+src.")
    mb.run_comparison(variants, [0], tmp_path)
    assert len(fake_training) == 1, "same config and code: reused"

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
