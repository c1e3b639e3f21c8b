"""Check the nbgrader labs end to end in a temporary course folder (what `make labs-check` runs).

For every lab under notebooks/labs/source:
  1. `nbgrader generate_assignment` reproduces the committed student version under notebooks/labs/release
     (cell types, ids, sources and metadata; outputs are cleared by nbgrader anyway);
  2. no solution text and no hidden test is left in the student version;
  3. autograding the instructor version gives full marks;
  4. autograding the untouched student version gives zero and does not crash;
  5. each prepared wrong answer (tests/labs/wrong_answers.py) loses the points of its part (and of a
     later part that calls it), and only those, and the feedback of that part shows the expected hint.

    .venv/bin/python tests/labs/check_labs.py                   # every lab
    .venv/bin/python tests/labs/check_labs.py 01_rel_shift      # some labs
    .venv/bin/python tests/labs/check_labs.py --write-release   # regenerate notebooks/labs/release first

Exits 1 on any failure, after printing one row per lab and the reasons.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LABS = ROOT / "notebooks" / "labs"
sys.path.insert(0, str(HERE))

from wrong_answers import WRONG_ANSWERS  # noqa: E402

SOLUTION_REGION = re.compile(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", re.S)
HIDDEN_REGION = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", re.S)


def nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def comparable(nb) -> list:
    """What must not differ between a fresh student version and the committed one."""
    cells = [(c["cell_type"], c.get("id"), c["source"], json.dumps(c["metadata"], sort_keys=True)) for c in nb.cells]
    return [json.dumps(nb.metadata, sort_keys=True), *cells]


def release_diff(fresh: Path, committed: Path) -> str | None:
    if not committed.is_file():
        return f"{committed.relative_to(ROOT)} is missing"
    a, b = comparable(nbformat.read(fresh, 4)), comparable(nbformat.read(committed, 4))
    if a == b:
        return None
    if len(a) != len(b):
        return f"{committed.relative_to(ROOT)}: {len(b) - 1} cells, generate_assignment makes {len(a) - 1}"
    where = next(k for k, (x, y) in enumerate(zip(a, b)) if x != y)
    what = "notebook metadata" if where == 0 else f"cell {where - 1} ({a[where][1]})"
    return f"{committed.relative_to(ROOT)}: {what} differs from generate_assignment's output"


def leaked_solution(source_nb, release_nb) -> list[str]:
    """Solution lines or hidden-test lines of the source that appear in the student version."""
    outside = "\n".join(SOLUTION_REGION.sub("", HIDDEN_REGION.sub("", c.source)) for c in source_nb.cells)
    release_text = "\n".join(c.source for c in release_nb.cells)
    leaks = [m for m in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS") if m in release_text]
    for cell in source_nb.cells:
        for region in SOLUTION_REGION.findall(cell.source) + HIDDEN_REGION.findall(cell.source):
            for line in region.splitlines():
                line = line.strip()
                if len(line) >= 12 and line not in outside and line in release_text:
                    leaks.append(line)
    return leaks


def fill_release(release_nb, source_nb, replace: dict[str, str]):
    """A student's submission: the release version with every answer cell taken from the source,
    except the cells in ``replace`` (grade_id -> the student's source)."""
    answers = {nbgrader_meta(c).get("grade_id"): c.source for c in source_nb.cells if nbgrader_meta(c).get("solution")}
    nb = nbformat.from_dict(json.loads(json.dumps(release_nb)))
    for cell in nb.cells:
        gid = nbgrader_meta(cell).get("grade_id")
        if nbgrader_meta(cell).get("solution"):
            cell.source = replace.get(gid, answers[gid])
    unknown = set(replace) - set(answers)
    if unknown:
        raise ValueError(f"wrong answer for unknown cells {sorted(unknown)}")
    return nb


def cell_text(nb, grade_id: str) -> str:
    """Everything a graded cell printed (stdout, stderr, tracebacks) after autograding."""
    for cell in nb.cells:
        if nbgrader_meta(cell).get("grade_id") == grade_id:
            parts = []
            for out in cell.get("outputs", []):
                parts.append(out.get("text", ""))
                parts.extend(out.get("traceback", []))
                parts.append(str(out.get("evalue", "")))
            return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(parts))  # strip ANSI colours
    raise KeyError(grade_id)


