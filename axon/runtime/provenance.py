"""Which axon a run used: the version and the git commit of the source tree, for the banner,
`python -m axon --version` and the header of OUT_DIR/config.yaml. Torch-free."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

import axon


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit the imported axon package was checked out at, `+dirty` when tracked files differ
    from it; "unknown" outside a git checkout (an installed wheel) or without git."""
    root = Path(axon.__file__).resolve().parent.parent
    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()

        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:
            return "unknown"  # axon is installed inside some other repository's tree
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def version_line() -> str:
    """`axon 0.1.0 (commit 0123456789ab)`."""
    return f"axon {axon.__version__} (commit {git_commit()})"
