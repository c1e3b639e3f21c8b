"""Checking another XLNet implementation against this one, stage by stage.

Each module imports only the ones above it in this list (no circles):

    stages.py              stage names, layouts (axis letters) and meanings       (plain Python)
    compare.py             the comparison rule and golden/compare.py's CLI       (numpy + safetensors only)
    cases.py               the golden set: tiny configs, weights and inputs (SPECS, expected_stage_names)
    recorder.py            StageRecorder: capture a PyTorch model's stages by hooks, einsum/softmax calls
                           and named functions (torch only)
    reference.py           the reference's stages, recorded from the unchanged model (forward, gradients)
    mutants.py             known bugs of XLNet implementations, for testing the validator
    transformers_adapter.py  transformers' XLNet as an adapter (--against hf)
    adapters.py            running an adapter: the refusal rule, memory gradients, loading --against
    golden.py              the golden files: write, read and check them                (python -m xlnet_ref.golden)
    validate.py            judging each case, the report, check_reproduction
    cli.py                 the command lines                                          (python -m xlnet_ref.validate)
"""
