"""``reprlab bench methods``: methods side by side on one data set, several seeds each.

Every variant is a preset plus overrides; every (variant, seed) is an ordinary run directory
under the output, so an interrupted comparison picks up where it stopped (finished runs are read
back, unfinished ones resumed). Each run directory records its fingerprint (``bench.json``: the
hash of the resolved config and the code version); a run whose fingerprint differs from the one
now resolved (another config or another code) is never reused as it is: it is refused in one line,
or, with ``rerun=True`` (``--rerun-stale``), moved aside and trained again. The metrics are the test metrics at the epoch chosen by
validation MAP@R; mean and sample standard deviation over the seeds.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reprlab.platform.core.config import load_config
from reprlab.platform.core.errors import ConfigError

REPORTED = ("recall@1", "nmi", "map@r")


@dataclass(frozen=True)
class Variant:
    label: str
    preset: str
    overrides: tuple[str, ...] = field(default_factory=tuple)

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.label.lower()).strip("-")


def load_comparison(source: str) -> tuple[Variant, ...]:
    """Variants from a comparison file: a shipped name (``glyphs``) or a YAML path."""
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
        entries = (yaml.safe_load(text) or {})["variants"]
        return tuple(Variant(e["label"], e["preset"], tuple(e.get("overrides", ()))) for e in entries)
    except (KeyError, TypeError, yaml.YAMLError):
        raise ConfigError(
            f"bench methods: --comparison {source}: expected 'variants:' with label, preset and optional overrides"
        ) from None


def parse_variant(text: str) -> Variant:
    """``LABEL=PRESET[,KEY=VALUE...]``, e.g. ``D&C K=16=divide_conquer/glyphs,method.num_clusters=16``
    (the label ends at the last ``=`` before the preset)."""
    head, _, rest = text.partition(",")
    label, sep, preset = head.rpartition("=")
    if not sep or not label or not preset:
        raise ConfigError(f"bench methods: --variant {text!r}: expected LABEL=PRESET[,KEY=VALUE...]")
    return Variant(label, preset, tuple(x for x in rest.split(",") if x))


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
    *, rerun: bool = False,
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
        wall = None  # only for runs trained now
        if summary_file.is_file():
            summary = json.loads(summary_file.read_text())
        else:
            print(f"[reprlab] bench methods: {variant.label}, seed {seed} -> {run_dir}", flush=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "bench.json").write_text(json.dumps(prints[variant, seed], indent=2))
            start = time.perf_counter()
            summary = run_training(cfg, run_dir, resume=(run_dir / "config.yaml").is_file())
            wall = time.perf_counter() - start
        rows.append({
            "variant": variant.label, "preset": variant.preset, "overrides": " ".join(variant.overrides),
            "seed": seed, "selected_epoch": summary["selected_epoch"], "wall_s": wall,
            **{f"test/{k}": summary["test"][k] for k in REPORTED},
            **{f"initial/{k}": summary["initial"][k] for k in REPORTED},
        })
    return rows


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std (ddof=1) per variant, in the order the variants first appear."""
    out = []
    for label in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == label]
        agg: dict[str, Any] = {"variant": label, "seeds": len(mine)}
        for k in REPORTED:
            vals = np.array([100 * r[f"test/{k}"] for r in mine])
            agg[f"{k}_mean"] = float(vals.mean())
            agg[f"{k}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out.append(agg)
    return out


def format_table(agg: list[dict[str, Any]]) -> str:
    """Markdown: mean +- std per metric, and the difference of the means to the first variant."""
    base = agg[0]
    head = "| method | seeds | R@1 | NMI | MAP@R | dR@1 | dMAP@R |\n|---|---|---|---|---|---|---|"
    lines = [head]
    for a in agg:
        cells = [f"{a[f'{k}_mean']:.2f} +- {a[f'{k}_std']:.2f}" for k in REPORTED]
        deltas = [f"{a[f'{k}_mean'] - base[f'{k}_mean']:+.2f}" for k in ("recall@1", "map@r")]
        lines.append(f"| {a['variant']} | {a['seeds']} | " + " | ".join(cells + deltas) + " |")
    return "\n".join(lines)


def write_results(rows: list[dict[str, Any]], output: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = output / "methods.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
