"""A cluster job runs from its own directory, not the checkout's root. From such a
directory, with `transformers` installed (it brings Hugging Face's own top-level `kernels`
package) and a stray `kernels/` folder in the run directory on top, `python -m axon train`
and `python -m perfmodel plan` still start: axon's kernels live at `axon.kernels`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from axon.testing.processes import REPO, clean_env


def run_here(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = clean_env()
    env.pop("PYTHONPATH")  # only the installed (editable) project, as on a cluster
    return subprocess.run([sys.executable, *args], cwd=folder, env=env, text=True, capture_output=True, timeout=240)


@pytest.mark.timeout(300)
def test_train_and_plan_start_from_a_run_directory_with_other_kernels_packages(tmp_path):
    stray = tmp_path / "kernels"
    stray.mkdir()
    (stray / "__init__.py").write_text("# someone else's package named kernels\n")
    which = run_here(tmp_path, "-c", "import axon, kernels; print(axon.__file__); print(kernels.__file__)")
    assert which.returncode == 0, which.stderr
    axon_file, kernels_file = which.stdout.split()
    assert Path(axon_file).resolve().parent == REPO / "axon"  # this checkout, installed
    assert Path(kernels_file).resolve() == stray / "__init__.py"  # the name `kernels` is someone else's

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"preset": "tiny", "seq_len": 16}, "out_dir": str(tmp_path / "out"),
                                      "data": {"source": "synthetic"}, "train": {"steps": 2, "global_batch": 4, "peak_tflops": 1.0}}))
    train = run_here(tmp_path, "-m", "axon", "train", str(config))
    assert train.returncode == 0, train.stdout + train.stderr
    assert "step 2/2 | loss" in train.stdout and "axon: done: final loss" in train.stdout

    plan = run_here(tmp_path, "-m", "perfmodel", "plan", "--model", "8B", "--gpus", "64", "--machine", "perlmutter",
                    "--global-batch", "512", "--micro-batch", "1", "--top", "1")  # fits in 40 GB A100s
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "8B" in plan.stdout and "perlmutter" in plan.stdout
