"""Result files of seeded experiments: summary from per-seed numbers, round trip, clear errors."""

import json
import statistics

import pytest

from xlnet_ref.experiments.common import (
    consistent_with_seeds,
    load_result,
    result_path,
    summarize,
    write_result,
)


def test_summary_is_mean_and_sample_std_of_the_seeds():
    rows = [{"seed": 0, "loss": 2.0}, {"seed": 1, "loss": 2.5}, {"seed": 2, "loss": 3.5}]
    s = summarize(rows)["loss"]
    assert s["mean"] == pytest.approx(statistics.mean([2.0, 2.5, 3.5]))
    assert s["std"] == pytest.approx(statistics.stdev([2.0, 2.5, 3.5]))
    assert (s["min"], s["max"], s["n"]) == (2.0, 3.5, 3)


def test_round_trip_and_spread(tmp_path):
    rows = [{"seed": s, "acc": 0.5 + 0.1 * s} for s in (0, 1, 2)]
    path = write_result(
        "toy", size="quick", command="cmd", config={"a": 1}, seeds=[0, 1, 2], per_seed=rows, directory=tmp_path
    )
    assert path == result_path("toy", size="quick", directory=tmp_path)
    record = load_result("toy", size="quick", directory=tmp_path)
    assert record["config"] == {"a": 1} and record["seeds"] == [0, 1, 2]
    assert consistent_with_seeds(0.6, record, "acc") and not consistent_with_seeds(0.9, record, "acc")


def test_consistent_with_seeds_widens_the_range_by_one_std(tmp_path):
    rows = [{"seed": s, "acc": 0.5 + 0.1 * s, "floor": 1.25} for s in (0, 1, 2)]  # acc: min 0.5, max 0.7, std 0.1
    write_result("toy", size="quick", command="cmd", config={}, seeds=[0, 1, 2], per_seed=rows, directory=tmp_path)
    record = load_result("toy", size="quick", directory=tmp_path)
    assert consistent_with_seeds(0.41, record, "acc") and consistent_with_seeds(0.79, record, "acc")
    assert not consistent_with_seeds(0.39, record, "acc") and not consistent_with_seeds(0.81, record, "acc")
    # a quantity with no spread between seeds: round-off (floor) only
    assert consistent_with_seeds(1.25 + 5e-5, record, "floor") and not consistent_with_seeds(1.2502, record, "floor")


def test_bad_records_are_refused(tmp_path):
    with pytest.raises(ValueError, match="one row per seed"):
        write_result(
            "x", size="full", command="c", config={}, seeds=[0, 1], per_seed=[{"seed": 0, "v": 1.0}], directory=tmp_path
        )
    with pytest.raises(ValueError, match="non-finite"):
        summarize([{"seed": 0, "v": float("nan")}])
    with pytest.raises(FileNotFoundError, match="no recorded result"):
        load_result("absent", directory=tmp_path)
    path = write_result(
        "y", size="full", command="c", config={}, seeds=[0], per_seed=[{"seed": 0, "v": 1.0}], directory=tmp_path
    )
    record = json.loads(path.read_text())
    record["summary"]["v"]["mean"] = 9.0  # hand-edited summary no longer matches the seeds
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="does not match"):
        load_result("y", directory=tmp_path)


def test_a_missing_result_names_the_command_that_writes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m xlnet_ref\.experiments\.memory_on_text --size quick"):
        load_result("memory_on_text", size="quick", directory=tmp_path)
    # written by the copy task's module, not by an experiments module
    with pytest.raises(FileNotFoundError, match=r"python -m xlnet_ref\.training\.tasks --seeds 0 1 2"):
        load_result("copy_task_one_layer_bound", directory=tmp_path)
