"""Imports point one way: the readable core (the top-level modules of xlnet_ref) never imports the fast
path or the machinery built on it, and the fast path imports only the core. The core also holds none of
the fast path's devices. Each rule is checked on the parsed source of every module, and the check is
shown to fail on a planted violation."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xlnet_ref"
ENTRY_POINTS = {"train", "demo", "finetune", "validate", "golden"}  # thin `python -m xlnet_ref.<tool>` modules
CORE = sorted(p for p in PACKAGE.glob("*.py") if p.stem not in ENTRY_POINTS)
FAST = sorted((PACKAGE / "fast").glob("*.py"))
SUBPACKAGES = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
# what the readable modules must not contain: the fast path's devices (as code, not as English words)
FORBIDDEN_IN_CORE = {
    "torch.compiler": r"torch\.compiler",
    "autograd.Function": r"autograd\.Function",
    "is_compiling": r"is_compiling",
    "an implementation switch": r"\.implementation\b|\bimplementation\s*[=!]=",
    "a *_fast / fast_* name": r"\w_fast\b|\bfast_\w",
    "a trace argument": r"\btrace\s*[=:]|\btrace\[|\btrace\.update",  # stages are recorded by hooks instead
}


def imported_packages(path: Path, source: str | None = None) -> set[str]:
    """The xlnet_ref subpackages (or "" for the core) a module imports, from its parsed source."""
    tree = ast.parse(source if source is not None else path.read_text())
    depth = len(path.relative_to(PACKAGE).parts) - 1  # 0 for the core, 1 inside a subpackage
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "xlnet_ref":
                    continue
                parts = parts[1:]
            elif node.level - 1 > depth:
                raise AssertionError(f"{path}: relative import beyond the package")
            else:
                here = list(path.relative_to(PACKAGE).parts[:-1])[: len(path.relative_to(PACKAGE).parts) - node.level]
                parts = here + (node.module.split(".") if node.module else [n.name for n in node.names])
            found.add(parts[0] if parts and parts[0] in SUBPACKAGES else "")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "xlnet_ref":
                    found.add(parts[1] if len(parts) > 1 and parts[1] in SUBPACKAGES else "")
    return found


def layering_violations(path: Path, source: str | None = None) -> list[str]:
    packages = imported_packages(path, source)
    if path.parent == PACKAGE:
        return [f"{path.name} imports xlnet_ref.{p}" for p in sorted(packages - {""})]
    if path.parent.name == "fast":
        return [f"fast/{path.name} imports xlnet_ref.{p}" for p in sorted(packages - {"", "fast"})]
    return []


def forbidden_tokens(path: Path, source: str | None = None) -> list[str]:
    text = source if source is not None else path.read_text()
    return [what for what, pattern in FORBIDDEN_IN_CORE.items() if re.search(pattern, text)]


@pytest.mark.parametrize("path", CORE + FAST, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_one_way(path):
    assert layering_violations(path) == []


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_the_core_holds_no_fast_path(path):
    assert forbidden_tokens(path) == []


def test_the_checks_fail_on_planted_violations():
    model = PACKAGE / "model.py"
    planted = model.read_text() + "\nfrom .fast import attention as _unused\n"
    assert layering_violations(model, planted) == ["model.py imports xlnet_ref.fast"]
    assert layering_violations(model, "from xlnet_ref.training import train\n") == [
        "model.py imports xlnet_ref.training"
    ]
    fast_model = PACKAGE / "fast" / "model.py"
    assert layering_violations(fast_model, "from ..validation import cases\n") == [
        "fast/model.py imports xlnet_ref.validation"
    ]
    assert layering_violations(fast_model, "from .. import model\nfrom .attention import attend\n") == []
    assert forbidden_tokens(model, "if torch.compiler.is_compiling():\n    pass\n") == [
        "torch.compiler",
        "is_compiling",
    ]
    assert forbidden_tokens(model, "fast = cfg.implementation == 'fast'\n") == ["an implementation switch"]
    assert forbidden_tokens(model, "h = feed_forward_fast(ff, h)\n") == ["a *_fast / fast_* name"]
    assert forbidden_tokens(model, "def forward(self, x, trace=None):\n    trace.update(h=x)\n") == ["a trace argument"]


def forward_path() -> set[str]:
    """The core modules XLNetLMHeadModel needs: model.py and what it imports, transitively."""
    seen, todo = set(), ["model"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module] if node.module else [a.name for a in node.names]
                todo += [t.split(".")[0] for t in targets if (PACKAGE / f"{t.split('.')[0]}.py").is_file()]
    return seen


def test_the_forward_path_holds_no_slow_twin():
    """The loops of naive.py are for reading and testing: the model never runs them."""
    path = forward_path()
    assert {"model", "attention", "two_stream", "relative_position", "masks", "segments", "memory"} <= path
    assert "naive" not in path


def test_the_rules_have_something_to_check():
    assert len(CORE) >= 12 and {p.stem for p in FAST} >= {"attention", "model", "two_stream"}
