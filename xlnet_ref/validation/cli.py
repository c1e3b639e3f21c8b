r"""The two command lines: ``python -m xlnet_ref.validate`` and ``python -m xlnet_ref.golden``.

    python -m xlnet_ref.validate --against hf                  # transformers' XLNet, same weights
    python -m xlnet_ref.validate --against my_pkg.my_mod:run   # your implementation, via an adapter
    python -m xlnet_ref.validate --against examples/my_xlnet_adapter.py:run --golden golden
    python -m xlnet_ref.validate --against mutant:no_rel_shift # a known bug (mutants.py)
    python -m xlnet_ref.validate --list-mutants | --list-cases
    python -m xlnet_ref.golden write | check [--dir golden]

Exit status: 0 every stage of every case passes; 1 a failure (the report names the first departure);
2 a usage or file error (a module that does not import, a missing or damaged golden folder): one
line on stderr, no traceback. ``--traceback`` shows an adapter's full exception in the report.
For an implementation that is not PyTorch, write an outputs file and run golden/compare.py instead
(docs/validate.md).
"""

from __future__ import annotations

import argparse
import sys

import torch

from .cases import SPECS, builtin_cases
from .golden import DEFAULT_DIR, golden_size, read_cases, write_golden
from .mutants import MUTANTS
from .validate import check_reproduction, first_departure, format_report, load_adapter, validate


def _one_thread(run, args) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny cases: more threads only spin-wait (the bytes are the same)
    try:
        return run(args)
    except ValueError as error:  # usage and file errors (GoldenError, a bad --against): one line
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)


def validate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xlnet_ref.validate",
        description="Compare an XLNet implementation with the reference, stage by stage (docs/validate.md).",
    )
    parser.add_argument(
        "--against", default="hf", help="hf | ref | mutant:NAME | module:callable | path/file.py:callable (default: hf)"
    )
    parser.add_argument(
        "--golden",
        metavar="DIR",
        help="take the expected stages from this golden directory instead of running the reference",
    )
    parser.add_argument("--case", action="append", metavar="NAME", help="only this case (repeatable)")
    parser.add_argument(
        "--layout",
        choices=["batch_first", "length_first"],
        default="batch_first",
        help="length_first: the adapter returns the original code's [i, b, ...] layouts",
    )
    parser.add_argument("--brief", action="store_true", help="print only the failing stages of each case")
    parser.add_argument("--traceback", action="store_true", help="show the adapter's full exception")
    parser.add_argument("--list-cases", action="store_true")
    parser.add_argument("--list-mutants", action="store_true")
    return _one_thread(_validate, parser.parse_args(argv))


def _validate(args) -> int:
    if args.list_cases:
        for spec in SPECS:
            print(f"{spec.name:<24} {spec.description}")
        return 0
    if args.list_mutants:
        for m in MUTANTS.values():
            print(f"{m.name:<32} {m.bug}\n{'':<32} caught in case {m.expected_case}, at {m.expected_stage}")
        return 0
    adapter = load_adapter(args.against)
    cases = read_cases(args.golden, args.case) if args.golden else builtin_cases(args.case)
    results = validate(adapter, cases, length_first=args.layout == "length_first")
    print(format_report(results, against=args.against, brief=args.brief, show_traceback=args.traceback))
    return 0 if first_departure(results) is None else 1


def golden_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xlnet_ref.golden", description="Write or check the golden files (golden/README.md)."
    )
    parser.add_argument(
        "command",
        choices=["write", "check"],
        help="write: regenerate the golden files; check: does the reference reproduce them?",
    )
    parser.add_argument("--dir", default=str(DEFAULT_DIR), help="golden directory (default: %(default)s)")
    return _one_thread(_golden, parser.parse_args(argv))


def _golden(args) -> int:
    if args.command == "write":
        directory = write_golden(args.dir)
        sizes = golden_size(directory)
        for name, size in sizes.items():
            print(f"{size:>9,d}  {directory / name}")
        print(f"{sum(sizes.values()):>9,d}  bytes in all")
        return 0
    return check_reproduction(args.dir)
