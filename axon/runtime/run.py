"""`python -m axon train`: one job from start to finish.

Order matters: the launcher is read from the environment, then the config, layout and data
are checked on every rank, and only then does any communication start, so a bad input ends
every rank with the same one-sentence error instead of a hang. Then the process group, the
health monitor, the grid and the trainer; a preemption checkpoints and stops; every rank
meets once before tearing down.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import time
from pathlib import Path

import yaml

from axon.runtime.exit_codes import DIVERGED, FINISHED, PREEMPTED, USER_ERROR

DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16"}  # train.dtype as the MFU banner names it


def _fail(rank: int, message: str) -> None:
    from axon.config.errors import error_line

    print(error_line("train", message, rank), file=sys.stderr, flush=True)
    sys.exit(USER_ERROR)


class _EveryRankStops(SystemExit):
    """An error every rank reached together (the same check on agreed numbers), so the
    ranks can still meet once before tearing down, as after a normal finish."""


def _fail_together(rank: int, message: str, code: int = USER_ERROR) -> None:
    from axon.config.errors import error_line

    print(error_line("train", message, rank), file=sys.stderr, flush=True)
    raise _EveryRankStops(code)

def train_command(args) -> None:
    """Run `python -m axon train CONFIG [--set KEY=VALUE]...` (args from the command table); the
    process ends with the outcome's code (axon.runtime.exit_codes)."""
    from axon.config import ConfigError, check_data_source, check_init_weights, check_layout, load_config
    from axon.data.batches import token_source
    from axon.runtime.bootstrap import (collective_timeout_s, detect_launch, init_distributed, leave,
                                        process_group_timeout_s)
    from axon.runtime.run_dir import RunDirError

    try:
        launch = detect_launch()
    except ValueError as err:
        _fail(0, str(err))
    from axon.planning import auto_layout

    choice = None
    try:
        config = load_config(args.config, args.overrides)
        check_data_source(config)
        if config.layout_auto:
            machine = auto_layout.profile_before_start(config)
            if machine is None:  # calibrate once the ranks have met
                auto_layout.check_some_layout_fits_the_shape(config, launch.world_size)
            else:
                config, choice = auto_layout.choose(config, launch.world_size, machine)
        if not config.layout_auto or choice is not None:
            check_layout(config, launch.world_size)
        source = token_source(config)
        if not config.train.resume:  # a resumed run takes its weights from the checkpoint
            check_init_weights(config)
        job, attempt = job_and_attempt(launch)
        took_over = _check_run_dir(config, args.overwrite, launch.rank, job, attempt)
    except (ConfigError, RunDirError) as err:
        _fail(launch.rank, str(err))

    try:
        from axon.parallel.flight import FaultPlan
        from axon.parallel.flight_record import flight_folder

        FaultPlan.parse(os.environ.get("AXON_FAULT"))
        from axon.runtime.health import beat_interval

        beat_interval(launch.world_size, config.train.peer_timeout_s)  # a peer timeout too short for the world stops every rank here
        watchdog_s = config.train.collective_timeout_s or collective_timeout_s()  # 0: the environment's default
    except ValueError as err:
        _fail(launch.rank, str(err))
    # Rank 0 alone checks the checkpoint to resume (the others learn its verdict once the ranks have met).
    reader, resume_verdict = _checkpoint_to_resume(config) if launch.rank == 0 and config.train.resume else (None, None)
    lock = _take_run_dir(config, args.overwrite, reader, job, attempt, took_over) if launch.rank == 0 else None
    try:
        runtime = init_distributed(launch, timeout_s=process_group_timeout_s(watchdog_s),
                                   flight_dir=flight_folder(config.out_dir))
        code = _run(config, runtime, launch, source, (reader, resume_verdict), choice, watchdog_s)
    finally:
        if lock is not None:
            lock.release()
    # Past shutdown() every rank is done: end without the interpreter's finalization, which was
    # seen to abort (-6) destroying gloo's threads in no set order, even after a clean finish.
    leave(code)