def check_lab(lab: str, course: Path, api, gradebook_cls, *, write_release: bool) -> tuple[list[str], list[str]]:
    """Returns (the row of the summary table, the failures)."""
    failures: list[str] = []
    nb_name = f"{lab}.ipynb"
    result = api.generate_assignment(lab, force=True)
    if not result["success"]:
        return [lab, "generate failed", "-", "-", "-"], [
            f"{lab}: generate_assignment failed:\n{result.get('error', '')}"
        ]
    fresh = course / "release" / lab / nb_name
    committed = LABS / "release" / lab / nb_name
    if write_release:
        committed.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fresh, committed)
    diff = release_diff(fresh, committed)
    if diff:
        failures.append(
            f"{lab}: release out of date: {diff} (regenerate: python tests/labs/check_labs.py --write-release)"
        )
    source_nb = nbformat.read(course / "source" / lab / nb_name, 4)
    release_nb = nbformat.read(fresh, 4)
    leaks = leaked_solution(source_nb, release_nb)
    if leaks:
        failures.append(f"{lab}: solution text in the student version: {leaks[:3]}")

    tests = {
        nbgrader_meta(c)["grade_id"]: nbgrader_meta(c)["points"]
        for c in source_nb.cells
        if nbgrader_meta(c).get("grade")
    }
    max_score = sum(tests.values())
    wrongs = [w for w in WRONG_ANSWERS if w.lab == lab]
    if not wrongs:
        failures.append(f"{lab}: no prepared wrong answer in tests/labs/wrong_answers.py")
    # Wrong answers to different cells are graded independently, so they share a submission (one
    # kernel start per submission is what costs): the n-th wrong answer of every cell goes into "wrong<n>".
    groups: list[list] = []
    for w in wrongs:
        group = next((g for g in groups if all(x.cell != w.cell for x in g)), None)
        if group is None:
            groups.append(group := [])
        group.append(w)
    submissions = {"instructor": source_nb, "untouched": release_nb}
    for k, group in enumerate(groups):
        submissions[f"wrong{k}"] = fill_release(release_nb, source_nb, {w.cell: w.source for w in group})
    for student, nb in submissions.items():
        folder = course / "submitted" / student / lab
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, folder / nb_name)

    scores: dict[str, dict[str, float]] = {}
    for student in submissions:
        result = api.autograde(lab, student)
        if not result["success"]:
            failures.append(f"{lab}: autograding {student} crashed:\n{result.get('error', '')[-2000:]}")
            continue
        with gradebook_cls(f"sqlite:///{course / 'gradebook.db'}") as gb:
            scores[student] = {gid: gb.find_grade(gid, lab, lab, student).score for gid in tests}

    def total(student):
        return sum(scores[student].values()) if student in scores else float("nan")

    if "instructor" in scores and total("instructor") != max_score:
        lost = {g: s for g, s in scores["instructor"].items() if s != tests[g]}
        failures.append(f"{lab}: instructor version scores {total('instructor')}/{max_score}; lost {lost}")
    if "untouched" in scores and total("untouched") != 0:
        won = {g: s for g, s in scores["untouched"].items() if s}
        failures.append(f"{lab}: untouched student version scores {total('untouched')}, expected 0; won {won}")
    wrong_ok = 0
    for k, group in enumerate(groups):
        student = f"wrong{k}"
        if student not in scores:
            continue
        losing = {t for w in group for t in w.tests}
        expected = {g: (0 if g in losing else p) for g, p in tests.items()}
        if scores[student] != expected:
            failures.append(
                f"{lab}: wrong answers to {[w.cell for w in group]}: scores {scores[student]}, expected {expected}"
            )
        graded = nbformat.read(course / "autograded" / student / lab / nb_name, 4)
        for w in group:
            ok = all(scores[student].get(t) == 0 for t in w.tests) and all(
                scores[student][g] == tests[g] for g in tests if g not in losing
            )
            text = cell_text(graded, w.tests[0])
            if w.hint not in text:
                ok = False
                failures.append(
                    f"{lab}: wrong answer to {w.cell}: the feedback of {w.tests[0]} lacks the hint "
                    f"{w.hint!r}; it printed:\n{text[-1500:]}"
                )
            wrong_ok += ok
    row = [
        lab,
        "ok" if not diff and not leaks else "FAIL",
        f"{total('instructor'):g}/{max_score}",
        f"{total('untouched'):g}/{max_score}",
        f"{wrong_ok}/{len(wrongs)} ok",
    ]
    return row, failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("labs", nargs="*", help="lab names (default: every folder under notebooks/labs/source)")
    parser.add_argument(
        "--write-release", action="store_true", help="copy the fresh student versions into notebooks/labs/release"
    )
    parser.add_argument(
        "--keep", metavar="DIR", help="use this course folder (kept afterwards) instead of a temporary one"
    )
    args = parser.parse_args(argv)
    labs = args.labs or sorted(p.name for p in (LABS / "source").iterdir() if p.is_dir())

    # nbgrader calls `alembic` and starts kernels with this interpreter: put its folder first on PATH.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from nbgrader.api import Gradebook
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import Config, PyFileConfigLoader

    start = time.time()
    with tempfile.TemporaryDirectory(prefix="xlnet_ref_labs_") as tmp:
        course = Path(args.keep) if args.keep else Path(tmp)
        if args.keep and course.exists():
            shutil.rmtree(course)
        course.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(LABS / "nbgrader_config.py", course / "nbgrader_config.py")
        for lab in labs:
            shutil.copytree(
                LABS / "source" / lab, course / "source" / lab, ignore=shutil.ignore_patterns(".ipynb_checkpoints")
            )
        config = Config()
        config.merge(PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config())
        config.CourseDirectory.root = str(course)
        config.Exchange.root = str(course / "exchange")
        coursedir = CourseDirectory(config=config)
        api = NbGraderAPI(coursedir=coursedir, config=config)
        rows, failures = [], []
        for lab in labs:
            t = time.time()
            row, fails = check_lab(lab, course, api, Gradebook, write_release=args.write_release)
            rows.append([*row, f"{time.time() - t:.0f} s"])
            failures += fails

    header = ["lab", "release", "instructor", "untouched", "wrong answers", "time"]
    widths = [max(len(str(r[k])) for r in [header, *rows]) for k in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))
    for f in failures:
        print("FAIL " + f)
    print(f"labs-check: {len(labs)} lab(s), {len(failures)} failure(s), {time.time() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
