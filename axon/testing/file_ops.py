"""Count the file-system operations one process makes (tests and benchmarks/scale_counts.py).

Python's audit events report opens, renames, removals and directory creation and listing
(sys.addaudithook, which cannot be removed: the hook counts only inside `FileOps`); stat has
no audit event, so os.stat is wrapped while counting. pathlib's stat, exists, is_file and
os.path's checks all go through os.stat.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

# The audit events counted, by the name the count goes under.
EVENTS = {"open": "open", "os.rename": "rename", "os.remove": "unlink", "os.mkdir": "mkdir",
          "os.rmdir": "rmdir", "os.scandir": "list", "os.listdir": "list"}


class FileOps:
    """`with FileOps() as ops:` ... then ops.counts: Counter of open, open_write, rename, unlink,
    mkdir, rmdir, list and stat made by this process meanwhile (any thread). Paths outside
    `under` (if given) are not counted: Python's own imports open files too."""

    _active: list["FileOps"] = []
    _hooked = False

    def __init__(self, under: str | os.PathLike | None = None):
        self.under = None if under is None else os.fspath(under)
        self.counts: Counter = Counter()

    def _counts(self, path) -> bool:
        try:
            return self.under is None or os.fspath(path).startswith(self.under)
        except TypeError:  # an open by file descriptor
            return False

    @classmethod
    def _audit(cls, event: str, args) -> None:
        name = EVENTS.get(event)
        if name is None or not cls._active:
            return
        for ops in cls._active:
            if args and ops._counts(args[0]):
                writes = name == "open" and len(args) > 1 and (
                    (isinstance(args[1], str) and any(c in args[1] for c in "wax+"))
                    or (isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR)))
                ops.counts["open_write" if writes else name] += 1

    def __enter__(self) -> "FileOps":
        if not FileOps._hooked:
            sys.addaudithook(FileOps._audit)
            FileOps._hooked = True
        if not FileOps._active:
            real_stat = os.stat

            def counted_stat(path, *args, **kwargs):
                for ops in FileOps._active:
                    if ops._counts(path):
                        ops.counts["stat"] += 1
                return real_stat(path, *args, **kwargs)

            self._real_stat, os.stat = real_stat, counted_stat
        FileOps._active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        FileOps._active.remove(self)
        if hasattr(self, "_real_stat"):
            os.stat = self._real_stat
