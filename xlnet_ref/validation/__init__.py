"""Checking another XLNet implementation against this one, stage by stage.

    golden.py    the built-in cases and the golden files in golden/  (python -m xlnet_ref.golden)
    validate.py  reference stages, adapters, comparison, report      (python -m xlnet_ref.validate)
    mutants.py   known bugs of XLNet implementations, for testing the validator
"""
