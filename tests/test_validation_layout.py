"""xlnet_ref/validation/: imports point down (no circle, no function-level import of a module above),
the names other code relies on stay importable, and compare.py needs nothing but numpy and safetensors."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "xlnet_ref" / "validation"
# bottom to top: a module may import only modules earlier in this list (docs in validation/__init__.py)
LAYERS = [
    "stages",
    "compare",
    "cases",
    "recorder",
    "reference",
    "mutants",
    "transformers_adapter",
    "adapters",
    "golden",
    "validate",
    "cli",
]


def relative_imports(path: Path) -> set[str]:
    """The sibling modules a module imports, anywhere in it (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(a.name for a in node.names)
    return found


def test_every_module_is_in_the_layer_list():
    assert sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__") == sorted(LAYERS)


def test_imports_point_down():
    for index, name in enumerate(LAYERS):
        above = relative_imports(PACKAGE / f"{name}.py") - set(LAYERS[:index])
        assert not above, f"validation/{name}.py imports {sorted(above)}, which are not below it"


def test_compare_imports_only_numpy_safetensors_and_the_standard_library():
    tree = ast.parse((PACKAGE / "compare.py").read_text())
    top = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            top.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "compare.py must stand alone (it is copied to golden/)"
            top.add(node.module.split(".")[0])
    assert top <= {
        "__future__",
        "argparse",
        "difflib",
        "fnmatch",
        "json",
        "re",
        "sys",
        "dataclasses",
        "pathlib",
        "numpy",
        "safetensors",
    }, top


def test_names_notebooks_and_labs_use_stay_importable():
    """notebook 07 and the classroom lab import these by these paths."""
    validate = importlib.import_module("xlnet_ref.validation.validate")
    mutants = importlib.import_module("xlnet_ref.validation.mutants")
    assert callable(validate.reference_stages) and callable(mutants.mutant_adapter)
    assert "no_rel_shift" in mutants.MUTANTS and callable(mutants.MUTANTS["tanh_gelu"].inject)
    for entry in ("xlnet_ref.validate", "xlnet_ref.golden"):
        assert callable(importlib.import_module(entry).main)
