"""Layering: no module imports a layer that is allowed to import it (docs/architecture.md)."""

import ast
from pathlib import Path

import plinth

ROOT = Path(plinth.__file__).parent
API = "__init__"  # plinth/__init__.py: the lazy API facade, which may reach everything; nothing inside may import it

# layer -> plinth layers it may import. Keep in step with docs/architecture.md and ../shared/DESIGN.md.
_BASE = {"config", "common", "artifacts"}
ALLOWED = {
    "config": set(),
    "common": {"config"},
    "artifacts": {"config", "common"},
    "runlog": {"config", "common"},
    "models": _BASE,
    "data": _BASE,
    "pipelines": _BASE | {"models", "data", "adapt"},  # a LoRA adapter is applied when a model loads
    "adapt": _BASE | {"models"},
    "compress": _BASE | {"models"},
    "multimodal": _BASE | {"runlog", "models", "data", "pipelines"},
    "evaluate": _BASE | {"runlog", "models", "data", "pipelines", "multimodal"},
    "training": _BASE | {"runlog", "models", "data", "pipelines", "adapt", "compress", "multimodal", "evaluate"},
    "audit": _BASE | {"runlog", "models", "data", "pipelines", "evaluate"},
    "serve": _BASE | {"runlog", "models", "data", "pipelines", "adapt", "compress"},
    "cli": _BASE | {"runlog", "models", "data", "pipelines", "adapt", "compress", "multimodal", "evaluate", "training",
                    "audit", "serve", API},
    "__main__": {"cli"},
}


def _layer(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root)
    return rel.parts[0].removesuffix(".py")


def _absolute(node: ast.ImportFrom, path: Path, root: Path) -> str:
    """The absolute module a (possibly relative) `from ... import` names."""
    if node.level == 0:
        return node.module or ""
    package = ["plinth", *path.relative_to(root).parent.parts]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _plinth_imports(path: Path, root: Path = ROOT):
    """(line, layer) for every plinth module `path` imports; `from plinth import X` counts as layer X (or the API)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = _absolute(node, path, root)
            if module == "plinth":  # `from plinth import X`: X is a layer, or an API name (the facade)
                for alias in node.names:
                    yield node.lineno, alias.name if alias.name in ALLOWED else API
                continue
            names = [module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "plinth":
                yield node.lineno, parts[1] if len(parts) > 1 else API


def _backward_imports(root: Path) -> list[str]:
    bad = []
    for path in root.rglob("*.py"):
        if path.parent == root and path.name == "__init__.py":
            continue  # the API facade may import anything
        layer = _layer(path, root)
        for lineno, target in _plinth_imports(path, root):
            if target != layer and target not in ALLOWED.get(layer, set()):
                bad.append(f"{path.relative_to(root.parent)}:{lineno} ({layer}) imports plinth.{target}")
    return bad


def test_every_module_has_a_layer():
    for path in ROOT.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == ROOT:
            continue
        assert _layer(path) in ALLOWED, f"{path} is in no layer of docs/architecture.md"


def test_no_backward_imports():
    bad = _backward_imports(ROOT)
    assert not bad, "backward imports:\n" + "\n".join(bad)


def test_the_check_catches_every_form_of_backward_import(tmp_path):
    fake = tmp_path / "plinth"
    (fake / "models").mkdir(parents=True)
    (fake / "models" / "a.py").write_text("from plinth.training import lm\n")
    (fake / "models" / "b.py").write_text("from plinth import evaluate\n")
    (fake / "models" / "c.py").write_text("from ..training.run import train\n")
    (fake / "models" / "d.py").write_text("from plinth import load\n")  # the API facade
    (fake / "models" / "e.py").write_text("from . import gpt\nfrom .gpt import GPT\nimport plinth.common\n")  # fine
    bad = sorted(_backward_imports(fake))
    assert [b.split(" imports ")[1] for b in bad] == ["plinth.training", "plinth.evaluate", "plinth.training",
                                                      "plinth.__init__"]
