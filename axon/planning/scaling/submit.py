"""One run per point: its config, then a Slurm job script or a torchrun here.

Every point writes to STUDY_DIR/points/NAME/: config.yaml (the exact run, layout included,
checked by axon's own config loader), then the run's metrics.jsonl; the Slurm launcher adds
job.sbatch and the job's log, the local one log.txt and exit_code. Every value a job script gets
is a checked plain word (axon.planning.scaling.study) or shell-quoted, and is put in by a
replacement function (a replacement string would read a value's backslashes as escapes).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from axon.spec.layout import AXES

from axon.planning.scaling.plan import PointPlan, nodes, plan_study, problems
from axon.planning.scaling.study import Study, StudyError, slurm_value

REPO = Path(__file__).resolve().parents[3]  # axon/planning/scaling/submit.py -> the checkout
LAUNCH = REPO / "launch"
SBATCH_PATH = re.compile(r"[A-Za-z0-9_.,/%+=@-]+")  # a path a #SBATCH line holds as one word


def run_config(study: Study, entry: PointPlan, out_dir: Path) -> dict:
    """The axon config of one point: the study's model, batch and steps at the planned layout."""
    point, layout = entry.point, entry.prediction.layout
    shape = {k: getattr(point.shape, k) for k in point.shape.field_names()}
    train = {"steps": study.steps, "global_batch": study.point_batch(point), "micro_batch": study.micro_batch,
             "dtype": study.dtype, "recompute": study.recompute, "grad_reduce_dtype": study.grad_reduce_dtype,
             # MFU against the profile's peak, the one the prediction uses (and no GEMM timed at start-up)
             "peak_tflops": entry.machine.peak_tflops[study.dtype], "log_every": max(1, study.steps // 10)}
    train.update(study.train)
    layout_raw = {**layout.sizes(), "order": ",".join(layout.order)}
    if layout.virtual_stages > 1:  # interleaved 1F1B's chunks per stage
        layout_raw["virtual_stages"] = layout.virtual_stages
    return {"model": shape, "layout": layout_raw, "train": train,
            "data": {"source": study.data}, "out_dir": str(out_dir)}


def write_configs(study: Study, directory: Path, chosen: set[str] | None,
                  one_node: bool = False) -> list[tuple[PointPlan, Path]]:
    """Plan, stop on any point that cannot run (or, with `one_node`, needs more than one node of
    its machine: torchrun here starts one node's ranks), and write each chosen point's config.yaml."""
    from axon.config import ConfigError, build_config, check_layout

    plans = plan_study(study)
    sentences = problems(plans)
    if sentences:
        raise StudyError(" ".join(sentences))
    if chosen:
        unknown = chosen - {p.point.name for p in plans}
        if unknown:
            raise StudyError(f"--points names {', '.join(sorted(unknown))}, which the study does not have")
    plans = [entry for entry in plans if not chosen or entry.point.name in chosen]
    for entry in plans:
        if one_node and nodes(entry.point.gpus, entry.machine) > 1:
            raise StudyError(f"point {entry.point.name} needs {nodes(entry.point.gpus, entry.machine)} nodes of "
                             f"{entry.machine.name!r}; --launcher local runs one node's ranks here: use slurm")
    points, runs = (directory / "points").resolve(), []
    for entry in plans:  # every point checked before any is written
        out_dir = (points / entry.point.name).resolve()
        if out_dir.parent != points:  # e.g. a symlink left at STUDY_DIR/points/NAME
            raise StudyError(f"point {entry.point.name}: its directory resolves to {out_dir}, outside {points}")
        raw = run_config(study, entry, out_dir)
        try:
            check_layout(build_config(yaml.safe_load(yaml.safe_dump(raw))), entry.point.gpus)
        except ConfigError as err:
            raise StudyError(f"point {entry.point.name}: {err}") from None
        runs.append((entry, out_dir, raw))
    written = []
    for entry, out_dir, raw in runs:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "config.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        written.append((entry, path))
    return written


def submit(study: Study, directory: Path, args, chosen: set[str] | None = None) -> int:
    if args.launcher == "slurm":
        slurm_settings(study, args)  # a bad option stops before anything is written
    written = write_configs(study, directory, chosen, one_node=args.launcher == "local")
    if args.launcher == "local":
        return run_local(written, args.timeout)
    scripts = [(config.parent / "job.sbatch", job_script(study, entry, config, args)) for entry, config in written]
    commands = []
    for script, text in scripts:  # every script made before any is written
        script.write_text(text)
        commands.append(["sbatch", str(script)])
    if shutil.which("sbatch"):
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True)
            print(f"{' '.join(command)}: {(done.stdout or done.stderr).strip()}")
            if done.returncode:
                return done.returncode
    else:
        print(f"# sbatch is not on this machine; submit the {len(commands)} job(s) from a login node:")
        for command in commands:
            print(" ".join(command))
    return 0


def slurm_settings(study: Study, args) -> dict:
    """The study's slurm section (checked when read) with the command line's overrides, checked here."""
    slurm = dict(study.slurm)
    for key in ("account", "partition", "qos", "time"):
        if getattr(args, key, None):
            slurm[key] = slurm_value(key, getattr(args, key), f"--{key}")
    return slurm


def template_for(study: Study, entry: PointPlan, args) -> Path:
    """Only the command line may name any file; the study's slurm.template is a launch/ stem (checked
    when read), and the machine's stem, one path component, stays in launch/ too."""
    name = args.template or study.slurm.get("template") or Path(entry.point.machine).stem
    path = Path(name) if args.template and Path(name).suffix else LAUNCH / f"{name}.sbatch"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in LAUNCH.glob("*.sbatch")))
        raise StudyError(f"slurm template {name!r} is neither a launch/ script ({known}) nor a file; "
                         f"give slurm.template or --template")
    return path


