"""Smoke test of bench/kernel_floor.py: the floor compiles and runs beside the kernel, and the report's
figures are all there (the real figures come from `python bench/kernel_floor.py`)."""
import kernel_floor


def test_kernel_and_floor_are_timed_side_by_side():
    results = kernel_floor.measure(rounds=1, reps=1)
    assert set(results) == {*kernel_floor.VIEWS, "all nine"}
    for r in results.values():
        assert r["floor ms"] > 0 and r["kernel ms"] > 0 and r["end to end ms"] >= r["kernel ms"] * 0.5
        assert r["kernel / floor"] > 0 and r["end to end / floor"] > 0
    assert len(kernel_floor.fresh("7d")) == 3
