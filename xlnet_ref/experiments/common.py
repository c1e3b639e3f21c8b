"""Result files of seeded experiments: ``results/<name>.json``.

A result file holds one experiment at one size::

    {"name": "memory_on_text", "size": "full",
     "command": "python -m xlnet_ref.experiments.memory_on_text --size full",
     "config": {...},                        # everything needed to repeat it
     "seeds": [0, 1, 2],
     "per_seed": [{"seed": 0, "arm=mem_len 0/loss": 2.41, ...}, ...],   # one dict of numbers per seed
     "summary": {"arm=mem_len 0/loss": {"mean": ..., "std": ..., "min": ..., "max": ..., "n": 3}, ...},
     "machine": "...", "torch": "2.13.0", "date": "2026-11-28"}

``std`` is the sample standard deviation (ddof 1). Per-seed numbers are plain floats; the summary is
recomputed from them on write, so it cannot disagree with them.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parents[2] / "results"
SIZES = ("full", "quick")  # full: the recorded experiment; quick: the reduced size a notebook re-runs live


def result_path(name: str, *, size: str = "full", directory: str | Path | None = None) -> Path:
    """``results/<name>.json`` for the full size, ``results/<name>_quick.json`` for the reduced one."""
    if size not in SIZES:
        raise ValueError(f"size: expected one of {SIZES}, got {size!r}")
    folder = Path(directory) if directory is not None else RESULTS_DIR
    return folder / (f"{name}.json" if size == "full" else f"{name}_{size}.json")


def summarize(per_seed: list[dict]) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation, min, max and count of every numeric key except ``seed``."""
    if not per_seed:
        raise ValueError("per_seed: expected at least one seed's numbers, got an empty list")
    keys = [k for k in per_seed[0] if k != "seed"]
    summary = {}
    for key in keys:
        values = [float(row[key]) for row in per_seed]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"per_seed: {key!r} has a non-finite value {values}")
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        summary[key] = {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": n}
    return summary


def write_result(
    name: str,
    *,
    size: str,
    command: str,
    config: dict,
    seeds: list[int],
    per_seed: list[dict],
    directory: str | Path | None = None,
) -> Path:
    """Write ``results/<name>[_quick].json`` (see the module docstring); returns the path."""
    if [row.get("seed") for row in per_seed] != list(seeds):
        raise ValueError(
            f"per_seed: expected one row per seed in the order {list(seeds)}, "
            f"got seeds {[row.get('seed') for row in per_seed]}"
        )
    keys = set(per_seed[0])
    for row in per_seed:
        if set(row) != keys:
            raise ValueError(f"per_seed: every row needs the same keys; {sorted(keys)} vs {sorted(row)}")
    record = {
        "name": name,
        "size": size,
        "command": command,
        "config": config,
        "seeds": list(seeds),
        "per_seed": per_seed,
        "summary": summarize(per_seed),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}",
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }
    path = result_path(name, size=size, directory=directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)
    return path


# results written by a module outside xlnet_ref/experiments (the others: python -m xlnet_ref.experiments.<name>)
WRITERS = {"copy_task_one_layer_bound": "python -m xlnet_ref.training.tasks --seeds 0 1 2"}


def load_result(name: str, *, size: str = "full", directory: str | Path | None = None) -> dict:
    """Read a result file; a clear error if it is missing or its summary disagrees with its per-seed numbers."""
    path = result_path(name, size=size, directory=directory)
    if not path.is_file():
        command = WRITERS.get(name, f"python -m xlnet_ref.experiments.{name} --size {size}")
        raise FileNotFoundError(f"{path}: no recorded result; run the command that writes it ({command})")
    record = json.loads(path.read_text())
    for field in ("config", "seeds", "per_seed", "summary"):
        if field not in record:
            raise ValueError(f"{path}: missing field {field!r}")
    again = summarize(record["per_seed"])
    for key, stats in again.items():
        if not math.isclose(stats["mean"], record["summary"][key]["mean"], rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(f"{path}: summary of {key!r} does not match its per-seed numbers")
    return record


def consistent_with_seeds(value: float, result: dict, key: str, *, floor: float = 1e-4) -> bool:
    """Is ``value`` what a re-run of a recorded seed may give on another machine? True iff it lies in the
    recorded seeds' [min, max] of ``key`` widened on each side by their sample standard deviation (at
    least ``floor``).

    This is what a live re-run can check on any machine. The same seed on another CPU, with other kernels
    (``ATEN_CPU_CAPABILITY``) or another thread count rounds differently, and training can carry that
    further: the number moves (benchmarks/live_rerun_drift.py measures by how much). Rounding alone is
    unlikely to push it outside the widened range; a number outside points to a change in the code or
    the data. A change smaller than the spread between seeds is not detected. ``floor`` covers
    quantities that do not vary between seeds (exact floors, count models): float round-off only.
    """
    stats = result["summary"][key]
    margin = max(stats["std"], floor)
    return stats["min"] - margin <= value <= stats["max"] + margin


def live_against_recorded(live: dict, result: dict, seed: int, keys=None, *, floor: float = 1e-4) -> tuple[str, bool]:
    """A live re-run of one recorded seed against the record: a table (key, the recorded number of that
    seed, the live one, the recorded seeds' range, :func:`consistent_with_seeds`) and whether every key
    is consistent. ``keys`` default to every recorded key the live run has."""
    recorded = next((row for row in result["per_seed"] if row["seed"] == seed), None)
    if recorded is None:
        raise ValueError(f"seed: expected one of the recorded seeds {result['seeds']}, got {seed!r}")
    keys = [k for k in recorded if k != "seed" and k in live] if keys is None else list(keys)
    width = max(len(k) for k in keys)
    lines = [
        f"{'':{width}}  {'recorded':>9} {'live':>8}  {'the ' + str(len(result['seeds'])) + ' recorded seeds':>24}",
        f"{'':{width}}  {'seed ' + str(seed):>9} {'seed ' + str(seed):>8}  {'min':>8} {'max':>7} {'std':>7}"
        "  consistent",
    ]
    ok = True
    for k in keys:
        s = result["summary"][k]
        good = consistent_with_seeds(live[k], result, k, floor=floor)
        ok = ok and good
        lines.append(
            f"{k:{width}}  {recorded[k]:9.4f} {live[k]:8.4f}  {s['min']:8.4f} {s['max']:7.4f} "
            f"{s['std']:7.4f}  {'yes' if good else 'NO'}"
        )
    return "\n".join(lines), ok
