"""`python -m axon dry-run`: the engine's per-rank state at target scale, beside perfmodel."""

from axon.planning.dry_run.cli import main

__all__ = ["main"]
