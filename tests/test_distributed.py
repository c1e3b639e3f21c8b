"""DistributedDataParallel under torchrun: 2 CPU processes (gloo) give the weights of 1 process at the same
global batch, with dropout 0, to float32 round-off; only rank 0 reports; a 2-rank run resumes on 1 rank."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from xlnet_ref.pretraining_data import PLMBatch
from xlnet_ref.training import distributed
from xlnet_ref.training.train import main

# the tiny preset's model, 4 steps of 4 rows x 40 tokens, no dropout, no evaluation before the end
ARGS = [
    "--preset",
    "tiny",
    "--steps",
    "4",
    "--warmup-steps",
    "1",
    "--batch-size",
    "4",
    "--seq-len",
    "40",
    "--dropout",
    "0",
    "--eval-every",
    "0",
    "--checkpoint-every",
    "2",
    "--device",
    "cpu",
    "--no-progress",
]


def weights(run_dir, step):
    return load_file(str(run_dir / f"checkpoint-{step:07d}" / "model.safetensors"))


def mems(run_dir, step):
    return load_file(str(run_dir / f"checkpoint-{step:07d}" / "mems.safetensors"))


def torchrun(args, *, nproc: int, timeout: int = 300):
    """python -m torch.distributed.run (torchrun) with this interpreter, one thread per process."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "xlnet_ref.train",
        *args,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def assert_close(a: dict, b: dict, what: str, tol: float = 1e-5):
    assert a.keys() == b.keys()
    for name in a:
        err = float((a[name] - b[name]).abs().max() / b[name].abs().max().clamp_min(1e-30))
        assert err <= tol, f"{what}: {name} differs by {err:.2e} (relative)"


def test_two_ranks_give_the_weights_of_one_and_resume_on_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*ARGS, "--out", str(one)]) == 0
    done = torchrun([*ARGS, "--out", str(two)], nproc=2)
    assert "2 ranks of 2 rows" in done.stdout + done.stderr  # it really ran on two ranks
    assert done.stdout.count("done in ") == 1 and done.stdout.count("checkpoint: ") == 1  # rank 0 reports
    for step in (2, 4):
        assert_close(weights(two, step), weights(one, step), f"2 ranks vs 1 at step {step}")
        assert_close(mems(two, step), mems(one, step), f"memory (all rows, global order) at step {step}")
    # the comparison can fail: one more step is a different model
    w2, w4 = weights(one, 2), weights(one, 4)
    assert max(float((w2[n] - w4[n]).abs().max()) for n in w2) > 1e-4

    # resume the 2-rank run's step-2 checkpoint on 1 rank: the same weights at step 4
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    import shutil

    shutil.copytree(two / "checkpoint-0000002", resumed / "checkpoint-0000002")
    assert main(["--resume", str(resumed), "--no-progress"]) == 0
    assert_close(weights(resumed, 4), weights(one, 4), "2 ranks to step 2, then 1 rank to step 4")


def test_rows_of_keeps_each_half_and_gather_inverts_it():
    """bi_data: rank r keeps its chunk of the forward half and of the backward half, in that order."""
    b = 8
    batch = PLMBatch(*[torch.arange(b)[:, None].expand(b, 3).clone() for _ in range(8)])
    got = [
        distributed.rows_of(batch, distributed.World(rank=r, world_size=2), halves=2).input_ids[:, 0].tolist()
        for r in range(2)
    ]
    assert got == [[0, 1, 4, 5], [2, 3, 6, 7]]
    got = [
        distributed.rows_of(batch, distributed.World(rank=r, world_size=2), halves=1).input_ids[:, 0].tolist()
        for r in range(2)
    ]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7]]
    global_mems = [torch.arange(b * 2.0).view(b, 2, 1)]
    for halves in (1, 2):
        parts = [
            distributed.local_mems(global_mems, distributed.World(rank=r, world_size=2), halves=halves)[0]
            for r in range(2)
        ]
        # gather_rows' regrouping, without a process group: chunk each part per half, interleave ranks
        chunks = [p.chunk(halves) for p in parts]
        back = torch.cat([chunks[r][h] for h in range(halves) for r in range(2)])
        assert torch.equal(back, global_mems[0])


def test_world_from_env_and_batch_size_errors():
    assert distributed.world_from_env({}) == distributed.World()
    assert distributed.world_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).rank == 1
    with pytest.raises(ValueError, match="RANK < WORLD_SIZE"):
        distributed.world_from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="batch_size: expected a multiple of 4"):
        distributed.check_batch_size(6, distributed.World(rank=0, world_size=2), halves=2)
