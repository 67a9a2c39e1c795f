"""Run storage on object storage: a real S3-compatible server (moto's, on a free localhost port)
holds runs, checkpoints and sweeps written through pyarrow's S3 filesystem, by the driver and by
Ray workers in other processes (they get the URI, endpoint included)."""

from __future__ import annotations

import io
import socket

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from reprlab.cli import main
from reprlab.platform.core.config import load_config
from reprlab.platform.contract.context import Context
from reprlab.platform.core.errors import StorageError
from reprlab.platform.run.driver import run_training
from reprlab.platform.core.storage import resolve

BUCKET = "reprlab-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on localhost with one bucket; yields (filesystem, URI query)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    fs = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", access_key="testing",
                           secret_key="testing", allow_bucket_creation=True)
    fs.create_dir(BUCKET)
    yield fs, f"endpoint_override={host}:{port}&scheme=http"
    server.stop()


def _uri(s3, prefix: str) -> str:
    # Credentials in the URI, as every process (Ray workers too) must sign its requests: moto
    # stores an unsigned streaming upload of the AWS SDK with its chunk framing.
    return f"s3://testing:testing@{BUCKET}/{prefix}?{s3[1]}"


def _objects(s3, prefix: str) -> set[str]:
    infos = s3[0].get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
    return {i.path.removeprefix(f"{BUCKET}/{prefix}/") for i in infos if i.type == pafs.FileType.File}


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


# ---- the storage layer ---------------------------------------------------------------------------


def test_uris_resolve_to_a_filesystem_and_a_path(s3, tmp_path):
    loc = resolve(f"s3://key:secret@{BUCKET}/runs/a?{s3[1]}")
    assert loc.path == f"{BUCKET}/runs/a" and not loc.is_local
    assert str(loc) == f"s3://{BUCKET}/runs/a", "messages show neither credentials nor options"
    child = loc / "trials" / "t1"
    assert resolve(child.uri).path == f"{BUCKET}/runs/a/trials/t1"
    assert child.uri.endswith(f"?{s3[1]}") and "key:secret@" in child.uri, "another process reconnects the same way"
    local = resolve(tmp_path / "x" / ".." / "run")
    assert local.is_local and local.local_path == tmp_path / "run" and local.uri == str(tmp_path / "run")
    assert resolve(f"file://{tmp_path}/run").local_path == tmp_path / "run"


@pytest.mark.parametrize(("uri", "message"), [
    ("gs://bucket/run", "unsupported storage gs://"),
    ("s3:///run", "names no bucket"),
    ("s3://bucket/run?endpoint=localhost:1", "Unexpected query parameter"),
])
def test_bad_uris_are_one_line(uri, message):
    with pytest.raises(StorageError, match=message) as err:
        resolve(uri)
    assert "\n" not in str(err.value) and str(err.value).startswith("output: ")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_file_operations(s3, tmp_path, where):
    root = resolve(tmp_path / "root") if where == "local" else resolve(_uri(s3, "ops"))
    a = root / "sub" / "a.bin"
    assert not a.exists() and root.listdir() == [] and root.walk() == []
    a.write_bytes(b"one")
    a.write_bytes(b"two")  # replaced whole
    assert a.read_bytes() == b"two" and a.is_file() and (root / "sub").is_dir()
    log = root / "log.txt"
    log.append_text("1\n")
    log.append_text("2\n")
    assert log.read_text() == "1\n2\n"
    staged = tmp_path / "staged"
    (staged / "inner").mkdir(parents=True)
    (staged / "inner" / "b.txt").write_text("b")
    (staged / "c.txt").write_text("c")
    (root / "up").upload(staged)
    assert root.listdir() == ["log.txt", "sub", "up"]
    assert root.walk() == ["log.txt", "sub/a.bin", "up/c.txt", "up/inner/b.txt"]
    assert (root / "up" / "inner" / "b.txt").read_text() == "b"
    (root / "up").delete()
    a.delete()
    assert root.walk() == ["log.txt"] and not (root / "up").exists()
    with pytest.raises(FileNotFoundError):
        (root / "missing").read_bytes()
    if where == "s3":
        assert _objects(s3, "ops") == {"log.txt"}, "everything went to the bucket"
    else:
        assert not list(tmp_path.glob("root/**/.*.tmp")), "no temporary files left"


