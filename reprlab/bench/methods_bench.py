"""``reprlab bench methods``: methods side by side on one data set, several seeds each.

Every variant is a preset plus overrides; every (variant, seed) is an ordinary run directory
under the output, so an interrupted comparison picks up where it stopped (finished runs are read
back, unfinished ones resumed). Each run directory records its fingerprint (``bench.json``: the
hash of the resolved config and the code version); a run whose fingerprint differs from the one
now resolved (another config or another code) is never reused as it is: it is refused in one line,
or, with ``rerun=True`` (``--rerun-stale``), moved aside and trained again. The table reports the
test metrics of each run's summary (at the epoch its selection chose), mean and sample standard
deviation over the seeds, the differences of the means to the first variant, and the wall time.

A comparison file names its variants and, optionally, the metrics it reports (the retrieval
metrics R@1, NMI and MAP@R in percent by default)::

    metrics:                     # keys of the summary's "test" section
      - psnr                     # shown as it is, 2 decimals
      - {key: ssim, digits: 4}
      - {key: l1, lower_is_better: true}
      - {key: recall@1, label: R@1, scale: 100}
    deltas: [psnr]               # difference to the first variant (default: the first metric)
    plot:                        # optional: one line per variant over these metrics (mean over seeds)
      file: psnr_by_ev.png
      metrics: [psnr/ev_N1.5, psnr/ev_0, psnr/ev_P1.5]
      x: ["-1.5", "0", "+1.5"]
      ylabel: PSNR (dB)
    variants:
      - {label: input, preset: exposure/exposure_photos, overrides: [method.model=identity]}
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reprlab.platform.core.config import load_config
from reprlab.platform.core.errors import ConfigError



@dataclass(frozen=True)
class Metric:
    """One reported column: a key of the summary's test metrics, shown x ``scale`` with ``digits``
    decimals."""

    key: str
    label: str = ""
    scale: float = 1.0
    digits: int = 2
    lower_is_better: bool = False

    @property
    def name(self) -> str:
        return self.label or self.key


RETRIEVAL = (Metric("recall@1", "R@1", 100), Metric("nmi", "NMI", 100), Metric("map@r", "MAP@R", 100))
REPORTED = tuple(m.key for m in RETRIEVAL)  # the default metrics' keys


@dataclass(frozen=True)
class Variant:
    """``initial``: report the run's epoch-0 metrics (the untrained network) as its test metrics."""

    label: str
    preset: str
    overrides: tuple[str, ...] = field(default_factory=tuple)
    initial: bool = False

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.label.lower()).strip("-")


@dataclass(frozen=True)
class Plot:
    file: str
    metrics: tuple[str, ...]
    x: tuple[str, ...]
    ylabel: str = ""


@dataclass(frozen=True)
class Comparison:
    variants: tuple[Variant, ...]
    metrics: tuple[Metric, ...] = RETRIEVAL
    deltas: tuple[str, ...] = ("recall@1", "map@r")
    plot: Plot | None = None

    @property
    def collected(self) -> tuple[Metric, ...]:
        """The reported metrics and the plot's (each run's row holds all of them)."""
        extra = tuple(Metric(k) for k in (self.plot.metrics if self.plot else ()) if k not in {m.key for m in self.metrics})
        return self.metrics + extra


def _plot(entry: Any, source: str) -> Plot:
    try:
        plot = Plot(str(entry["file"]), tuple(map(str, entry["metrics"])),
                    tuple(map(str, entry.get("x", entry["metrics"]))), str(entry.get("ylabel", "")))
    except (KeyError, TypeError):
        plot = None
    if plot is None or not plot.file.endswith(".png") or len(plot.x) != len(plot.metrics) or not plot.metrics:
        raise ConfigError(f"bench methods: --comparison {source}: plot: expected file (.png), metrics and as many "
                          f"x labels as metrics")
    return plot


