"""Code listings saved in the notebooks' outputs (``show_source``) show the code as it is now.

nbval runs the notebooks but compares only the cells marked for checking, so a listing printed before
a change to xlnet_ref would stay in the saved notebook — what a class sees on the projector before
anyone runs it. Every saved ``<file>.py, lines a-b:`` block must equal those lines of the file today.
Refresh one by re-running its cell (or the notebook) after changing the code it shows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").rglob("*.ipynb"))
HEADER = re.compile(r"^(\S+\.py), lines (\d+)-(\d+):$")
NUMBERED = re.compile(r"^ *(\d+)  (.*)$")  # show_source's "{n:4d}  {line}"


def listings(notebook: Path):
    """(cell index, file, first line, last line, the shown lines) for every listing in the saved outputs."""
    cells = json.loads(notebook.read_text())["cells"]
    for index, cell in enumerate(cells):
        for output in cell.get("outputs", []):
            text = "".join(output.get("text", "")).splitlines()
            for n, line in enumerate(text):
                match = HEADER.match(line)
                if match:
                    first, last = int(match.group(2)), int(match.group(3))
                    yield index, match.group(1), first, last, text[n + 1 : n + 2 + last - first]


def test_the_notebooks_contain_listings():
    """The check below must have something to check (show_source is used in most notebooks)."""
    assert sum(1 for nb in NOTEBOOKS for _ in listings(nb)) >= 10


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[str(nb.relative_to(ROOT / "notebooks")) for nb in NOTEBOOKS])
def test_saved_listings_match_the_code(notebook):
    for cell, file, first, last, shown in listings(notebook):
        source = (ROOT / file).read_text().splitlines()
        where = f"{notebook.name} cell {cell}: {file}, lines {first}-{last}"
        assert len(shown) == last - first + 1, f"{where}: the listing is cut short"
        for offset, line in enumerate(shown):
            match = NUMBERED.match(line)
            assert match and int(match.group(1)) == first + offset, f"{where}: line {offset} is not numbered"
            assert match.group(2) == source[first - 1 + offset], (
                f"{where}: line {first + offset} is now {source[first - 1 + offset]!r}, the notebook shows "
                f"{match.group(2)!r}; re-run that cell"
            )