def test_write_artifact_goes_to_the_run_storage(s3):
    ctx = Context(None, None, torch.device("cpu"), rank=0, run_dir=resolve(_uri(s3, "artifacts")))
    ctx.write_artifact("plots/loss.png", b"\x89PNG")
    Context(None, None, torch.device("cpu"), rank=1, run_dir=resolve(_uri(s3, "artifacts"))).write_artifact(
        "other.png", b"x")  # only rank 0 writes
    assert _objects(s3, "artifacts") == {"plots/loss.png"}
    assert resolve(_uri(s3, "artifacts/plots/loss.png")).read_bytes() == b"\x89PNG"


def test_ray_checkpoint_in_the_bucket_falls_back_to_an_older_one(s3, monkeypatch, capsys):
    # What a worker of a resumed Ray Train run gets: Ray's newest checkpoint on Ray's S3
    # filesystem; it is truncated, so the store lists the older ones beside it in the bucket.
    import ray.train

    from reprlab.platform.run.loop import CheckpointStore

    run = resolve(_uri(s3, "rayckpt"))
    for epoch in (1, 2):
        buf = io.BytesIO()
        torch.save({"epoch": epoch, "method": {}, "history": []}, buf)
        data = buf.getvalue() if epoch == 1 else buf.getvalue()[:50]  # the newest is truncated
        (run / "ray" / "train" / f"epoch_{epoch:04d}" / "state.pt").write_bytes(data)
    newest = ray.train.Checkpoint(f"{BUCKET}/rayckpt/ray/train/epoch_0002", filesystem=run.fs)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: newest)
    state = CheckpointStore(run.uri, in_process=False, keep=2, rank=0).latest()
    assert state["epoch"] == 1
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"[reprlab] checkpoint: cannot read s3://{BUCKET}/rayckpt/ray/train/epoch_0002/state.pt")
    assert line.endswith("falling back to epoch_0001")


# ---- one-line errors before Ray starts ------------------------------------------------------------


@pytest.mark.parametrize(("output", "message"), [
    ("s3://{bucket}/run?endpoint_override=127.0.0.1:{closed}&scheme=http",
     "output: cannot reach s3://{bucket} at 127.0.0.1:"),
    ("s3://no-such-bucket/run?{query}", "bucket 'no-such-bucket' does not exist at 127.0.0.1:"),
    ("s3://{bucket}/run?region=us-east-1&endpoint=127.0.0.1", "Unexpected query parameter in S3 URI: 'endpoint'"),
    ("ftp://{bucket}/run", "unsupported storage ftp://"),
])
def test_unusable_storage_is_one_line_before_ray_starts(s3, tiny, monkeypatch, capsys, output, message):
    import reprlab.platform.run.driver as runner

    def never(*args, **kwargs):
        raise AssertionError("Ray must not start")

    monkeypatch.setattr(runner, "ensure_ray", never)
    monkeypatch.setattr(runner, "make_trainer", never)
    fill = {"bucket": BUCKET, "closed": _free_port(), "query": s3[1]}
    code = main(["train", "--output", output.format(**fill), *_sets(tiny + ["scaling.num_workers=2"])])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("reprlab: error: ") and message.format(**fill) in err
    assert _objects(s3, "run") == set(), "nothing written"


# ---- runs on object storage ------------------------------------------------------------------------


