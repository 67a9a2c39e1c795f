"""cluster.yaml and the on-premise example pass Ray's own cluster-config validation (the JSON
schema shipped inside the Ray wheel, after the launcher fills in its defaults)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _validate(raw: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


@pytest.mark.parametrize("path", ["cluster.yaml", "docs/cluster-local.yaml"])
def test_cluster_configs_pass_rays_validation(path):
    raw = yaml.safe_load((ROOT / path).read_text())
    config = _validate(raw)
    text = (ROOT / path).read_text()
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start, "the dashboard stays private"
    assert "RAY_AUTH_MODE" not in text, "no switch that turns token authentication off"
    for word in ("aws_access_key_id", "aws_secret_access_key", "password", "token:"):
        assert word not in text.lower()
    assert any("pip install -e" in c for c in config["setup_commands"]), "nodes install this project"


def test_aws_cluster_has_a_gpu_free_head_and_autoscaling_gpu_workers():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert raw["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["node_config"]["InstanceType"].startswith("m")
    worker = types["gpu_worker"]
    assert worker["min_workers"] == 0 < worker["max_workers"]
    assert worker["node_config"]["InstanceType"].startswith("g")


def test_the_validation_catches_a_broken_config():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    raw["available_node_types"]["gpu_worker"]["min_wokers"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_wokers"):
        _validate(raw)


# ---- one source for the setup and start commands; the smoke run's config ---------------------------

SHARED = ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands")


def test_aws_and_local_configs_share_their_setup_and_start_commands():
    """What `reprlab cluster smoke` proves with the local config holds for the AWS one: the
    commands are the same lines (a drift in either file fails here)."""
    aws = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    local = yaml.safe_load((ROOT / "docs/cluster-local.yaml").read_text())
    for key in SHARED:
        assert aws[key] == local[key], key
    assert any("reprlab-venv/bin/pip install -e ~/reprlab" in c for c in aws["setup_commands"])
    assert aws["file_mounts"] == {"/home/ray/reprlab": "."}  # ~/reprlab of the container's user ray
    assert local["file_mounts"] == {"/home/reprlab/reprlab": "."}  # ~/reprlab of ssh_user reprlab
    assert local["auth"]["ssh_user"] == "reprlab"


def test_the_smoke_config_is_the_local_one_on_127_0_0_1_with_its_commands_untouched(tmp_path):
    from reprlab.cluster.smoke import BROKEN_COMMAND, derive_config

    local = yaml.safe_load((ROOT / "docs/cluster-local.yaml").read_text())
    raw = derive_config(local, "smoke-user", tmp_path / "key", tmp_path / "home", "reprlab-smoke-1")
    config = _validate(raw)
    assert config["provider"]["head_ip"] == "127.0.0.1" and config["provider"]["worker_ips"] == []
    assert config["auth"] == {"ssh_user": "smoke-user", "ssh_private_key": str(tmp_path / "key")}
    assert raw["file_mounts"] == {str(tmp_path / "home" / "reprlab"): str(ROOT)}  # the default source
    for key in SHARED:
        assert raw[key] == local[key], key
    broken = derive_config(local, "u", tmp_path / "key", tmp_path / "home", "c", break_setup=True)
    assert broken["setup_commands"] == [local["setup_commands"][0], BROKEN_COMMAND, *local["setup_commands"][1:]]


def test_a_failed_ray_up_is_named_by_its_phase_and_command():
    """The launcher's log (colour codes and all, as `ray up` writes it) is read back into one line."""
    from reprlab.cluster.smoke import _launcher_failure

    log = "\n".join([
        "2026-12-01 18:38:07,127\tINFO updater.py:283 -- \x1b[2m[1/7]\x1b[22m \x1b[36mWaiting for SSH to become available\x1b[39m",
        "2026-12-01 18:38:13,996\tINFO updater.py:469 -- \x1b[2m[6/7]\x1b[22m \x1b[36mRunning setup commands\x1b[39m",
        "2026-12-01 18:38:13,996\tINFO updater.py:490 -- \x1b[2m(0/5)\x1b[22m \x1b[1mpython3 -m venv x\x1b[22m\x1b[26m",
        "2026-12-01 18:38:25,954\tINFO updater.py:490 -- \x1b[2m(1/5)\x1b[22m \x1b[1mbroken-command\x1b[22m\x1b[26m",
        "bash: broken-command: command not found",
        "Error: Failed to setup head node.",
    ])
    line = _launcher_failure(log)
    assert "phase 6/7 'Running setup commands'" in line
    assert "command 2 of 5: broken-command" in line and "Failed to setup head node" in line
    early = _launcher_failure("2026-12-01 INFO updater.py:283 -- [1/7] Waiting for SSH to become available\nError: x")
    assert "phase 1/7 'Waiting for SSH to become available'" in early and "command" not in early


def test_the_smoke_run_says_it_needs_root(monkeypatch, capsys):
    from reprlab.cli import main

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["cluster", "smoke", "--skip-unless-root"]) == 0
    assert capsys.readouterr().out.startswith("[smoke] skipped: not root")
    assert main(["cluster", "smoke", "--workdir", "/nonexistent/never-made"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["reprlab: error: cluster smoke: step 'prerequisites' failed: needs root: it creates a throwaway "
                   "user and starts sshd on 127.0.0.1:22 (Ray's SSH has no port option)"]
    assert not Path("/nonexistent/never-made").exists()


def _port_22_free() -> bool:
    from reprlab.cluster.smoke import _port_free

    return _port_free(22)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None, reason="needs root (a throwaway user, sshd)")
def test_the_smoke_run_stops_at_a_broken_setup_command_names_it_and_cleans_up(request, capsys):
    """`ray up` for real over SSH on 127.0.0.1 (the launcher, the file mount, the first setup
    command) until the command inserted on purpose fails: the step and the command are named, the
    log is kept, the user and the SSH server are gone."""
    if not _port_22_free():
        pytest.skip("port 22 is taken on this machine")
    from reprlab.cli import main

    work = Path(tempfile.mkdtemp(prefix="reprlab-smoke-test-"))  # pytest's tmp_path is closed to other users
    request.addfinalizer(lambda: shutil.rmtree(work, ignore_errors=True))
    assert main(["cluster", "smoke", "--break-setup", "--workdir", str(work)]) == 2
    captured = capsys.readouterr()
    if "step 'prerequisites' failed: `apt-get install" in captured.err:  # no Debian mirror reachable
        pytest.skip(captured.err.strip().splitlines()[-1])
    assert "[smoke] 3/4 config: ok" in captured.out
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith("reprlab: error: cluster smoke: step 'ray up' failed: ray up: phase 6/7 "
                            "'Running setup commands', command 2 of 5: reprlab-smoke-broken-on-purpose")
    log = work / "logs" / "ray_up.log"
    assert f"(log kept: {log})" in error and "command not found" in log.read_text()
    assert not (work / "home").exists()
    user = f"reprlab-smoke-{os.getpid()}"
    assert subprocess.run(["id", user], capture_output=True).returncode != 0, "the throwaway user is removed"
    assert subprocess.run(["pgrep", "-f", str(work / "sshd_config")], capture_output=True).returncode != 0
    assert _port_22_free()
