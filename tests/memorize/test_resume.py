"""What a rerun of a sweep reads back (axon.memorize.resume), without running one: the end-to-end
kill-and-rerun is in test_large_path.py."""

from __future__ import annotations

import json
from pathlib import Path

from axon.memorize.experiment import load_experiment
from axon.memorize.resume import CELL_FILE, fingerprint, prepare_resume, write_cell
from axon.memorize.runner import plan_runs
from axon.testing.tiny_experiment import write_tiny_experiment


def test_rerun_reads_done_cells_resumes_recorded_ones_and_refuses_other_settings(tmp_path, monkeypatch):
    exp = load_experiment(write_tiny_experiment(tmp_path / "exp.yaml", tmp_path / "out", acr="none"))
    _, runs = plan_runs(exp, 1)
    done, stopped, fresh = runs[0], runs[1], runs[2]
    write_cell(done, fingerprint(exp, done), True, [{"epoch": 2, "step": 8}], {"model": "a"}, 1.0)
    write_cell(stopped, fingerprint(exp, stopped), False, [{"epoch": 1, "step": 4}, {"epoch": 2, "step": 8}], {}, 1.0)
    for run, step in ((stopped, 6), (fresh, 3)):  # a checkpoint of this sweep, and one a cell without a record holds
        folder = Path(run.config.out_dir) / "checkpoints" / f"step_{step:08d}"
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text(json.dumps({"step": step}))
    import axon.checkpoint

    latest = Path(stopped.config.out_dir) / "checkpoints" / "step_00000006"
    monkeypatch.setattr(axon.checkpoint, "resolve_resume",  # the checkpoint's own checks are the engine's
                        lambda out_dir, resume: latest if out_dir == stopped.config.out_dir else None)
    starts, verdict = prepare_resume(exp, runs)
    assert (starts[1].done, starts[1].checkpoint, starts[1].evaluated) == (False, str(latest), (1,))
    assert starts[0].done and starts[0].record["rows"] == [{"epoch": 2, "step": 8}]
    assert not starts[2].done and starts[2].checkpoint is None and starts[3].checkpoint is None
    moved = list((tmp_path / "out" / "runs" / "b-standard" / "checkpoints").glob("abandoned-*/step_00000003"))
    assert len(moved) == 1  # an older sweep's checkpoint: set aside, never resumed or deleted
    assert verdict["cells"][:2] == [[True, None, []], [False, str(latest), [1]]]
    # another setting (here the learning rate) in the same out_dir: one sentence, no cell run
    other = load_experiment(tmp_path / "exp.yaml", ["train.lr=1e-3"])
    _, verdict = prepare_resume(other, plan_runs(other, 1)[1])
    assert "holds results of a run with other settings" in verdict["error"] and CELL_FILE in verdict["error"]
