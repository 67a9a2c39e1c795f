"""``reprlab train | tune | config | data | methods | bench``: the command line.

Every user mistake ends as one line ``reprlab: error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from pathlib import Path

from reprlab.platform.core.errors import ConfigError, ReprlabError

DEFAULT_PRESET = "margin/glyphs"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help=f"YAML file or preset name (default: {DEFAULT_PRESET})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set method.beta=0.6 (repeatable)")


def cmd_train(args: argparse.Namespace) -> int:
    from reprlab.platform.run.driver import run_training
    from reprlab.platform.core.storage import check_writable, resolve

    from reprlab.platform.run.guard import check_output_path

    output = resolve(args.output)  # a local or mounted directory, or s3://bucket/prefix?options
    check_output_path(args.output, output)
    source = args.config
    if source is None:
        if args.resume:
            check_writable(output)
        stored = output / "config.yaml"
        source = stored if args.resume and stored.is_file() else DEFAULT_PRESET
    cfg = _load_train_config(source, args.overrides)
    print(f"[reprlab] {cfg.method.name} on {cfg.data.name}: {cfg.train.epochs} epochs, "
          f"{cfg.scaling.num_workers} worker(s), output {output}", flush=True)
    try:
        summary = run_training(cfg, output, resume=args.resume)
    except KeyboardInterrupt as exc:
        raise _interrupted(exc, output, f"reprlab train --output {shlex.quote(str(output.uri))} --resume") from None
    print(f"[reprlab] wrote {output / 'summary.json'} and {output / 'metrics.parquet'}")
    if summary.get("status", "completed") != "completed":
        print(f"reprlab: error: training {summary['status']}: {summary['status_reason']}; the run is kept in "
              f"{output} (summary.json says status {summary['status']})", file=sys.stderr)
        return 3
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that every ``finally`` runs."""


_RECEIVED: list[str] = []  # the signal that interrupted this command (Ray may re-raise it as a KeyboardInterrupt)


def _on_sigterm(signum, frame):
    _RECEIVED.append("SIGTERM")
    raise _Terminated()


def _signal_name(exc: BaseException) -> str:
    return "SIGTERM" if isinstance(exc, _Terminated) or "SIGTERM" in _RECEIVED else "SIGINT"


def _interrupted(exc: BaseException, output, resume_cmd: str):
    """One line for an interrupted train/tune: what the directory keeps and how to continue."""
    from reprlab.platform.core.errors import Interrupted
    from reprlab.platform.run.guard import kept_summary

    _stop_ray()
    sig = _signal_name(exc)
    kept, resumable = kept_summary(output)
    err = Interrupted(f"interrupted ({sig}): {kept}; " + (f"continue with: {resume_cmd}" if resumable else
                                                            "nothing to resume: run the same command again"))
    err.exit_code = 143 if sig == "SIGTERM" else 130
    return err


