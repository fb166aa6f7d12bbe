"""Layering: no module imports a layer that is allowed to import it (docs/architecture.md)."""

import ast
from pathlib import Path

import plinth

ROOT = Path(plinth.__file__).parent

# layer -> plinth layers it may import. Keep in step with docs/architecture.md and ../shared/DESIGN.md.
ALLOWED = {
    "config": set(),
    "common": set(),
    "runlog": {"common"},
    "models": {"config", "common"},
    "data": {"config", "common"},
    "adapt": {"config", "common", "models"},
    "compress": {"config", "common", "models"},
    "multimodal": {"config", "common", "runlog", "models", "data"},
    "evaluate": {"config", "common", "runlog", "models", "data", "multimodal"},
    "training": {"config", "common", "runlog", "models", "data", "adapt", "compress", "multimodal", "evaluate"},
    "audit": {"config", "common", "runlog", "models", "data", "evaluate"},
    "serve": {"config", "common", "runlog", "models", "data", "adapt", "compress"},
    "cli": {"config", "common", "runlog", "models", "data", "adapt", "compress", "multimodal", "evaluate",
            "training", "audit", "serve"},
}


def _layer(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _plinth_imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "plinth" and len(parts) > 1:
                yield node.lineno, parts[1]


def test_every_module_has_a_layer():
    for path in ROOT.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == ROOT:
            continue
        assert _layer(path) in ALLOWED, f"{path} is in no layer of docs/architecture.md"


def test_no_backward_imports():
    bad = []
    for path in ROOT.rglob("*.py"):
        if path.parent == ROOT and path.name == "__init__.py":
            continue  # the API facade may import anything
        layer = _layer(path)
        for lineno, target in _plinth_imports(path):
            if target != layer and target not in ALLOWED[layer]:
                bad.append(f"{path.relative_to(ROOT.parent)}:{lineno} ({layer}) imports plinth.{target}")
    assert not bad, "backward imports:\n" + "\n".join(bad)


def test_the_check_catches_a_backward_import(tmp_path, monkeypatch):
    fake = tmp_path / "plinth"
    (fake / "models").mkdir(parents=True)
    (fake / "models" / "x.py").write_text("from plinth.training import lm\n")
    found = list(_plinth_imports(fake / "models" / "x.py"))
    assert found == [(1, "training")] and "training" not in ALLOWED["models"]
