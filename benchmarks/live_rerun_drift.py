"""How far a live re-run of a recorded seed moves on this machine: the notebooks' live checks, measured.

    python benchmarks/live_rerun_drift.py                       # torch's default kernels for this CPU
    ATEN_CPU_CAPABILITY=default python benchmarks/live_rerun_drift.py   # other kernels: other rounding

Re-runs, on one thread, the seed that each notebook re-runs (01: memory_on_text quick seed 0; 03:
plm_vs_ar_vs_independent full seed 0; 04: two_stream_vs_target_blind quick seed 0; 06: pretraining quick
seed 0; 08: finetune quick seed 0, its backbone pretrained afresh in a temporary folder) and prints, per
experiment, the largest |live - recorded| over its numbers, that difference in units of the recorded
seeds' standard deviation, and whether every number passes the notebooks' check
(experiments.common.consistent_with_seeds). A script, not a test: about five minutes on 2 CPU cores.
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from xlnet_ref.experiments import finetune, memory_on_text, plm_vs_ar_vs_independent, pretraining
from xlnet_ref.experiments.common import consistent_with_seeds, load_result
from xlnet_ref.experiments.two_stream_vs_target_blind import two_stream_vs_target_blind_seed


def compare(name: str, size: str, live: dict, *, floor: float = 1e-4) -> str:
    record = load_result(name, size=size)
    recorded = next(row for row in record["per_seed"] if row["seed"] == 0)
    keys = [k for k in recorded if k != "seed" and k in live and not k.endswith("seconds")]  # not wall-clock times
    worst = max(keys, key=lambda k: abs(live[k] - recorded[k]))
    diff = abs(live[worst] - recorded[worst])
    std = record["summary"][worst]["std"]
    ok = all(consistent_with_seeds(live[k], record, k, floor=floor) for k in keys)
    in_std = f"{diff / std:.2f} std" if std > 0 else "(std 0)"
    return f"{name:<28} {size:<6} {len(keys):>3} numbers  max |live - recorded| {diff:.5f} ({worst}; {in_std})  check: {'pass' if ok else 'FAIL'}"


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> int:
    torch.set_num_threads(1)
    print(
        f"machine: {platform.machine()}, {cpu_model()}; torch {torch.__version__}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, 1 thread"
    )
    start = time.perf_counter()
    rows = [
        compare("memory_on_text", "quick", memory_on_text.memory_on_text_seed(0, size="quick")),
        compare("plm_vs_ar_vs_independent", "full", plm_vs_ar_vs_independent.plm_vs_ar_vs_independent_seed(0)),
        compare("two_stream_vs_target_blind", "quick", two_stream_vs_target_blind_seed(0, size="quick")),
        compare("pretraining", "quick", pretraining.pretraining_seed(0, size="quick")),
    ]
    with tempfile.TemporaryDirectory() as runs:  # a backbone pretrained here, not one cached under runs/
        finetune.RUNS = Path(runs)
        live = finetune.run("quick", seeds=[0], write=False, log=None)["per_seed"][0]
        n_eval = finetune.SIZES["quick"]["finetune"]["n_eval"]
        rows.append(compare("finetune", "quick", live, floor=2 / n_eval))
    print("\n".join(rows))
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