def _stop_ray() -> None:
    """Stop the workers now (a local cluster this process started goes with it)."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:
        pass


def _load_train_config(source, overrides: list[str]):
    """``load_config`` of a preset, a local YAML, or a YAML in object storage (an s3:// URI, or
    the stored config.yaml of a run there), read through a temporary local copy."""
    import tempfile

    from reprlab.platform.core.config import load_config
    from reprlab.platform.core.errors import ConfigError
    from reprlab.platform.core.storage import Location, is_uri, resolve

    if not (isinstance(source, Location) or is_uri(source)):
        return load_config(source, overrides)
    loc = resolve(source, what="config")
    if loc.is_local:
        return load_config(loc.local_path, overrides)
    try:
        text = loc.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config: {loc}: no such file") from None
    with tempfile.TemporaryDirectory(prefix="reprlab-config-") as tmp:
        copy = Path(tmp) / loc.name
        copy.write_text(text)
        return load_config(copy, overrides)


def cmd_tune(args: argparse.Namespace) -> int:
    from reprlab.platform.tune.sweep import load_sweep, run_sweep

    from reprlab.platform.core.storage import resolve
    from reprlab.platform.run.guard import check_output_path

    if args.output is not None:
        check_output_path(args.output, resolve(args.output) if args.output.strip() else None)
    sweep = load_sweep(args.sweep, args.overrides)  # every mistake surfaces here, before Ray starts
    if args.trials is not None:
        sweep.spec.trials = args.trials
    output = args.output or f"runs/tune/{sweep.spec.name}"  # a path or an s3:// URI (storage.py)
    check_output_path(None, resolve(output))
    try:
        summary = run_sweep(sweep, output, resume=args.resume)
    except KeyboardInterrupt as exc:
        again = " ".join(shlex.quote(a) for a in [args.sweep, *(x for o in args.overrides for x in ("--set", o))])
        raise _interrupted(exc, resolve(output), f"reprlab tune {again} --output {shlex.quote(resolve(output).uri)} "
                                                 f"--resume") from None
    for trial, line in summary["errors"].items():
        print(f"reprlab: trial {trial} failed: {line}", file=sys.stderr)
    if "best_trial" not in summary:
        print("reprlab: error: tune: no trial completed an epoch", file=sys.stderr)
        return 1
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from reprlab.platform.core.config import load_config

    cfg = load_config(args.config or DEFAULT_PRESET, args.overrides)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from reprlab.cluster.smoke import main as smoke

    return smoke(args.full, args.keep, args.workdir, args.break_setup, args.skip_unless_root)


def cmd_data(args: argparse.Namespace) -> int:
    from reprlab.platform.core.config import load_config
    from reprlab.platform.data import data_root, load_benchmark
    from reprlab.platform.data.catalog import get_dataset

    if args.action == "list":
        from reprlab.platform.core.registry import DATASETS

        for name, spec in DATASETS.items():
            print(f"{name:<16} [{', '.join(sorted(spec.provides))}] {spec.description}")
        return 0
    if not args.name:
        raise ConfigError(f"data {args.action}: name a data set (reprlab data list)")
    overrides = [f"data.name={args.name}"] + ([f"data.root={args.root}"] if args.root else [])
    cfg = load_config(None, overrides).data
    spec = get_dataset(cfg.name)
    if args.action == "pack":
        return _pack(args, cfg)
    if args.action == "download":
        from reprlab.platform.data.download import download_dataset

        print(download_dataset(cfg.name, data_root(cfg)))
        return 0
    if args.action == "build" and "build" in spec.extra:  # cached sets: (re)build the cache
        print(spec.extra["build"](cfg, data_root(cfg), args.force))
    if "info" in spec.extra:
        print(json.dumps(spec.extra["info"](cfg, data_root(cfg)), indent=2, default=str))
        return 0
    bench = load_benchmark(cfg)
    splits = {"train": bench.train, "test": bench.test, "query": bench.query, "gallery": bench.gallery}
    info = {
        split: {"images": len(s), **({"classes": len(s.classes())} if s.labels is not None else {})}
        for split, s in splits.items() if s is not None
    }
    root = data_root(cfg)
    print(json.dumps({"name": cfg.name, "root": None if root is None else str(root),
                      "provides": sorted(spec.provides), **info}, indent=2))
    return 0


def _pack(args: argparse.Namespace, cfg) -> int:
    from reprlab.platform.data import load_benchmark
    from reprlab.platform.data.shards import pack
    from reprlab.platform.core.errors import ConfigError

    if not args.out:
        raise ConfigError("data pack: --out is required (a directory or s3://bucket/prefix for the shards)")
    manifest = pack(load_benchmark(cfg), args.out, images_per_shard=args.images_per_shard,
                    rows_per_group=args.rows_per_group, short_side=args.short_side, quality=args.quality,
                    encoding=args.encoding, force=args.force, progress=print)
    info = {s: {k: v for k, v in d.items() if k != "files"} | {"shards": len(d["files"]),
                "bytes": sum(f["bytes"] for f in d["files"])} for s, d in manifest["splits"].items()}
    print(json.dumps({"dataset": manifest["dataset"], "out": args.out, "seconds": manifest["seconds"], **info},
                     indent=2))
    print(f"[reprlab] train from it with --set data.name={manifest['dataset']} --set data.shards={args.out}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from reprlab.platform.core.registry import METHODS

    for name, cls in METHODS.items():
        print(f"{name:<16} {cls.description}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "methods":
        return _bench_methods(args)
    if args.what == "faults":
        return _bench_faults(args)
    if args.what == "train":
        from reprlab.bench.train_bench import bench_train, format_train_bench

        result = bench_train(args.config or DEFAULT_PRESET, args.overrides, iterations=args.iterations,
                             warmup=args.warmup, rounds=args.rounds, threads=args.threads)
        print(format_train_bench(result))
    elif args.what == "overhead":
        import time

        from reprlab.bench.overhead_bench import bench_overhead, format_overhead_bench

        output = Path(args.output or time.strftime("runs/bench-overhead-%Y%m%d-%H%M%S"))
        if args.tracker:  # one run per experiment tracker, against one without (docs/TRACKING.md)
            from reprlab.bench.overhead_bench import bench_tracking_overhead, format_tracking_bench

            result = bench_tracking_overhead(args.config or DEFAULT_PRESET, args.overrides, output, args.tracker,
                                             epochs=args.epochs)
            print(format_tracking_bench(result))
            return 0
        result = bench_overhead(args.config or DEFAULT_PRESET, args.overrides, output, epochs=args.epochs)
        print(format_overhead_bench(result))
    elif args.what == "gather":
        from reprlab.bench.gather_bench import bench_gather, format_gather_bench

        print(format_gather_bench(bench_gather(args.rows, args.dim), args.rows, args.dim))
    elif args.what == "data":
        from reprlab.bench.data_bench import bench_data, format_data_bench

        result = bench_data(args.root, args.output, classes=args.classes, per_class=args.per_class,
                            image_size=args.image_size, batches=args.batches, workers=args.workers,
                            rounds=args.rounds, short_side=args.short_side, seed=args.seed)
        print(format_data_bench(result))
    elif args.what == "eval":
        from reprlab.bench.eval_bench import bench_eval, format_eval_bench

        result = bench_eval(n=args.n, dim=args.dim, classes=args.classes, seed=args.seed)
        print(format_eval_bench(result))
    else:
        from reprlab.bench.loss_bench import bench_loss, format_loss_bench

        if args.classes_per_batch < 2 or args.batch % args.classes_per_batch or args.batch < 2 * args.classes_per_batch:
            raise ConfigError(f"bench loss: --batch {args.batch} must be a multiple of --classes-per-batch "
                              f"{args.classes_per_batch} (at least 2) with at least 2 images per class")

        result = bench_loss(batch=args.batch, dim=args.dim, classes_per_batch=args.classes_per_batch,
                            repeats=args.repeats, seed=args.seed)
        print(format_loss_bench(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
    return 0


def _bench_methods(args: argparse.Namespace) -> int:
    from reprlab.bench import methods_bench as mb
    from reprlab.platform.core.errors import ConfigError

    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ConfigError(f"bench methods: --seeds {args.seeds!r}: expected integers separated by commas") from None
    comparison = mb.load_comparison(args.comparison)
    if args.variant:  # variants given on the command line, reported with the comparison file's metrics
        comparison = mb.Comparison(mb.chosen_variants(args.variant, comparison.variants), comparison.metrics,
                                   comparison.deltas, comparison.plot)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    rows = mb.run_comparison(comparison.variants, seeds, output, args.overrides, rerun=args.rerun_stale,
                             metrics=comparison.collected)
    table = mb.format_table(mb.aggregate(rows, comparison.metrics), comparison.metrics, comparison.deltas)
    selections = sorted({r["selection"] for r in rows if r["selection"]})
    print(f"test metrics at the epoch chosen by {' / '.join(selections) or 'each run'}, "
          f"mean +- std over seeds {args.seeds}:")
    print(table)
    (output / "table.md").write_text(table + "\n")
    print(f"[reprlab] wrote {mb.write_results(rows, output)} and {output / 'table.md'}")
    if comparison.plot is not None:
        print(f"[reprlab] wrote {mb.write_plot(rows, comparison.plot, output)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=float))
    return 0


def _bench_faults(args: argparse.Namespace) -> int:
    import time

    from reprlab.bench import fault_bench as fb

    output = Path(args.output or time.strftime("runs/bench-faults-%Y%m%d-%H%M%S"))
    result = fb.bench_faults(args.config or DEFAULT_PRESET, args.overrides, output, epochs=args.epochs,
                             kill_after_epoch=args.kill_after_epoch, control=args.control,
                             warmup=not args.no_warmup)
    print(fb.format_fault_bench(result))
    print("[reprlab] wrote {} and {}".format(*fb.write_results(result, output)))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reprlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one experiment on Ray Train")
    _add_config_args(p)
    p.add_argument("--output", default="runs/latest",
                   help="run directory or object storage, e.g. s3://bucket/runs/x (default: runs/latest)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--verbose", action="store_true", help="also show Ray's own log lines and warnings")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="hyperparameter sweep on Ray Tune (Optuna / random / grid, ASHA)")
    p.add_argument("sweep", help="sweep file, e.g. tune_configs/divide_conquer_k_glyphs.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the base experiment (repeatable)")
    p.add_argument("--output", help="sweep directory or s3://bucket/prefix (default: runs/tune/<sweep name>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --output")
    p.add_argument("--trials", type=int, help="number of trials, instead of the sweep file's trials")
    p.add_argument("--verbose", action="store_true", help="also show Ray's own log lines, warnings and Tune's tables")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("config", help="print the resolved config (after presets and --set)")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("data", help="build, describe, download or pack a data set into Parquet shards")
    p.add_argument("action", choices=["list", "build", "info", "download", "pack"])
    p.add_argument("name", nargs="?", help="a registered data set (reprlab data list)")
    p.add_argument("--root", help="data directory (glyphs: cache directory)")
    p.add_argument("--force", action="store_true", help="rebuild even if cached (glyphs); pack: replace a shard set")
    p.add_argument("--out", help="pack: where the shards go (a directory or s3://bucket/prefix)")
    p.add_argument("--short-side", type=int, help="pack: downscale images whose shorter side is longer (JPEG)")
    p.add_argument("--quality", type=int, default=90, help="pack: JPEG quality of downscaled images (default: 90)")
    p.add_argument("--encoding", choices=["source", "raw"], default="source",
                   help="pack: store the images' own bytes (default) or decoded pixels (larger, no decoding)")
    p.add_argument("--images-per-shard", type=int, default=2000, help="pack: images per Parquet file (default: 2000)")
    p.add_argument("--rows-per-group", type=int, default=32, help="pack: rows per row group (default: 32)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("cluster", help="check the cluster launcher's config on this machine before paying for nodes")
    csub = p.add_subparsers(dest="action", required=True)
    c = csub.add_parser("smoke", help="ray up a local-provider cluster over SSH on 127.0.0.1, run and sweep on it, "
                                      "ray down (needs root; docs/cluster.md)")
    c.add_argument("--full", action="store_true",
                   help="give the head an empty venv: the setup commands install everything from the package index")
    c.add_argument("--keep", action="store_true", help="keep the work directory (config, logs) after a passing run")
    c.add_argument("--workdir", help="work directory (default: a new one under the temp directory)")
    c.add_argument("--break-setup", action="store_true",
                   help="insert a failing setup command: the run must stop at 'ray up' and name it")
    c.add_argument("--skip-unless-root", action="store_true",
                   help="exit 0 with one line when not root (make test on a machine without root)")
    p.set_defaults(func=cmd_cluster)
    p = sub.add_parser("methods", help="list the registered methods")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("bench", help="benchmarks, side by side with pytorch-metric-learning")
    bsub = p.add_subparsers(dest="what", required=True)
    b = bsub.add_parser("eval", help="evaluation time of N x D embeddings vs PML's AccuracyCalculator")
    b.add_argument("--n", type=int, default=60502)
    b.add_argument("--dim", type=int, default=128)
    b.add_argument("--classes", type=int, default=11316)
    b = bsub.add_parser("loss", help="margin loss + distance-weighted mining step vs PML")
    b.add_argument("--batch", type=int, default=112)
    b.add_argument("--dim", type=int, default=128)
    b.add_argument("--classes-per-batch", type=int, default=28)
    b.add_argument("--repeats", type=int, default=200)
    for b in list(bsub.choices.values()):
        b.add_argument("--seed", type=int, default=0)
    b = bsub.add_parser("methods", help="methods side by side over several seeds (default: the glyphs comparison)")
    b.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    b.add_argument("--variant", action="append", default=[], metavar="LABEL | LABEL=PRESET[,KEY=VALUE...]",
                   help="compare these instead of all the comparison's variants, reported with its metrics: "
                        "a label of the comparison's, or a new variant (repeatable; the first is the baseline)")
    b.add_argument("--comparison", default="glyphs",
                   help="variants from a comparison file or a shipped one (default: glyphs, reprlab/comparisons/)")
    b.add_argument("--output", default="runs/bench-methods",
                   help="where the runs go; finished runs made with the same config and code are reused")
    b.add_argument("--rerun-stale", action="store_true",
                   help="train again (keeping the old directory beside it) runs made with another config or code")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every run (repeatable)")
    b = bsub.add_parser("faults", help="cost of a worker failure and of per-epoch checkpoints (simulated 2-node cluster)")
    _add_config_args(b)
    b.add_argument("--epochs", type=int, default=6, help="epochs of each run (default: 6; wins over --set train.epochs)")
    b.add_argument("--kill-after-epoch", type=int, default=3,
                   help="kill a worker once the checkpoint of this epoch is registered (default: 3)")
    b.add_argument("--control", action="store_true", help="also run the same kill with scaling.max_failures=0")
    b.add_argument("--no-warmup", action="store_true", help="skip the one-iteration run that warms the cluster up")
    b.add_argument("--output", help="directory for the runs and faults.json/.md (default: runs/bench-faults-TIME)")
    b = bsub.add_parser("train", help="training images/s of the margin baseline vs PML's MetricLossOnly trainer")
    _add_config_args(b)
    b.add_argument("--iterations", type=int, default=60, help="timed iterations per side and round (default: 60)")
    b.add_argument("--warmup", type=int, default=10, help="untimed iterations before them (default: 10)")
    b.add_argument("--rounds", type=int, default=3, help="alternating rounds ours / PML (default: 3)")
    b.add_argument("--threads", type=int, help="torch threads for both (default: the config's workers x CPUs)")
    b = bsub.add_parser("gather", help="peak memory per rank of gathering evaluation features: every rank vs rank 0")
    b.add_argument("--rows", type=int, default=60_502, help="images (default: SOP's test split)")
    b.add_argument("--dim", type=int, default=2048, help="feature width (default: D&C's penultimate features)")
    b = bsub.add_parser("overhead", help="reprlab train: time to the first optimizer step, per-epoch platform overhead")
    _add_config_args(b)
    b.add_argument("--epochs", type=int, default=4, help="epochs of the run (default: 4)")
    b.add_argument("--output", help="where the run goes (default: runs/bench-overhead-TIME)")
    b.add_argument("--tracker", action="append", choices=["none", "tensorboard", "mlflow", "wandb"],
                   help="also time a run with this experiment tracker on (repeatable; each against a run without)")
    b = bsub.add_parser("data", help="data loading images/s: Parquet shards vs individual image files")
    b.add_argument("--root", help="a CUB-200-2011 directory (default: fabricate a CUB-like set in --output)")
    b.add_argument("--output", default="runs/bench-data", help="work directory: fabricated files, shards")
    b.add_argument("--classes", type=int, default=100, help="fabricated set: classes (default: 100)")
    b.add_argument("--per-class", type=int, default=30, help="fabricated set: images per class (default: 30)")
    b.add_argument("--image-size", type=int, default=224, help="crop size of the train transform (default: 224)")
    b.add_argument("--batches", type=int, default=24, help="timed batches per side and round (default: 24)")
    b.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default: 2)")
    b.add_argument("--rounds", type=int, default=3, help="rounds, the sides alternating (default: 3)")
    b.add_argument("--short-side", type=int, default=256, help="the downscaled shards' short side (default: 256)")
    b.add_argument("--seed", type=int, default=0)
    for b in bsub.choices.values():
        b.add_argument("--json", help="also write the result as JSON to this file")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "trials", None) is not None and args.trials < 1:
        print(f"reprlab: error: tune: --trials {args.trials}: expected at least 1", file=sys.stderr)
        return 2
    if args.command in ("train", "tune"):
        from reprlab.platform.core.log import set_verbose

        set_verbose(args.verbose)
        os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C ends a sweep like a run: our line
    previous = _install(signal.SIGTERM, _on_sigterm)
    try:
        return args.func(args)
    except ReprlabError as exc:
        from reprlab.platform.core.errors import Interrupted

        print(f"reprlab: {'' if isinstance(exc, Interrupted) else 'error: '}{exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        _stop_ray()
        print(f"reprlab: interrupted ({_signal_name(exc)})", file=sys.stderr)
        return 143 if _signal_name(exc) == "SIGTERM" else 130
    except OSError as exc:  # disk full, read-only, permission, a file where a directory is expected
        from reprlab.platform.run.guard import os_error_line

        print(f"reprlab: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as exc:
        print(f"reprlab: error: cannot decode a file as text ({exc.reason} at byte {exc.start})", file=sys.stderr)
        return 2
    finally:
        _install(signal.SIGTERM, previous)


def _install(signum, handler):
    """Set a signal handler where that is possible (the main thread); return the previous one."""
    try:
        return signal.signal(signum, handler)
    except (ValueError, TypeError):
        return None


if __name__ == "__main__":
    sys.exit(main())