def _metric(entry: Any, source: str) -> Metric:
    if isinstance(entry, str):
        return Metric(entry)
    if isinstance(entry, dict) and isinstance(entry.get("key"), str):
        unknown = set(entry) - {"key", "label", "scale", "digits", "lower_is_better"}
        if unknown:
            raise ConfigError(f"bench methods: --comparison {source}: metrics: {entry['key']}: unknown field "
                              f"{sorted(unknown)[0]!r} (key, label, scale, digits, lower_is_better)")
        try:
            return Metric(entry["key"], str(entry.get("label", "")), float(entry.get("scale", 1.0)),
                          int(entry.get("digits", 2)), bool(entry.get("lower_is_better", False)))
        except (TypeError, ValueError):
            pass
    raise ConfigError(f"bench methods: --comparison {source}: metrics: {entry!r}: expected a summary key or "
                      f"{{key, label, scale, digits, lower_is_better}}")


def load_comparison(source: str) -> Comparison:
    """A comparison file: a shipped name (``glyphs``) or a YAML path."""
    from importlib import resources

    import yaml

    path = Path(source)
    shipped = resources.files("reprlab") / "comparisons" / f"{source}.yaml"
    if path.is_file():
        text = path.read_text()
    elif shipped.is_file():
        text = shipped.read_text()
    else:
        raise ConfigError(f"bench methods: --comparison {source}: no such file or shipped comparison")
    try:
        doc = yaml.safe_load(text) or {}
        entries = doc["variants"]
        variants = tuple(Variant(e["label"], e["preset"], tuple(e.get("overrides", ())), bool(e.get("initial", False)))
                         for e in entries)
    except (KeyError, TypeError, yaml.YAMLError):
        raise ConfigError(
            f"bench methods: --comparison {source}: expected 'variants:' with label, preset and optional overrides"
        ) from None
    for e in entries:  # an unquoted comma in a flow mapping ({label: a, b, ...}) splits the label into a key
        extra = sorted(set(e) - {"label", "preset", "overrides", "initial"}, key=str)
        if extra:
            raise ConfigError(f"bench methods: --comparison {source}: variant {e['label']!r}: unknown key "
                              f"{extra[0]!r} (label, preset, overrides, initial; quote a label that holds a comma)")
    unknown = sorted(set(doc) - {"metrics", "deltas", "plot", "variants"})
    if unknown:
        raise ConfigError(f"bench methods: --comparison {source}: unknown key {unknown[0]!r} "
                          f"(metrics, deltas, plot, variants)")
    plot = _plot(doc["plot"], source) if "plot" in doc else None
    if "metrics" not in doc:
        return Comparison(variants, plot=plot)
    if not isinstance(doc["metrics"], list) or not doc["metrics"]:
        raise ConfigError(f"bench methods: --comparison {source}: metrics: expected a non-empty list")
    metrics = tuple(_metric(e, source) for e in doc["metrics"])
    keys = [m.key for m in metrics]
    deltas = doc.get("deltas", keys[:1])
    if not isinstance(deltas, list) or any(d not in keys for d in deltas):
        raise ConfigError(f"bench methods: --comparison {source}: deltas: {deltas!r}: expected a list of the "
                          f"metrics' keys ({', '.join(keys)})")
    return Comparison(variants, metrics, tuple(deltas), plot)


def parse_variant(text: str) -> Variant:
    """``LABEL=PRESET[,KEY=VALUE...]``, e.g. ``D&C K=16=divide_conquer/glyphs,method.num_clusters=16``
    (the label ends at the last ``=`` before the preset)."""
    head, _, rest = text.partition(",")
    label, sep, preset = head.rpartition("=")
    if not sep or not label or not preset:
        raise ConfigError(f"bench methods: --variant {text!r}: expected LABEL=PRESET[,KEY=VALUE...]")
    return Variant(label, preset, tuple(x for x in rest.split(",") if x))


