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
    lines = dict(line.split(maxsplit=1) for line in res.stdout.splitlines())
    assert {"divide_conquer", "margin", "mic", "sharing", "pads"} <= set(lines)
    assert "distance-weighted" in lines["margin"] and "gradient reversal" in lines["mic"]
    assert all(len(desc) > 20 for desc in lines.values()), "one line of description each"


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


def test_bench_methods_compares_variants_over_seeds_and_reuses_finished_runs(tiny, tmp_path, capsys):
    import pyarrow.parquet as pq

    out = tmp_path / "cmp"
    args = ["bench", "methods", "--seeds", "0,1", "--output", str(out),
            "--variant", "margin=margin/glyphs", "--variant", "D&C K=2=divide_conquer/glyphs,method.num_clusters=2",
            *[a for o in tiny + ["scaling.num_workers=0", "train.epochs=1"] for a in ("--set", o)]]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("bench methods:") == 4
    assert "| margin | 2 |" in printed and "| D&C K=2 | 2 |" in printed
    rows = pq.read_table(out / "methods.parquet").to_pylist()
    assert [(r["variant"], r["seed"]) for r in rows] == [("margin", 0), ("margin", 1), ("D&C K=2", 0), ("D&C K=2", 1)]
    assert all(0 < r["test/recall@1"] <= 1 for r in rows)
    assert (out / "d-c-k-2" / "seed1" / "summary.json").is_file()
    assert main(args) == 0  # finished runs are read back, not retrained
    again = capsys.readouterr().out
    assert "bench methods:" not in again and (out / "table.md").read_text().strip() in again


def test_bench_methods_bad_variant_is_one_line(capsys):
    assert main(["bench", "methods", "--variant", "no-preset-here"]) == 2
    assert capsys.readouterr().err.strip() == (
        "reprlab: error: bench methods: --variant 'no-preset-here': neither a label of the comparison "
        "(margin; D&C K=2; D&C K=4; D&C K=8; MIC; Sharing) nor LABEL=PRESET[,KEY=VALUE...]"
    )


def test_bench_methods_variant_chooses_a_comparison_label_with_commas_as_written():
    from reprlab.bench.methods_bench import chosen_variants, load_comparison

    offered = load_comparison("style_transfer_procedural").variants
    chosen = chosen_variants(["block, instance norm", "no block, LFN", "X=margin/glyphs,train.epochs=1"], offered)
    assert [v.label for v in chosen] == ["block, instance norm", "no block, LFN", "X"]
    assert chosen[0].overrides == ("method.norm=instance",) and chosen[1].overrides == ("method.ctb_blocks=0",)
    assert (chosen[2].preset, chosen[2].overrides) == ("margin/glyphs", ("train.epochs=1",))


def test_bench_methods_shipped_comparison_names_the_glyphs_presets(tmp_path, capsys):
    from reprlab.bench.methods_bench import load_comparison

    variants = load_comparison("glyphs").variants
    assert [v.label for v in variants] == ["margin", "D&C K=2", "D&C K=4", "D&C K=8", "MIC", "Sharing"]
    assert variants[2].overrides == ("method.num_clusters=4",)
    assert main(["bench", "methods", "--comparison", str(tmp_path / "none.yaml")]) == 2
    assert "--comparison" in capsys.readouterr().err


def test_every_shipped_comparison_loads_and_names_shipped_presets():
    """Catches an unquoted label with a comma (YAML reads it as two keys) in any shipped file."""
    from pathlib import Path

    import reprlab
    from reprlab.bench.methods_bench import load_comparison
    from reprlab.platform.core.config import preset_names

    names = sorted(p.stem for p in (Path(reprlab.__file__).parent / "comparisons").glob("*.yaml"))
    assert "style_transfer_procedural" in names
    for name in names:
        variants = load_comparison(name).variants
        assert variants and {v.preset for v in variants} <= set(preset_names()), name
        assert len({v.label for v in variants}) == len(variants), name


def test_train_asking_for_a_gpu_without_one_is_one_line_and_writes_nothing(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    rc = main(["train", "margin/glyphs", "--set", "scaling.num_workers=0", "--set", "scaling.use_gpu=true",
               "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists()
    assert err.splitlines() == [err] and "scaling.use_gpu is true" in err and "scaling.use_gpu=false" in err


def test_a_ray_run_waiting_for_gpus_the_cluster_lacks_says_so(ray_session, capsys):
    import ray

    from reprlab.platform.core.config import load_config
    from reprlab.platform.run.driver import wait_note_for_gpus

    need = int(ray.cluster_resources().get("GPU", 0)) + 1
    wait_note_for_gpus(load_config("margin/glyphs", [f"scaling.num_workers={need}", "scaling.use_gpu=true"]))
    assert f"waiting for {need} GPU(s)" in capsys.readouterr().out
    wait_note_for_gpus(load_config("margin/glyphs", ["scaling.use_gpu=false"]))  # CPU runs: nothing to say
    assert capsys.readouterr().out == ""
