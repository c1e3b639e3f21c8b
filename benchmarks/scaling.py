"""Time and peak memory per step, xlnet_ref vs transformers, as the sequence and the memory grow.

    python benchmarks/scaling.py                      # CPU: seq_len 128..1024, memory 0 and = seq_len
    python benchmarks/scaling.py --device cuda        # GPU (peak = torch.cuda.max_memory_allocated)
    python benchmarks/scaling.py --dry-run            # tiny sizes, 1 repetition: checks the script runs

Every (implementation, seq_len, memory length) runs in its own subprocess, so that one measurement's
memory cannot hide another's. In it: build the model and the inputs, then
* forward only (no_grad, eval mode): one warm-up, then ``--reps`` timed calls;
* a training step (forward, PLM loss, backward, AdamW): one warm-up, then ``--reps`` timed steps.
The time reported is the fastest of the ``--reps`` calls: on a shared machine other processes only ever
add time, and the two implementations run minutes apart, so a median would carry their load into the
growth ratios below.
Peak memory on CPU is the process's peak resident set (VmHWM, reset through /proc/self/clear_refs
after the warm-up of each mode) above the resident set at that moment, i.e. what the timed calls
needed beyond the weights, inputs and optimizer state; glibc is told to map every block above 64 KiB
on its own and give it back when freed (MALLOC_ENV), so the resident set follows the live tensors
instead of what the allocator keeps. That setting makes every large allocation a fresh mapping whose
pages fault in, which slows a step 2-3x, so on CPU every setting runs twice: times come from a process
with glibc's default allocator, peaks from one with MALLOC_ENV. On CUDA the peak is the allocator's
above the memory held after the warm-up (``torch.cuda.max_memory_allocated``), from the same process.

Ours runs as ``python -m xlnet_ref.train`` runs it by default (fast path, fused AdamW); transformers eager with its default AdamW.
Two-stream inputs as in train_step_vs_hf.py: a random factorization order per row, seq_len // 6 targets.
Results go to a JSON file (--out) and a figure (--figure); the Markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# glibc: every block above 64 KiB is its own mmap, returned to the system when freed (no dynamic
# threshold, no retained heap), so that the resident set follows the live tensors
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[128, 256, 512, 1024])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--d-inner", type=int, default=512)
    p.add_argument("--vocab-size", type=int, default=1000)
    p.add_argument(
        "--reps",
        type=int,
        default=5,
        help="timed repetitions per mode; the fastest is reported (other processes only ever add time)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in each subprocess (default 1: on a shared 2-core machine two threads per "
        "process made single calls vary 10-40x; 0 = torch's default)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(HERE / "scaling_results.json"))
    p.add_argument("--figure", default=str(HERE.parent / "figures" / "scaling.png"))
    p.add_argument("--dry-run", action="store_true", help="seq_len 16 and 32, tiny model, 1 rep: a syntax/run check")
    p.add_argument("--child", help=argparse.SUPPRESS)  # JSON of one measurement (internal)
    args = p.parse_args(argv)
    if args.dry_run:
        args.seq_lens, args.d_model, args.n_layer, args.d_inner, args.vocab_size, args.reps = [16, 32], 32, 1, 64, 50, 1
    return args


# ------------------------------------------------------------------------------------- one measurement
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> int:
    """Reset the peak resident set (Linux: write 5 to /proc/self/clear_refs) and return the resident set now."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    return _status_kib("VmHWM") * 1024