def chosen_variants(texts: list[str], offered: tuple[Variant, ...]) -> tuple[Variant, ...]:
    """``--variant`` values: the label of one of ``offered`` (the comparison's variants, so a label
    with commas or ``=`` in it can be chosen as it is written) or ``LABEL=PRESET[,KEY=VALUE...]``."""
    by_label = {v.label: v for v in offered}
    chosen = []
    for text in texts:
        if text in by_label:
            chosen.append(by_label[text])
            continue
        try:
            chosen.append(parse_variant(text))
        except ConfigError:
            raise ConfigError(f"bench methods: --variant {text!r}: neither a label of the comparison "
                              f"({'; '.join(by_label)}) nor LABEL=PRESET[,KEY=VALUE...]") from None
    return tuple(chosen)


def config_hash(cfg) -> str:
    """SHA-256 of the resolved config (every key, defaults included), as canonical JSON."""
    text = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def code_version() -> str:
    """``<package version>+<hash of every reprlab source file>`` (and ``git describe`` where the
    package is a git checkout): a run made by other code does not count as this code's."""
    from importlib import metadata

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    try:
        version = metadata.version("reprlab")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        git = ""
    return f"{version}+src.{digest.hexdigest()[:16]}" + (f" (git {git})" if git else "")


def fingerprint(cfg) -> dict[str, str]:
    return {"config_sha256": config_hash(cfg), "code": code_version()}


def _same_code(a: str, b: str) -> bool:
    """Versions agree on the package version and source hash (git describe is informative only)."""
    return a.split(" ")[0] == b.split(" ")[0]


