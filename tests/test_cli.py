"""The command line as a user meets it."""

import json
import shutil
import subprocess
import sys

import pytest

from reprlab.cli import main


def test_console_script_lists_methods():
    exe = shutil.which("reprlab") or str(__import__("pathlib").Path(sys.executable).with_name("reprlab"))
    res = subprocess.run([exe, "methods"], capture_output=True, text=True, check=True)
    assert res.stdout.startswith("margin") and "distance-weighted" in res.stdout


def test_config_prints_the_resolved_config(capsys):
    assert main(["config", "margin/cub", "--set", "model.embed_dim=512"]) == 0
    out = capsys.readouterr().out
    assert "embed_dim: 512" in out and "backbone: resnet50" in out


def test_data_info_glyphs(glyphs_root, capsys):
    assert main(["data", "info", "glyphs", "--root", str(glyphs_root)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["classes"] >= 150


def test_data_info_benchmark_reader(tmp_path, capsys):
    from test_readers import make_sop

    make_sop(tmp_path)
    assert main(["data", "info", "sop", "--root", str(tmp_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["train"]["images"] > 0 and info["test"]["classes"] > 0


def test_data_download_without_public_archive_is_one_line(tmp_path, capsys):
    assert main(["data", "download", "inshop", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reprlab: error:") and "\n" not in err


def test_bench_loss_matches_pml(tmp_path, capsys):
    pytest.importorskip("pytorch_metric_learning")
    out = tmp_path / "loss.json"
    assert main(["bench", "loss", "--repeats", "3", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["abs_diff"] < 1e-5 and result["ours_s"] > 0 and result["pml_s"] > 0
    assert "PML/ours" in capsys.readouterr().out
