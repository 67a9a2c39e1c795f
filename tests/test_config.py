import pytest

from reprlab.cli import main
from reprlab.platform.core.config import apply_overrides, load_config, parse_config, preset_names
from reprlab.platform.core.errors import ConfigError


def test_presets_parse():
    names = preset_names()
    assert {"margin/glyphs", "margin/cub", "margin/cars", "margin/sop"} <= set(names)
    for name in names:
        if name.startswith("iin/"):  # interprets a finished run (tests/test_iin.py parses them with one)
            with pytest.raises(ConfigError, match="method.first_stage: .*no such run directory"):
                load_config(name)
            continue
        if name.startswith("style_transfer/"):  # scored by a finished judge run or a user's classifier file
            with pytest.raises(ConfigError, match="method.judge: .*no such run directory|method.classifier: .*no such file"):
                load_config(name)
            continue
        load_config(name)
    cub = load_config("margin/cub")
    assert cub.model.backbone == "resnet50" and cub.data.global_batch == 112 and cub.optim.lr == 1e-5


def test_method_paper_presets_carry_the_published_settings():
    methods = {"divide_conquer", "mic", "sharing"}
    assert {f"{m}/{b}" for m in methods for b in ("glyphs", "cub", "cars", "sop")} <= set(preset_names())
    dc = load_config("divide_conquer/cub")
    # the authors' run scripts (issue 15): D&C's README command, MIC's Result_Runs.sh, PADS' SAMPLE_RUNS.sh
    assert (dc.method.num_clusters, dc.method.recluster_every, dc.method.conquer_epoch) == (8, 2, 190)
    assert dc.method.full_loss_epoch == 80 and not dc.method.learn_beta
    assert dc.data.global_batch == 80 and dc.optim.weight_decay == 1e-4 and dc.train.epochs == 200
    mic = [load_config(f"mic/{b}") for b in ("cub", "cars", "sop")]
    assert [c.method.num_clusters for c in mic] == [30, 150, 50]
    assert [c.method.adversarial_weight for c in mic] == [2500, 500, 250]
    assert [(c.train.epochs, c.optim.milestones) for c in mic] == [(100, [50]), (110, [60]), (45, [20, 35])]
    assert all(c.data.samples_per_class == 4 and c.data.global_batch == 112 for c in mic)
    assert mic[2].method.shared_prob == 0.5
    assert [load_config(f"sharing/{b}").method.adversarial_weight for b in ("cub", "cars")] == [2400, 900]
    pads = [load_config(f"pads/{b}") for b in ("cub", "cars", "sop")]
    assert [c.method.beta_lr for c in pads] == [0.001, 0.0005, 0.001]
    assert [c.optim.milestones for c in pads] == [[150], [140], [80]]
    assert [c.data.samples_per_class for c in pads] == [2, 4, 2]
    # the papers' protocol: the whole training split (PADS keeps the hold-out its reward needs)
    for m in ("margin", "divide_conquer", "mic", "sharing", "pads"):
        for b in ("cub", "cars", "sop"):
            assert load_config(f"{m}/{b}").data.validation.protocol == ("holdout" if m == "pads" else "none"), (m, b)


@pytest.mark.parametrize("name", ["divide_conquer", "mic", "sharing"])
def test_any_preset_switches_method_with_one_override(name):
    cfg = load_config("margin/glyphs", [f"method.name={name}", "method.beta=0.6"])
    assert cfg.method.name == name and cfg.method.beta == 0.6 and cfg.data.global_batch == 128


def test_dotted_overrides_are_typed():
    cfg = load_config("margin/glyphs", ["method.beta=0.6", "scaling.num_workers=0", "optim.milestones=[3, 5]",
                                        "data.validation.protocol=kfold"])
    assert cfg.method.beta == 0.6 and cfg.scaling.num_workers == 0
    assert cfg.optim.milestones == [3, 5] and cfg.data.validation.protocol == "kfold"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("method.bta=1", "method.bta: unknown key"),
        ("data.classes_per_batch=many", "data.classes_per_batch"),
        ("method.name=nope", "method.name: unknown method 'nope'"),
        ("optim.lr=-1", "optim.lr"),
        ("scaling.num_workers=3", "divisible by scaling.num_workers"),
        ("data.validation.fold=4", "fold must be < folds"),
        ("model.backbone=vgg", "model.backbone"),
        ("nosuch.key=1", "nosuch: unknown key"),
        ("novalue", "expected KEY=VALUE"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config("margin/glyphs", [override])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_section_set_as_value_is_refused():
    with pytest.raises(ConfigError, match="data.name is a value"):
        apply_overrides({"data": {"name": "glyphs"}}, ["data.name.x=1"])


def test_method_section_typed_by_registered_method():
    cfg = parse_config({"method": {"name": "margin", "beta": 0.6}})
    assert type(cfg.method).__name__ == "MarginConfig" and cfg.to_dict()["method"]["beta"] == 0.6


def test_cli_bad_config_exits_2_with_one_line(capsys, tmp_path):
    code = main(["train", "--set", "method.bta=1", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("reprlab: error: config: method.bta")
    assert not (tmp_path / "run").exists(), "nothing may be created before the config is valid"


def test_cli_missing_config_file(capsys, tmp_path):
    assert main(["config", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_bad_yaml(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    assert main(["config", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