def job_script(study: Study, entry: PointPlan, config: Path, args) -> str:
    """The machine's launch/ script with this point's nodes, tasks, GPUs, limits and config."""
    point = entry.point
    per_node = min(point.gpus, entry.machine.devices_per_node)
    slurm = slurm_settings(study, args)
    template = template_for(study, entry, args)
    text = template.read_text()
    # names and slurm values are plain words (checked when read); the paths are checked here
    values = {"nodes": int(nodes(point.gpus, entry.machine)), "job-name": f"{study.name}-{point.name}",
              "output": _sbatch_path(config.parent, "the point directory") + "/slurm-%j.out",
              "time": slurm.get("time", "00:30:00"), "chdir": _sbatch_path(REPO, "the checkout")}
    values.update((key, slurm[key]) for key in ("account", "partition", "qos", "constraint") if key in slurm)
    if not re.search(r"^#SBATCH ", text, flags=re.M):
        raise StudyError(f"the slurm template {template} has no #SBATCH line")
    for key, value in values.items():
        line = f"#SBATCH --{key}={value}"
        text, found = re.subn(rf"^#SBATCH --{key}=\S*", lambda _, line=line: line, text, count=1, flags=re.M)
        if not found:  # a directive the template lacks goes after its last one
            last = list(re.finditer(r"^#SBATCH .*$", text, flags=re.M))[-1]
            text = text[:last.end()] + "\n" + line + text[last.end():]
    text = re.sub(r"--ntasks-per-node=\d+", lambda _: f"--ntasks-per-node={int(per_node)}", text)
    text = re.sub(r"--gpus-per-node=\d+", lambda _: f"--gpus-per-node={int(per_node)}", text)
    # only the "${CONFIG:?...}" word becomes the path, as one shell word whatever it holds
    text, found = re.subn(r'"\$\{CONFIG:\?[^}]*\}"', lambda _: shlex.quote(str(config)), text)
    if not found:
        raise StudyError(f"the slurm template {template} has no \"${{CONFIG:?...}}\" argument to put {config} in")
    layout = " ".join(f"{a}={getattr(entry.prediction.layout, a)}" for a in AXES)
    header = (f"# {study.kind} scaling study {study.name}, point {point.name}: {point.model_name} on {point.gpus} "
              f"devices ({layout});\n# written by `python -m axon scaling submit`; its run writes to {config.parent}\n")
    return text.replace("\n", "\n" + header, 1)


def _sbatch_path(path: Path, what: str) -> str:
    """A path for a #SBATCH line, which cannot be shell-quoted: plain characters only."""
    if not SBATCH_PATH.fullmatch(str(path)):
        raise StudyError(f"{what} {str(path)!r} cannot go on a #SBATCH line, whose paths may hold only letters, "
                         f"digits and _ . , / % + = @ -")
    return str(path)


def torchrun_command(gpus: int, config: Path) -> list[str]:
    venv = REPO / ".venv" / "bin" / "torchrun"
    start = [str(venv)] if venv.exists() else [sys.executable, "-m", "torch.distributed.run"]
    # --overwrite: a rerun starts the point over; the earlier run's files move to an earlier-TIME/ folder
    return start + ["--standalone", f"--nproc-per-node={gpus}", "-m", "axon", "train", str(config), "--overwrite"]


def run_local(written: list[tuple[PointPlan, Path]], timeout_s: float) -> int:
    """The points one after another on this machine (gloo), each rank on cores / ranks threads."""
    failed = 0
    for entry, config in written:
        gpus, out_dir = entry.point.gpus, config.parent
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // gpus)))
        command = torchrun_command(gpus, config)
        print(f"axon scaling: {entry.point.name}: {' '.join(command)}", flush=True)
        started = time.perf_counter()
        with open(out_dir / "log.txt", "w") as log:
            try:
                code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                      timeout=timeout_s).returncode
            except subprocess.TimeoutExpired:
                code = 124
        (out_dir / "exit_code").write_text(f"{code}\n")
        print(f"axon scaling: {entry.point.name}: exit {code} after {time.perf_counter() - started:.0f} s"
              + ("" if code == 0 else f"; see {out_dir / 'log.txt'}"), flush=True)
        failed += code != 0
    return 1 if failed else 0
