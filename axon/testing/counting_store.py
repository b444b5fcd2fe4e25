"""An in-memory stand-in for the job's TCPStore that counts every operation the health monitor
makes (tests/runtime/test_health_counts.py, benchmarks/scale_counts.py)."""

from __future__ import annotations

import time

from axon.runtime.health import FINISHED


class CountingStore:
    """The TCPStore calls the monitor makes; a live rank's stamp moves at every read, a dead one's
    stays as it was (none, or the empty one a neighbour made), a finished one's reads "finished"."""

    def __init__(self, dead: set[int]):
        self.keys, self.dead, self.ops = {}, dead, 0

    def _value(self, key: str):
        if "/beat/" in key and self.keys.get(key) != FINISHED.encode():
            rank = int(key.rsplit("/", 1)[1])
            return self.keys.get(key) if rank in self.dead else str(time.monotonic_ns()).encode()
        return self.keys.get(key)

    def set(self, key, value):
        self.ops += 1
        self.keys[key] = str(value).encode()

    def check(self, keys):
        self.ops += 1
        return all(self._value(k) is not None for k in keys)

    def get(self, key):
        self.ops += 1
        return self._value(key)

    def multi_get(self, keys):
        self.ops += 1
        values = [self._value(k) for k in keys]
        assert None not in values, keys  # TCPStore would wait for a missing key: a beat must never read one
        return values

    def compare_set(self, key, expected, desired):
        self.ops += 1
        if self.keys.get(key, b"") == str(expected).encode():
            self.keys[key] = str(desired).encode()
        return self.keys[key]
