"""Lab 06's five suspects: XLNet implementations with one hidden defect each, for the validator.

    python -m xlnet_ref.validate --against xlnet_ref.labs.suspects:suspect_a --brief

Each suspect is the reference with one of the known bugs of :mod:`xlnet_ref.validation.mutants` put in
(through :func:`~xlnet_ref.validation.mutants.mutant_adapter`). Which bug is not written here in
plain text: the suspect stores a fingerprint of the mutant's name, so that reading this file does
not give the lab's answers away. The graders (and the instructor) resolve it with :func:`_identity`.
"""

from __future__ import annotations

import hashlib

from ..validation.mutants import MUTANTS, mutant_adapter

SALT = "xlnet_ref lab 06 "
FINGERPRINTS = {  # suspect -> sha256(SALT + mutant name)[:16]
    "a": "1682a4ab7340ee00",
    "b": "7ba1ab589589986a",
    "c": "b28694ffec35719e",
    "d": "0b3229f2a61877bd",
    "e": "257b87749da366a7",
}


def fingerprint(mutant: str) -> str:
    return hashlib.sha256((SALT + mutant).encode()).hexdigest()[:16]


def _identity(suspect: str) -> str:
    """The mutant behind a suspect ('a' .. 'e'), found by matching fingerprints against MUTANTS.

    For the graders and the instructor; a student who calls it skips the lab."""
    key = suspect.lower()
    if key not in FINGERPRINTS:
        raise ValueError(f"suspect: expected one of {sorted(FINGERPRINTS)}, got {suspect!r}")
    names = [name for name in MUTANTS if fingerprint(name) == FINGERPRINTS[key]]
    if len(names) != 1:
        raise ValueError(f"suspect {suspect!r}: its mutant is no longer in xlnet_ref.validation.mutants.MUTANTS")
    return names[0]


def _suspect(key: str):
    def adapter(case):
        return mutant_adapter(_identity(key))(case)

    adapter.__name__ = f"suspect_{key}"
    adapter.__doc__ = f"Suspect {key.upper()}: the reference with one hidden bug (an adapter for xlnet_ref.validate)."
    return adapter


suspect_a = _suspect("a")
suspect_b = _suspect("b")
suspect_c = _suspect("c")
suspect_d = _suspect("d")
suspect_e = _suspect("e")