def measure(spec: dict) -> dict:
    """Runs in the subprocess: time and peak memory of forward and of a training step for one setting."""
    import torch

    sys.path.insert(0, str(HERE))
    from train_step_vs_hf import make_batch, step_fn, sync

    from xlnet_ref import XLNetConfig
    from xlnet_ref.fast import XLNetLMHeadModel
    from xlnet_ref.interop import mems_to_hf, to_hf

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    cfg = XLNetConfig(
        vocab_size=spec["vocab_size"],
        d_model=spec["d_model"],
        n_layer=spec["n_layer"],
        n_head=spec["n_head"],
        d_inner=spec["d_inner"],
        mem_len=spec["mem_len"] or None,
        dropout=0.1,
    )
    ours = XLNetLMHeadModel(cfg)  # the fast path (the same parameters as the readable class)
    is_hf = spec["impl"] == "transformers"
    model = (to_hf(ours) if is_hf else ours).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({} if is_hf else {"fused": True}))
    batch_args = argparse.Namespace(
        batch=spec["batch"],
        seq_len=spec["seq_len"],
        num_predict=max(1, spec["seq_len"] // 6),
        vocab_size=spec["vocab_size"],
    )
    batch, labels = make_batch(batch_args, device, torch.Generator().manual_seed(0))
    mems = None
    if spec["mem_len"]:
        mems = [
            torch.randn(spec["batch"], spec["mem_len"], spec["d_model"], device=device) for _ in range(spec["n_layer"])
        ]
        mems = mems_to_hf(mems) if is_hf else mems

    def peak_now():
        return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()

    def base_now():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            return torch.cuda.memory_allocated(device)
        return reset_peak_rss()

    def forward():
        with torch.no_grad():
            out = model(**batch, mems=mems, **({"use_mems": True} if is_hf else {}))
        return out.logits

    result = {}
    model.eval()
    forward()  # warm-up
    base = base_now()
    times = []
    for _ in range(spec["reps"]):
        sync(device)
        t0 = time.perf_counter()
        forward()
        sync(device)
        times.append(time.perf_counter() - t0)
    result["forward_ms"] = min(times) * 1e3  # the fastest call: interference only adds time
    result["forward_peak_mib"] = (peak_now() - base) / 2**20

    model.train()
    step_fn(model, opt, batch, labels, mems, is_hf=is_hf, autocast=False)  # warm-up (creates AdamW's state)
    base = base_now()
    times = []
    for _ in range(spec["reps"]):
        sync(device)
        t0 = time.perf_counter()
        step_fn(model, opt, batch, labels, mems, is_hf=is_hf, autocast=False)
        sync(device)
        times.append(time.perf_counter() - t0)
    result["train_ms"] = min(times) * 1e3
    result["train_peak_mib"] = (peak_now() - base) / 2**20
    return result


# -------------------------------------------------------------------------------------------- driver
def child(spec: dict, malloc_env: dict) -> dict:
    """One measurement in a fresh Python process (see measure)."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore", **malloc_env),
    )
    if done.returncode != 0:
        raise RuntimeError(f"measurement {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_all(args) -> list[dict]:
    rows = []
    for seq_len in args.seq_lens:
        for mem_len in (0, seq_len):
            for impl in ("xlnet_ref", "transformers"):
                spec = dict(
                    impl=impl,
                    seq_len=seq_len,
                    mem_len=mem_len,
                    batch=args.batch,
                    d_model=args.d_model,
                    n_layer=args.n_layer,
                    n_head=args.n_head,
                    d_inner=args.d_inner,
                    vocab_size=args.vocab_size,
                    reps=args.reps,
                    threads=args.threads,
                    device=args.device,
                )
                timed = child(spec, malloc_env={})  # times: the allocator as users run it
                measured = child(spec, malloc_env=MALLOC_ENV) if args.device == "cpu" else timed  # peaks
                row = {
                    **spec,
                    **{k: v for k, v in timed.items() if k.endswith("_ms")},
                    **{k: v for k, v in measured.items() if k.endswith("_mib")},
                }
                print(
                    f"{impl:12s} seq {seq_len:5d} mem {mem_len:5d}: forward {row['forward_ms']:9.1f} ms "
                    f"{row['forward_peak_mib']:8.1f} MiB | train {row['train_ms']:9.1f} ms "
                    f"{row['train_peak_mib']:8.1f} MiB",
                    flush=True,
                )
                rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """One Markdown table: a line per (seq_len, memory), ours and transformers side by side; then the
    growth between the two longest sequences (time and memory) per implementation. The two longest,
    because at the shortest the numbers are small (a few MiB, a few ms) and a ratio of them is noise."""
    by = {(r["impl"], r["seq_len"], r["mem_len"]): r for r in rows}
    seqs = sorted({r["seq_len"] for r in rows})
    lines = [
        "| seq_len | mem | fwd ms ours | fwd ms HF | fwd MiB ours | fwd MiB HF | train ms ours | train ms HF "
        "| train MiB ours | train MiB HF |",
        "|" + "---|" * 10,
    ]
    for s in seqs:
        for m in (0, s):
            a, b = by[("xlnet_ref", s, m)], by[("transformers", s, m)]
            lines.append(
                f"| {s} | {m} | {a['forward_ms']:.1f} | {b['forward_ms']:.1f} | {a['forward_peak_mib']:.1f} | "
                f"{b['forward_peak_mib']:.1f} | {a['train_ms']:.1f} | {b['train_ms']:.1f} | "
                f"{a['train_peak_mib']:.1f} | {b['train_peak_mib']:.1f} |"
            )
    lo, hi = (seqs[-2], seqs[-1]) if len(seqs) > 1 else (seqs[0], seqs[0])
    lines.append("")
    lines.append(
        f"Growth from seq_len {lo} to {hi}, read two ways: the ratio (value at {hi} / value at {lo}) and "
        f"what was added (value at {hi} - value at {lo}). Times get a 10% allowance for the noise between "
        "two subprocesses; memory gets none."
    )
    lines.append("")
    lines.append(
        "| memory | quantity | ratio ours | ratio HF | ratio: ours <= HF | added ours | added HF | added: ours <= HF |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for mem_name, mem_of in (("0", lambda s: 0), ("= seq_len", lambda s: s)):
        for key in ("forward_ms", "forward_peak_mib", "train_ms", "train_peak_mib"):
            ratio, added = {}, {}
            for impl in ("xlnet_ref", "transformers"):
                first, last = by[(impl, lo, mem_of(lo))][key], by[(impl, hi, mem_of(hi))][key]
                ratio[impl] = last / first if first > 0 else float("nan")
                added[impl] = last - first
            allowance = 1.10 if key.endswith("_ms") else 1.0
            ok_ratio = ratio["xlnet_ref"] <= ratio["transformers"] * allowance
            ok_added = added["xlnet_ref"] <= added["transformers"] * allowance
            unit = "ms" if key.endswith("_ms") else "MiB"
            lines.append(
                f"| {mem_name} | {key} | {ratio['xlnet_ref']:.2f}x | {ratio['transformers']:.2f}x | "
                f"{'yes' if ok_ratio else 'NO'} | {added['xlnet_ref']:.1f} {unit} | "
                f"{added['transformers']:.1f} {unit} | {'yes' if ok_added else 'NO'} |"
            )
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    seqs = sorted({r["seq_len"] for r in rows})
    for col, mode in enumerate(("forward", "train")):
        for row_i, (key, unit) in enumerate(((f"{mode}_ms", "ms per step"), (f"{mode}_peak_mib", "peak MiB"))):
            ax = axes[row_i, col]
            for impl, style in (("xlnet_ref", "-"), ("transformers", "--")):
                for mem_name, color in (("0", "tab:blue"), ("= seq_len", "tab:orange")):
                    ys = [
                        next(
                            r[key]
                            for r in rows
                            if r["impl"] == impl and r["seq_len"] == s and r["mem_len"] == (0 if mem_name == "0" else s)
                        )
                        for s in seqs
                    ]
                    ax.plot(
                        seqs,
                        [max(y, 1e-3) for y in ys],
                        style,
                        marker="o",
                        color=color,
                        label=f"{impl}, memory {mem_name}",
                    )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(seqs, [str(s) for s in seqs])
            ax.set_xlabel("seq_len")
            ax.set_ylabel(unit)
            ax.set_title(f"{'forward only' if mode == 'forward' else 'training step'}: {unit}")
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("xlnet_ref (solid) vs transformers (dashed): time and peak memory per step", fontsize=11)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return 0
    rows = run_all(args)
    settings = {
        k: getattr(args, k)
        for k in (
            "seq_lens",
            "batch",
            "d_model",
            "n_layer",
            "n_head",
            "d_inner",
            "vocab_size",
            "reps",
            "threads",
            "device",
            "dry_run",
        )
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    print()
    print(table(rows))
    if args.figure and args.figure != "none":
        plot(rows, args.figure)
        print(f"\nfigure: {args.figure}; results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
