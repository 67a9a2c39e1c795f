"""The house's layering: each folder of ``reprlab/platform`` imports only from itself and the
folders below it, and the engine imports no method, environment or benchmark."""

from __future__ import annotations

import ast
from pathlib import Path

import reprlab

# lowest first; a folder may import from folders at its own rank or lower
LAYERS = {"core": 0, "data": 1, "nn": 2, "eval": 3, "rl": 3, "contract": 4, "dml": 5, "run": 6, "tune": 7}
PLATFORM = Path(reprlab.__file__).parent / "platform"


def _imports(path: Path) -> list[tuple[int, str]]:
    """Modules imported by ``path`` (at module level or inside functions), except those only
    imported for type checking."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


def violations(root: Path = PLATFORM) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if len(rel.parts) < 2:
            continue  # platform/__init__.py
        mine = LAYERS[rel.parts[0]]
        for line, module in _imports(path):
            parts = module.split(".")
            if parts[0] != "reprlab":
                continue
            if len(parts) < 3 or parts[1] != "platform":
                bad.append(f"{rel}:{line} imports {module} (the engine imports no method, env or bench)")
            elif LAYERS.get(parts[2], 99) > mine:
                bad.append(f"{rel}:{line} imports {module} ({parts[2]} is above {rel.parts[0]})")
    return bad


def test_every_platform_folder_is_a_known_layer():
    folders = {p.name for p in PLATFORM.iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert folders == set(LAYERS)


def test_platform_folders_import_downward():
    assert violations() == []


def test_an_upward_import_is_caught(tmp_path):
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "x.py").write_text("from reprlab.platform.run.loop import say\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "y.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                             "    from reprlab.platform.contract.context import Context\n")
    assert violations(tmp_path) == ["core/x.py:1 imports reprlab.platform.run.loop (run is above core)"]


def test_methods_do_not_import_each_other():
    """Each method knows the platform, not another method (a shared piece moves into the platform)."""
    methods = PLATFORM.parent / "methods"
    bad = [f"{path.name}:{line} imports {module}" for path in sorted(methods.glob("*.py"))
           if path.name != "__init__.py" for line, module in _imports(path) if module.startswith("reprlab.methods")]
    assert bad == []
