"""ConfigError: every mistake a user can make in a run's config, layout or data."""

from __future__ import annotations

from contextlib import contextmanager


class ConfigError(ValueError):
    """A mistake in the user's config, layout or data, stated in one sentence."""


@contextmanager
def config_errors():
    """Turn the ValueError of a shared rule (axon.spec: a shape, a layout, a section's keys)
    into a ConfigError with the same sentence."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from None


def error_line(command: str, message: str, rank: int | None = None) -> str:
    """Every command's one style for an error a user caused: `axon COMMAND: error: SENTENCE`, with the
    rank in front of the sentence where several ranks may say it (they exit 2: axon.runtime.exit_codes)."""
    return f"axon {command}: error: " + (f"rank {rank}: " if rank is not None else "") + message
