"""One two-stream training step of xlnet_ref against transformers' XLNetLMHeadModel, same weights, same inputs.

    python benchmarks/train_step_vs_hf.py            # CPU, float32, the issue's configuration (make bench)
    python benchmarks/train_step_vs_hf.py --compile  # ours under torch.compile (transformers stays eager)
    python benchmarks/train_step_vs_hf.py --implementation readable --adamw foreach   # the readable path
    python benchmarks/train_step_vs_hf.py --device cuda --dtype bf16   # when a GPU is lent

The two are timed in interleaved pairs (ours, theirs, ours, theirs, ...) in one process so that machine
noise hits both alike; the reported ratio is the median over pairs of t_hf / t_ours (> 1: we are faster).
A step is forward + PLM loss + backward + AdamW update, with a full memory of mem_len states.
Ours runs as ``python -m xlnet_ref.train`` runs it by default: the fast path (xlnet_ref.fast.XLNetLMHeadModel) and fused AdamW;
transformers runs as its users run it: eager, torch's default AdamW (foreach).
The fraction of the matmul peak is (FLOPs of one step, counted by torch.utils.flop_counter) / (median
step time) / (the best rate of one 2048^3 float32 matmul on this machine, best of 20 before and 20 after
the timed pairs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from xlnet_ref import XLNetConfig, XLNetLMHeadModel, fast
from xlnet_ref.interop import mems_to_hf, to_hf


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--num-predict", type=int, default=22)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--d-inner", type=int, default=1024)
    p.add_argument("--mem-len", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--pairs", type=int, default=15, help="timed (ours, transformers) pairs")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 = autocast on CUDA")
    p.add_argument("--implementation", default="fast", choices=["fast", "readable"], help="our attention path")
    p.add_argument("--adamw", default="fused", choices=["fused", "foreach"], help="our optimizer's kernel")
    p.add_argument("--compile", action="store_true", help="torch.compile our model (warm-up includes compiling)")
    return p.parse_args()


def make_batch(args, device, generator):
    b, t, k = args.batch, args.seq_len, args.num_predict
    ids = torch.randint(0, args.vocab_size, (b, t), generator=generator)
    # a factorization order per row; the last k positions of the order are the targets (partial prediction)
    perm_mask = torch.zeros(b, t, t)
    target_mapping = torch.zeros(b, k, t)
    for row in range(b):
        order = torch.randperm(t, generator=generator)
        rank = torch.empty(t, dtype=torch.long)
        rank[order] = torch.arange(t)
        # i may not see j when j comes at or after i in the order (query stream view)
        perm_mask[row] = (rank[None, :] >= rank[:, None]).float()
        target_mapping[row, torch.arange(k), order[-k:]] = 1.0
    labels = ids.gather(1, target_mapping.argmax(-1))
    tt = torch.zeros(b, t, dtype=torch.long)
    tt[:, t // 2 :] = 1
    batch = dict(input_ids=ids, perm_mask=perm_mask, target_mapping=target_mapping, token_type_ids=tt)
    return {k_: v.to(device) for k_, v in batch.items()}, labels.to(device)


def step_fn(model, opt, batch, labels, mems, *, is_hf, autocast):
    """One training step; returns the loss."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=labels.device.type, dtype=torch.bfloat16, enabled=autocast):
        if is_hf:
            logits = model(**batch, mems=mems, use_mems=True).logits
        else:
            skip = {"content_output": False} if isinstance(model, fast.XLNetLMHeadModel) else {}  # as train.py
            logits = model(**batch, mems=mems, **skip).logits  # the loss needs only g
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak_gflops(device, dtype) -> float:
    n = 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, best = 20, float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def main():
    args = parse_args()
    device = torch.device(args.device)
    autocast = args.dtype == "bf16"
    torch.manual_seed(0)
    cfg = XLNetConfig(
        vocab_size=args.vocab_size,
        d_model=args.d_model,
        n_layer=args.n_layer,
        n_head=args.n_head,
        d_inner=args.d_inner,
        mem_len=args.mem_len,
        dropout=0.1,
    )
    ours = (fast.XLNetLMHeadModel if args.implementation == "fast" else XLNetLMHeadModel)(cfg).to(device).train()
    theirs = to_hf(ours).to(device).train()
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=args.adamw == "fused")
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    mems = [torch.randn(args.batch, args.mem_len, args.d_model, device=device) for _ in range(args.n_layer)]
    batch, labels = make_batch(args, device, gen)
    peak_before = matmul_peak_gflops(device, torch.bfloat16 if autocast else torch.float32)

    with FlopCounterMode(display=False) as counter:
        step_fn(ours, opt_ours, batch, labels, mems, is_hf=False, autocast=autocast)
    flops_ours = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        step_fn(theirs, opt_theirs, batch, labels, mems_to_hf(mems), is_hf=True, autocast=autocast)
    flops_theirs = counter.get_total_flops()
    if args.compile:  # after counting: the counter sees the eager operations (compiling does not change them)
        ours = torch.compile(ours)

    for _ in range(args.warmup):
        step_fn(ours, opt_ours, batch, labels, mems, is_hf=False, autocast=autocast)
        step_fn(theirs, opt_theirs, batch, labels, mems_to_hf(mems), is_hf=True, autocast=autocast)
    t_ours, t_theirs = [], []
    for _ in range(args.pairs):
        for model, opt, m, is_hf, times in (
            (ours, opt_ours, mems, False, t_ours),
            (theirs, opt_theirs, mems_to_hf(mems), True, t_theirs),
        ):
            sync(device)
            t0 = time.perf_counter()
            step_fn(model, opt, batch, labels, m, is_hf=is_hf, autocast=autocast)
            sync(device)
            times.append(time.perf_counter() - t0)
    ratios = [th / to for th, to in zip(t_theirs, t_ours)]
    tokens = args.batch * args.seq_len
    # the best rate seen before and after the pairs: on a shared machine a single measurement can be low
    peak = max(peak_before, matmul_peak_gflops(device, torch.bfloat16 if autocast else torch.float32))
    med_ours, med_theirs = statistics.median(t_ours), statistics.median(t_theirs)
    dev_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"device: {dev_name}; torch {torch.__version__}; dtype {args.dtype}; ours: implementation "
        f"{args.implementation}, AdamW {args.adamw}{', torch.compile' if args.compile else ''}; transformers: eager, AdamW foreach"
    )
    print(
        f"config: batch {args.batch}, seq_len {args.seq_len}, num_predict {args.num_predict}, d_model {args.d_model}, "
        f"n_layer {args.n_layer}, n_head {args.n_head}, d_inner {args.d_inner}, mem_len {args.mem_len}, vocab {args.vocab_size}"
    )
    print(f"{'':14s}{'median step':>12s}{'tokens/s':>11s}{'GFLOP/step':>12s}{'GFLOP/s':>9s}{'of peak':>9s}")
    for name, med, fl in (("xlnet_ref", med_ours, flops_ours), ("transformers", med_theirs, flops_theirs)):
        print(
            f"{name:14s}{med * 1e3:10.1f}ms{tokens / med:11.0f}{fl / 1e9:12.2f}{fl / med / 1e9:9.1f}"
            f"{fl / med / 1e9 / peak:9.0%}"
        )
    print(f"measured matmul peak ({'bf16' if autocast else 'fp32'}, 2048^3, best of 40 calls): {peak:.1f} GFLOP/s")
    print(
        f"throughput ratio xlnet_ref / transformers (median of {args.pairs} interleaved pairs): "
        f"{statistics.median(ratios):.2f}x  (min {min(ratios):.2f}, max {max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