def _run(config, runtime, launch, source, resume, choice, watchdog_s) -> int:
    """From the process group on: the health monitor, training, and tearing down together.
    Returns the exit code every rank ends with: FINISHED, PREEMPTED, or an error's they stopped at together."""
    from axon.config import ConfigError, check_layout
    from axon.planning import auto_layout
    from axon.runtime.bootstrap import shutdown

    try:
        reader = _agree_on_resume(runtime, *resume) if config.train.resume else None
    except _EveryRankStops as stop:
        shutdown(all_ranks_done=True)
        return stop.code
    health = None
    if runtime.world_size > 1:  # a heartbeat through the store, the collective watchdog, flight records on signals
        from axon.parallel.comm import broadcast_object
        from axon.runtime.health import HealthMonitor

        # The health keys carry a token only this job's ranks know, sent over the process group and
        # never through the store: nothing else that reaches the store can post a verdict they read.
        token = broadcast_object(secrets.token_hex(8) if runtime.rank == 0 else None)
        health = HealthMonitor(runtime.rank, runtime.world_size, runtime.store_address, config.out_dir,
                               config.train.peer_timeout_s, watchdog_s, runtime.hosts_store, runtime.backend,
                               token=token).start()
    done, code = False, FINISHED
    try:
        if config.layout_auto and choice is None:
            try:
                config, choice = auto_layout.choose(config, launch.world_size,
                                                    auto_layout.calibrate_here(config, runtime.rank))
                check_layout(config, launch.world_size)
            except ConfigError as err:  # the same plan on every rank: every rank stops here
                _fail_together(launch.rank, str(err))
        from axon.planning.micro_batch import micro_batch_for_device

        config, micro_why = micro_batch_for_device(config, runtime.device)
        code = _train(config, runtime, source, reader, choice, health, micro_why)
        done = True
    except _EveryRankStops as stop:
        done, code = True, stop.code  # every rank is here: meet once before tearing down
    except Exception as err:
        if health is not None:
            health.after_error(err)  # a lost peer or a failed collective ends the process there, named
        raise
    finally:
        if health is not None:
            health.stop()
        shutdown(all_ranks_done=done)
    return code


def _checkpoint_to_resume(config):
    """Rank 0: the checkpoint train.resume names, checked (metadata, model, every shard file's
    size), and the verdict the other ranks learn: {"path"} or {"error"}. `latest` passes over
    newer checkpoints that do not read whole, and says which."""
    from axon.checkpoint import CheckpointReader, resolve_resume
    from axon.config import ConfigError, check_init_weights

    try:
        passed_over: list[str] = []
        path = resolve_resume(config.out_dir, config.train.resume, passed_over)
        for reason in passed_over:
            print(f"axon: train.resume=latest passes over a checkpoint: {reason}", flush=True)
        if path is None:
            check_init_weights(config)  # latest, none yet: the run starts from its init weights
            return None, {"path": None}
        reader = CheckpointReader(path)
        reader.check_model(config.model)
        reader.check_files()
    except ConfigError as err:
        return None, {"error": str(err)}
    return reader, {"path": str(path)}


def _agree_on_resume(runtime, reader, verdict):
    """Every rank: rank 0's verdict on the checkpoint to resume; the reader of it (each rank
    reads the small meta.json itself), or every rank stops with rank 0's sentence."""
    from axon.runtime.verdict import share_from_rank0

    from axon.config import ConfigError
    from axon.parallel.comm import first_error

    verdict = share_from_rank0(runtime, "resume", verdict)
    if "error" in verdict:
        _fail_together(runtime.rank, verdict["error"])
    if verdict["path"] is None:
        return None
    problem = None
    if reader is None:
        from axon.checkpoint import CheckpointReader

        try:  # meta.json changed since rank 0 read it (another job?): every rank must hear of it, not hang
            reader = CheckpointReader(verdict["path"])
        except ConfigError as err:
            problem = str(err)
    problem = first_error(problem, runtime.device)
    if problem:
        _fail_together(runtime.rank, problem)
    return reader


def job_and_attempt(launch) -> tuple[str | None, str]:
    """Who this job is, the same on every rank without communication (None when the launcher
    names no job: then only rank 0 reads the run directory's lock), and which attempt of it."""
    from axon.spec.launcher import job_and_restarts

    job, restarts = job_and_restarts()
    if not job and launch.world_size == 1:
        job = f"{socket.gethostname()}-{os.getpid()}"
    return job or None, restarts