@pytest.mark.slow
def test_two_worker_run_on_s3_resumes_from_the_bucket(ray_session, s3, tiny, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # nothing may land in a local directory named after the URI
    uri = _uri(s3, "ddp")
    assert main(["train", "--output", uri, *_sets(tiny + ["scaling.num_workers=2", "train.epochs=1"])]) == 0
    objects = _objects(s3, "ddp")
    assert {"config.yaml", "metrics.parquet", "summary.json", "ray/train/epoch_0000/state.pt",
            "ray/train/epoch_0001/state.pt"} <= objects
    metrics = pq.read_table(f"{BUCKET}/ddp/metrics.parquet", filesystem=s3[0])
    assert metrics.column("epoch").to_pylist() == [0, 1]
    state = torch.load(io.BytesIO(resolve(_uri(s3, "ddp/ray/train/epoch_0001/state.pt")).read_bytes()),
                       weights_only=True)
    assert state["epoch"] == 1 and state["config"]["scaling"]["num_workers"] == 2
    assert "epoch 1/1" in capfd.readouterr().out

    # --resume with no config: the stored config.yaml comes from the bucket, one more epoch
    assert main(["train", "--output", uri, "--resume", "--set", "train.epochs=2"]) == 0
    printed = capfd.readouterr().out
    assert "resumed from the checkpoint of epoch 1" in printed
    assert "epoch 2/2" in printed and "epoch 1/2" not in printed and "epoch 0/2" not in printed, "no epoch repeated"
    rows = pq.read_table(f"{BUCKET}/ddp/metrics.parquet", filesystem=s3[0]).to_pylist()
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows[1]["train/loss"] == metrics.to_pylist()[1]["train/loss"]
    summary = yaml.safe_load(resolve(_uri(s3, "ddp/summary.json")).read_text())
    assert summary["epochs_completed"] == 2 and summary["config"]["train"]["epochs"] == 2
    assert "ray/train/epoch_0002/state.pt" in _objects(s3, "ddp")
    assert list(tmp_path.iterdir()) == [], "everything went to the bucket"


@pytest.mark.slow
def test_in_process_run_keeps_checkpoints_in_the_bucket_and_falls_back(s3, tiny, capfd):
    uri = _uri(s3, "local")
    common = tiny + ["scaling.num_workers=0"]
    run_training(load_config(None, common + ["train.epochs=3"]), uri)
    assert {"checkpoints/epoch_0002/state.pt", "checkpoints/epoch_0003/state.pt"} <= _objects(s3, "local")
    assert "checkpoints/epoch_0001/state.pt" not in _objects(s3, "local"), "checkpoint.keep=2 prunes"
    newest = resolve(_uri(s3, "local/checkpoints/epoch_0003/state.pt"))
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    capfd.readouterr()
    run_training(load_config(None, common + ["train.epochs=4"]), uri, resume=True)
    printed = capfd.readouterr().out
    line = next(l for l in printed.splitlines() if "cannot read" in l)
    assert f"s3://{BUCKET}/local/checkpoints/epoch_0003/state.pt" in line
    assert line.endswith("falling back to epoch_0002") and "resumed from the checkpoint of epoch 2" in printed
    assert pq.read_table(f"{BUCKET}/local/metrics.parquet", filesystem=s3[0]).column("epoch").to_pylist() == [
        0, 1, 2, 3, 4]
    # as locally, a run directory that holds a run is refused without --resume
    assert main(["train", "--output", uri, *_sets(common)]) == 2
    assert "already holds a run; pass --resume" in capfd.readouterr().err


@pytest.mark.slow
def test_sweep_on_s3_writes_trials_and_results_to_the_bucket(ray_session, s3, tiny, tmp_path, capsys):
    spec = {"name": "s3", "base": "margin/glyphs", "overrides": tiny + ["train.epochs=1"],
            "space": {"optim.lr": {"type": "categorical", "values": [1e-3, 3e-3]}},
            "searcher": {"name": "grid"}, "scheduler": {"name": "none"}, "trials": 1,
            "resources": {"workers": 0}}
    path = tmp_path / "s3.yaml"
    path.write_text(yaml.safe_dump(spec))
    uri = _uri(s3, "sweep")
    assert main(["tune", str(path), "--output", uri]) == 0
    objects = _objects(s3, "sweep")
    assert {"sweep.yaml", "trials.parquet", "best.yaml", "params.png", "sweep_summary.yaml"} <= objects
    rows = pq.read_table(f"{BUCKET}/sweep/trials.parquet", filesystem=s3[0]).to_pylist()
    trials = {r["trial"] for r in rows}
    assert len(trials) == 2 and all(r["status"] == "completed" for r in rows)
    for trial in trials:  # ordinary run directories in the bucket, with their checkpoints
        assert {"config.yaml", "metrics.parquet", "summary.json", "attempts.log",
                "checkpoints/epoch_0001/state.pt"} <= _objects(s3, f"sweep/trials/{trial}")
    assert any(o.startswith("tune/") for o in objects), "Tune's experiment state is in the bucket too"
    assert main(["tune", str(path), "--output", uri]) == 2
    assert "already holds a sweep; pass --resume" in capsys.readouterr().err
    # --resume restores Tune's state from the bucket: finished trials are not run again
    assert main(["tune", str(path), "--output", uri, "--resume"]) == 0
    for trial in trials:
        attempts = resolve(_uri(s3, f"sweep/trials/{trial}/attempts.log")).read_text().splitlines()
        assert len(attempts) == 1, f"finished trial {trial} ran again"
