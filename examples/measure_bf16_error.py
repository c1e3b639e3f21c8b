"""How far is a bfloat16 forward/backward from the float32 golden stages? (the tolerance guidance in
golden/README.md). The reference itself, cast to bfloat16 on the CPU, is compared with every float32
golden case; prints the worst relative error per kind of stage (max over layers and cases).

    python examples/measure_bf16_error.py
"""

from __future__ import annotations

from dataclasses import replace

import torch

from xlnet_ref.validation.golden import read_cases
from xlnet_ref.validation.reference import build_reference, reference_outputs
from xlnet_ref.validation.validate import compare_stage


def to_bf16(case):
    inputs = {
        k: (
            [m.to(torch.bfloat16).requires_grad_() for m in v]
            if k == "mems"
            else v.to(torch.bfloat16)
            if v.is_floating_point()
            else v
        )
        for k, v in case.inputs.items()
    }
    return replace(case, inputs=inputs)


def main() -> None:
    torch.set_num_threads(1)
    worst: dict[str, float] = {}
    for case in read_cases():
        if case.dtype != "float32" or case.expect_error:
            continue
        outputs = reference_outputs(build_reference(case).to(torch.bfloat16), to_bf16(case))
        tm = case.inputs.get("target_mapping")
        valid = tm.sum(-1) > 0 if tm is not None else None
        for name, expected in case.expected.items():
            if name not in outputs or expected.dtype == torch.bool:
                continue
            r = compare_stage(name, expected, outputs[name].float(), rtol=1.0, atol=0.0, huge=1e15, valid_rows=valid)
            kind = "grad.*" if name.startswith("grad.") else name.split(".", 1)[1] if name.startswith("layer") else name
            if r.max_rel is not None:
                worst[kind] = max(worst.get(kind, 0.0), r.max_rel)
    for kind, err in sorted(worst.items(), key=lambda kv: -kv[1]):
        print(f"{kind:<20} {err:.1e}")


if __name__ == "__main__":
    main()