def _check_run_dir(config, overwrite: bool, rank: int, job: str | None, attempt: str) -> str | None:
    """Every rank, before any collective: no other live job holds out_dir, and an earlier run in
    it is continued or moved aside only when asked. Returns why a dead holder's lock is taken over."""
    from axon.runtime.run_dir import RunDirError, check_lock, check_start

    if overwrite and config.train.resume:
        raise RunDirError(f"--overwrite starts over, but train.resume={config.train.resume!r} continues a run; "
                          "give one of them")
    check_start(config.out_dir, config.train.resume, overwrite)
    return check_lock(config.out_dir, job or "", attempt) if (job is not None or rank == 0) else None


def _take_run_dir(config, overwrite: bool, reader, job: str | None, attempt: str, took_over: str | None):
    """Rank 0, before any collective: lock out_dir, then move aside what this run replaces."""
    from axon.runtime.run_dir import RunDirError, RunDirLock, move_earlier_run

    lock = RunDirLock(config.out_dir, job or f"{socket.gethostname()}-{os.getpid()}", attempt)
    try:
        lock.take()
    except RunDirError as err:
        _fail(0, str(err))
    if took_over:
        print(f"axon: {lock.path}: {took_over}", flush=True)
    if overwrite:
        moved = move_earlier_run(config.out_dir)
        if moved is not None:
            print(f"axon: --overwrite: moved the earlier run's files to {moved}; nothing was deleted", flush=True)
    if reader is not None and config.train.resume != "latest":
        _set_aside_abandoned(config.out_dir, reader)
    return lock


def _set_aside_abandoned(out_dir: str, reader) -> None:
    """Resumed by name from an older step: this directory's later checkpoints belong to the run
    being abandoned; move them aside (never delete) so `latest` and pruning follow this run."""
    from axon.checkpoint import set_aside_later

    moved = set_aside_later(out_dir, reader.step)
    if moved is not None:
        folder, names = moved
        print(f"axon: resuming from step {reader.step} by name: moved the later checkpoints of the run it "
              f"abandons ({', '.join(names)}) to {folder}; nothing was deleted", flush=True)


def _train(config, runtime, source, reader, choice=None, health=None, micro_why=None) -> int:
    """Build the grid and trainer, resume if asked, train, and report (`micro_why`: why auto
    picked train.micro_batch, for the banner). Returns FINISHED or PREEMPTED."""
    from axon.parallel.grid import Grid
    from axon.runtime.metrics import METRICS_FILE, MetricsLog
    from axon.runtime.preemption import StopSignal
    from axon.runtime.run_dir import keep_metrics_through
    from axon.runtime.trainer import Preempted, Trainer, TrainingDiverged, describe

    leader = runtime.rank == 0
    grid = Grid(config.layout, runtime.rank)
    peak, peak_source = _mfu_peak(config, runtime)
    trainer = Trainer(config, grid, runtime.device, peak_tflops=peak, source=source)
    if health is not None:
        health.follow(grid.trace.flight, config.layout)
    if leader:
        from axon.runtime.provenance import git_commit, version_line

        print(version_line(), flush=True)
        print(describe(config, trainer, runtime, peak_source), flush=True)
        if micro_why is not None:
            from axon.planning.micro_batch import describe_micro_batch

            print(describe_micro_batch(config, micro_why), flush=True)
        if choice is not None:
            from axon.planning.auto_layout import describe_choice

            print(describe_choice(choice), flush=True)
        Path(config.out_dir).mkdir(parents=True, exist_ok=True)
        import axon

        header = (f"# written by axon {axon.__version__}, commit {git_commit()}, at the start of this run; "
                  "`python -m axon train` reruns it\n")
        (Path(config.out_dir) / "config.yaml").write_text(header + yaml.safe_dump(config.to_dict(), sort_keys=False))
    if reader is not None:
        reader = _resume(trainer, reader, runtime, fall_back=config.train.resume == "latest")
    elif config.train.resume == "latest" and leader:
        print(f"axon: no checkpoint under {config.out_dir}/checkpoints yet; starting at step 0", flush=True)
    if leader:  # the steps after the one resumed from are run again: their old lines go (whole lines kept)
        start = reader.step if reader is not None else 0
        dropped = keep_metrics_through(config.out_dir, start)
        if dropped:
            print(f"axon: {Path(config.out_dir) / METRICS_FILE}: dropped {dropped} line(s) of steps after {start}, "
                  "which this run repeats", flush=True)
    log = MetricsLog(config.out_dir, config.train.steps, config.train.log_every, enabled=leader, append=True)
    try:
        with StopSignal() as stop:
            history = trainer.fit(log, stop_signal=stop, final_checkpoint=config.train.final_checkpoint)
    except Preempted as done:
        if leader:
            print(f"axon: {stop.name} received: stopped after step {done.step}, checkpoint {done.path}; "
                  f"continue with --set train.resume=latest (exit code {PREEMPTED}: requeue me)", flush=True)
        return PREEMPTED
    except TrainingDiverged as err:
        _fail_together(runtime.rank, f"{err}; the last checkpoint written is still intact", DIVERGED)
    finally:
        log.close()
    if leader and history:
        _summary(config, trainer, history, choice)
    return FINISHED