def check_fingerprint(run_dir: Path, wanted: dict[str, str], rerun: bool) -> None:
    """Refuse (or, with ``rerun``, move aside) a run directory whose recorded fingerprint is not
    ``wanted``; a directory without one (made before fingerprints) counts as stale."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return
    record = run_dir / "bench.json"
    stored = json.loads(record.read_text()) if record.is_file() else {}
    if stored.get("config_sha256") == wanted["config_sha256"] and _same_code(stored.get("code", ""), wanted["code"]):
        return
    what = ("no fingerprint recorded" if not stored else
            "another config" if stored.get("config_sha256") != wanted["config_sha256"] else
            f"other code ({stored.get('code')} vs {wanted['code']})")
    if not rerun:
        raise ConfigError(f"bench methods: {run_dir} was made with {what}; its numbers are not this config's "
                          f"and code's: pass --rerun-stale to train it again (the old run is kept beside it)")
    stale = run_dir.with_name(f"{run_dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.rename(stale)
    print(f"[reprlab] bench methods: {run_dir} was made with {what}; moved to {stale.name}, training again", flush=True)


def run_comparison(
    variants: tuple[Variant, ...], seeds: list[int], output: Path, overrides: list[str] | None = None,
    *, rerun: bool = False, metrics: tuple[Metric, ...] = RETRIEVAL,
) -> list[dict[str, Any]]:
    """Train every variant with every seed (skipping finished runs made with the same config and
    code); one row per run."""
    from reprlab.platform.run.driver import run_training

    configs = {  # resolve everything first: a bad variant fails before any training
        (v, s): load_config(v.preset, [*v.overrides, *(overrides or []), f"experiment.seed={s}"])
        for v in variants
        for s in seeds
    }
    rows = []
    prints = {key: fingerprint(cfg) for key, cfg in configs.items()}
    for (variant, seed), cfg in configs.items():
        run_dir = output / variant.slug / f"seed{seed}"
        check_fingerprint(run_dir, prints[variant, seed], rerun)
        summary_file = run_dir / "summary.json"
        wall = None
        if summary_file.is_file():
            summary = json.loads(summary_file.read_text())
        else:
            print(f"[reprlab] bench methods: {variant.label}, seed {seed} -> {run_dir}", flush=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "bench.json").write_text(json.dumps(prints[variant, seed], indent=2))
            start = time.perf_counter()
            summary = run_training(cfg, run_dir, resume=(run_dir / "config.yaml").is_file())
            wall = time.perf_counter() - start
            (run_dir / "bench.json").write_text(json.dumps({**prints[variant, seed], "wall_s": wall}, indent=2))
        if wall is None:  # a finished run read back: the wall time it recorded (a resumed one: its last leg)
            record = run_dir / "bench.json"
            wall = json.loads(record.read_text()).get("wall_s") if record.is_file() else None
        rows.append({
            "variant": variant.label, "preset": variant.preset, "overrides": " ".join(variant.overrides),
            "seed": seed, "selected_epoch": 0 if variant.initial else summary["selected_epoch"], "selection": summary.get("selection", ""),
            "wall_s": wall,
            **{f"{part}/{m.key}": _value(summary, "initial" if variant.initial else part, m.key, run_dir)
               for m in metrics for part in ("test", "initial")},
        })
    return rows


def _value(summary: dict[str, Any], part: str, key: str, run_dir: Path) -> float:
    value = summary.get(part, {}).get(key)
    if value is None:
        if part == "test":
            print(f"[reprlab] bench methods: {run_dir}: the summary has no test metric {key!r}", flush=True)
        return float("nan")
    return float(value)


def aggregate(rows: list[dict[str, Any]], metrics: tuple[Metric, ...] = RETRIEVAL) -> list[dict[str, Any]]:
    """Mean and sample std (ddof=1) per variant and metric (x the metric's scale), and the mean
    wall time of the runs that have one, in the order the variants first appear."""
    out = []
    for label in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == label]
        agg: dict[str, Any] = {"variant": label, "seeds": len(mine)}
        for m in metrics:
            vals = np.array([m.scale * r[f"test/{m.key}"] for r in mine])
            agg[f"{m.key}_mean"] = float(vals.mean())
            agg[f"{m.key}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        walls = [r["wall_s"] for r in mine if r.get("wall_s") is not None]
        agg["wall_s"] = float(np.mean(walls)) if walls else None
        out.append(agg)
    return out


def format_table(agg: list[dict[str, Any]], metrics: tuple[Metric, ...] = RETRIEVAL,
                 deltas: tuple[str, ...] = ("recall@1", "map@r")) -> str:
    """Markdown: mean +- std per metric, the difference of the means to the first variant for the
    ``deltas`` metrics (marked where lower is better), and the mean wall time per run."""
    base, by_key = agg[0], {m.key: m for m in metrics}
    heads = [m.name for m in metrics] + [f"d{by_key[k].name}" + (" (lower is better)" if by_key[k].lower_is_better else "")
                                         for k in deltas] + ["wall s/run"]
    lines = ["| method | seeds | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    for a in agg:
        cells = [f"{a[f'{m.key}_mean']:.{m.digits}f} +- {a[f'{m.key}_std']:.{m.digits}f}"
                 if math.isfinite(a[f"{m.key}_mean"]) else "-" for m in metrics]  # "-": the variant does not measure it
        diffs = [a[f"{k}_mean"] - base[f"{k}_mean"] for k in deltas]
        cells += [f"{d:+.{by_key[k].digits}f}" if math.isfinite(d) else "-" for k, d in zip(deltas, diffs)]
        cells.append(f"{a['wall_s']:.0f}" if a["wall_s"] is not None else "n/a")
        lines.append(f"| {a['variant']} | {a['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_plot(rows: list[dict[str, Any]], plot: Plot, output: Path) -> Path:
    """The plot's metrics per variant, mean over its seeds, as one line each."""
    from reprlab.platform.eval.image import curves_png

    curves = {}
    for label in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == label]
        curves[label] = [float(np.mean([r[f"test/{k}"] for r in mine])) for k in plot.metrics]
    path = output / plot.file
    path.write_bytes(curves_png(list(plot.x), curves, plot.ylabel, f"test, mean over {len(mine)} seed(s)"))
    return path


def write_results(rows: list[dict[str, Any]], output: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = output / "methods.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
