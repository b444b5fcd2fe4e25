"""One rank of a launcher test: detect, initialize, all-reduce rank+1, write a JSON line.

Usage: launch_probe.py OUTFILE [VAR,VAR,...]. Run by tests/end_to_end/test_launchers.py under torchrun,
mpiexec and a fake srun; OUTFILE.rank{N} receives this rank's view of the world. The
optional VARs are removed from the environment before detection.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `axon`

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from axon.runtime.bootstrap import detect_launch, init_distributed, shutdown  # noqa: E402


def main(outfile: str, drop: list[str]) -> None:
    for name in drop:  # lets a test hide what a launcher exported, to reach the fallback path
        os.environ.pop(name, None)
    info = detect_launch()
    rt = init_distributed(info, timeout_s=60)
    x = torch.tensor([float(rt.rank + 1)], device=rt.device)
    dist.all_reduce(x)
    record = {
        "rank": rt.rank, "world_size": rt.world_size,
        "local_rank": rt.local_rank, "local_world_size": rt.local_world_size,
        "launcher": rt.launcher, "backend": rt.backend,
        "dist_rank": dist.get_rank(), "dist_world_size": dist.get_world_size(),
        "master_port": info.master_port, "num_threads": torch.get_num_threads(),
        "all_reduce": x.item(),
    }
    shutdown()
    Path(f"{outfile}.rank{rt.rank}").write_text(json.dumps(record) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(",") if len(sys.argv) > 2 else [])