def _mfu_peak(config, runtime) -> tuple[float, str]:
    """The peak MFU is measured against, and where it came from."""
    import torch

    from axon.kernels import measure_gemm_tflops
    from axon.parallel.comm import world_barrier, world_mean

    if config.train.peak_tflops > 0:
        return config.train.peak_tflops, "train.peak_tflops from the config"
    # In the training dtype: a bf16 run measured against an fp32 GEMM would read several x MFU.
    world_barrier()  # all ranks time the GEMM at once, sharing the node as they will in training
    peak = world_mean(measure_gemm_tflops(runtime.device, getattr(torch, config.train.dtype)), runtime.device)
    return peak, f"{DTYPE_NAMES[config.train.dtype]} GEMM timed on all ranks at once, averaged"


def _resume(trainer, reader, runtime, fall_back: bool):
    """Load the checkpoint on every rank; any rank's problem stops all of them, named once.
    With `fall_back` (train.resume=latest), a checkpoint whose files fail their checksums is
    passed over for the newest older one that reads whole (the checksums' verdict is agreed,
    so every rank moves on together). Returns the reader of the checkpoint resumed from."""
    from axon.checkpoint import CheckpointReader, CorruptCheckpoint, find_latest_intact
    from axon.config import ConfigError
    from axon.parallel.comm import first_error
    from axon.runtime.verdict import share_from_rank0

    started = time.perf_counter()
    while True:
        error = None
        try:
            warning = trainer.resume_from(reader)
        except ConfigError as err:  # e.g. a tensor one stage's ranks miss: every rank must stop, not only those
            error, warning = err, None
        older = None
        if isinstance(error, CorruptCheckpoint) and fall_back:  # raised by the checksums' collective: on every rank
            # Rank 0 alone looks for the next one down (one stat per shard file) and tells the others.
            found = find_latest_intact(reader.path.parent, below=reader.step)[0] if runtime.rank == 0 else None
            older = share_from_rank0(runtime, f"resume-below-{reader.step}", {"path": found and str(found)})["path"]
        if older is None:
            break
        if runtime.rank == 0:
            print(f"axon: train.resume=latest passes over a checkpoint: {error}", flush=True)
        reader = CheckpointReader(older)
    message = first_error(str(error) if error else None, runtime.device)
    if message:  # every rank states the first problem found, wherever it was found
        _fail_together(runtime.rank, message)
    if runtime.rank == 0:
        print(f"axon: resumed from {reader.path} at step {trainer.start_step} "
              f"(saved at layout {reader.layout}) in {time.perf_counter() - started:.2f} s", flush=True)
        if warning:
            print(f"axon: {warning}", flush=True)
    return reader


def _summary(config, trainer, history: list[dict], choice) -> None:
    """Rank 0's closing line (and, for layout: auto, how the pick fared)."""
    steady = history[1:] or history  # the first step pays one-off warm-up costs
    median = sorted(m["step_time_s"] for m in steady)[len(steady) // 2]
    # MFU 0.0 is unknown (a step beat the peak: a failed measurement), and so is a mean with it
    mean_mfu = sum(m["mfu"] for m in steady) / len(steady)
    mfu = "unknown" if any(m["mfu"] == 0 for m in history) else f"{100 * mean_mfu:.1f}%"
    print(f"axon: done: final loss {history[-1]['loss']:.4f}, median step {median:.3f} s, "
          f"{trainer.tokens_per_step / median:,.0f} tok/s, mean MFU {mfu}; "
          f"metrics in {Path(config.out_dir) / 'metrics.jsonl'}", flush=True)
    if choice is not None:
        from axon.planning.auto_layout import describe_outcome, save_outcome

        print(describe_outcome(choice, median), flush=True)
        save_outcome(config.out_dir, choice, median)
