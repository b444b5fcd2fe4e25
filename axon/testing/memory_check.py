"""The rule the dry-run tests hold memory to: the dry run's measured peak against perfmodel's.

Shared by tests/planning/test_dry_run.py and test_memory_agreement.py (tests share helpers
through the package, not through each other).
"""

from __future__ import annotations

COMPONENTS = ("gathered_weights", "activations", "gradient_blocks", "total")


def assert_memory_agrees(result: dict, within: float = 5.0) -> None:
    """Parameters, gradients and optimizer state equal; every other component and the total
    within `within` percent (or both none). `result` is one rank's dry-run record."""
    measured, predicted = result["memory_bytes"], result["perfmodel_memory_bytes"]
    where = f"rank {result['rank']} (stage {result['stage']})"
    for key in ("parameters", "gradients", "optimizer"):
        assert measured[key] == predicted[key], (where, key, measured[key], predicted[key])
    for key in COMPONENTS:
        diff = result["memory_diff_percent"][key]
        if diff is None:
            assert predicted[key] == 0, (where, key, predicted[key])
        else:
            assert abs(diff) < within, (where, key, measured[key], predicted[key], f"{diff:+.1f}%")
