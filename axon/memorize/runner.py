"""`python -m axon memorize CONFIG`: train every model with every loss, measure memorization
after each epoch, and write results.csv / results.json, plots and summary.md to out_dir.

Everything the user gave (models, layouts, documents, filler) is checked on every rank
before the ranks meet. Runs go one after another on the same ranks, each from scratch
(or from the Hugging Face weights its model entry names).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from axon.config import ConfigError
from axon.memorize.documents import DocumentSets, build_documents
from axon.memorize.experiment import Experiment, LossSpec, ModelEntry
from axon.memorize.stream import FillerTokens, MemorizationStream
from axon.memorize.tokenizer import load_tokenizer


def filler_tokens(exp: Experiment, tokenizer, needed: int) -> tuple[np.ndarray, int]:
    """(tokens, a bound on their ids): at least `needed` tokens of the generated default corpus,
    or the user's token file (whose header bounds its ids, so a huge file is not scanned)."""
    if exp.filler == "default":
        from axon.data.corpus import default_corpus_documents

        pieces, count = [], 0
        documents = default_corpus_documents(exp.section.seed, n_docs=10**9)  # lazy: taken until enough
        eos = [] if tokenizer.eos is None else [tokenizer.eos]
        while count < needed:
            batch = [next(documents) for _ in range(64)]
            for ids in tokenizer.encode_batch(batch):
                pieces.append(np.concatenate([ids.astype(np.int64), eos]))
                count += pieces[-1].size
        tokens = np.concatenate(pieces)
        return tokens, int(tokens.max()) + 1
    from axon.data.batches import TokenFile

    file = TokenFile(exp.filler, 1 << 62, 1, 1)  # the file's own checks
    return file.tokens, file.file_vocab or int(file.tokens.max()) + 1


@dataclasses.dataclass
class PlannedRun:
    model: ModelEntry
    loss: LossSpec
    config: object  # RunConfig with the layout filled in
    stream: MemorizationStream
    choice: object = None  # LayoutChoice under layout: auto
    acr: bool = False  # ACR at the last epoch (experiment.acr)
    docs: DocumentSets | None = None  # this run's targets, controls and canaries (they follow the seed)
    seed: int | None = None  # the seed of `seeds:` it runs with (None: the config's own)
    acr_layout: object = None  # a Layout without pipeline stages for the prompt search (None: the run's own)
    probe: bool = False  # a learning-rate probe of lr_selection: trained, scored on its validation filler only
    lr_auto: bool = False  # its peak rate comes from the probes (set before it runs)


def plan_runs(exp: Experiment, world_size: int, lr_probes: bool = True) -> tuple[DocumentSets, list[PlannedRun]]:
    """Everything checked and built before any collective; raises ConfigError. The documents
    returned are the first seed's (each run carries its own). With `lr_probes`, the learning-rate
    probes of lr: auto models come first (_lr_probes)."""
    from axon.planning import auto_layout

    s = exp.section
    tokenizer = load_tokenizer(exp.tokenizer, exp.out_dir, s.seed)  # one vocabulary for every seed
    runs, filler, bound, first = [], None, 0, None
    for seed in exp.seed_list():
        docs = _documents(exp, tokenizer, s.seed if seed is None else seed)
        first = first or docs
        for model in exp.models:
            probe = exp.run_config(model, exp.losses[0], 1)
            shape = probe.model
            _check_model(exp, model, shape, tokenizer)
            windows_needed = _windows_needed(s, probe, docs)
            if filler is None or (exp.filler == "default" and filler.size < windows_needed * shape.seq_len + 1):
                filler, bound = filler_tokens(exp, tokenizer, windows_needed * shape.seq_len + 1)
            if bound > shape.vocab:
                raise ConfigError(f"filler {exp.filler!r} holds token ids up to {bound - 1}, not below model "
                                  f"{model.name}'s vocab {shape.vocab}")
            stream = MemorizationStream(docs.trained(), FillerTokens(filler, shape.seq_len, repr(exp.filler)),
                                        shape.seq_len, probe.train.global_batch, s.epochs, s.repeats,
                                        s.filler_per_epoch, s.val_sequences, s.seed if seed is None else seed,
                                        s.placement, s.near_duplicates, len(docs.targets))
            stream.val_split = _recurring_dropped(stream, exp.losses)
            for loss in exp.losses:
                config, choice = auto_layout.choose_from_named_profile(
                    exp.run_config(model, loss, stream.total_steps, seed), world_size,
                    "in an experiment: the sweep does not calibrate")
                runs.append(PlannedRun(model, loss, config, stream, choice, docs=docs, seed=seed,
                                       lr_auto=model.lr_auto))
    _mark_acr(exp, runs)
    return first, (_lr_probes(exp, tokenizer, world_size) if lr_probes else []) + runs


def _windows_needed(s, config, docs: DocumentSets) -> int:
    """Filler windows a run reads, at most: validation, then per epoch the filler rounded up to a
    whole step and one padding per target. Each run reads its own copy of the stream through the
    same numbers, so it is sized once per model."""
    return s.val_sequences + s.epochs * (s.filler_per_epoch + config.train.global_batch
                                         + len(docs.trained()) * s.repeats)


def _lr_probes(exp: Experiment, tokenizer, world_size: int) -> list[PlannedRun]:
    """The runs that choose the peak rate of every lr: auto model (axon.memorize.lr_selection):
    the standard loss once per candidate, on lr_selection.seed's documents, order and init, and on
    the filler past every window the reported runs read, so that their validation windows are
    held out from the reported runs too."""
    from axon.planning import auto_layout

    auto = [model for model in exp.models if model.lr_auto]
    if not auto:
        return []
    s, selection, standard = exp.section, exp.lr_selection, LossSpec("standard")
    docs = _documents(exp, tokenizer, selection.seed)
    probes, tokens = [], None
    for model in auto:
        base = exp.run_config(model, standard, 1)
        seq_len, skipped = base.model.seq_len, _windows_needed(s, base, docs)
        if tokens is None or (exp.filler == "default" and tokens.size < 2 * skipped * seq_len + 1):
            tokens, _ = filler_tokens(exp, tokenizer, 2 * skipped * seq_len + 1)
        filler = FillerTokens(tokens[skipped * seq_len:], seq_len,
                              f"{exp.filler!r} past the {skipped:,} windows the reported runs read")
        stream = MemorizationStream(docs.trained(), filler, seq_len, base.train.global_batch, s.epochs, s.repeats,
                                    s.filler_per_epoch, s.val_sequences, selection.seed, s.placement,
                                    s.near_duplicates, len(docs.targets))
        for lr in selection.candidates:
            config, choice = auto_layout.choose_from_named_profile(
                exp.run_config(model, standard, stream.total_steps, selection.seed, lr, "lr_selection"),
                world_size, "in an experiment: the sweep does not calibrate")
            probes.append(PlannedRun(model, standard, config, stream, choice, docs=docs, seed=selection.seed,
                                     probe=True))
    return probes


def _documents(exp: Experiment, tokenizer, seed: int) -> DocumentSets:
    """The targets, controls and canaries of one seed, checked and cut to experiment.target_tokens."""
    s = exp.section
    need = s.prefix + s.suffix
    docs = build_documents(exp.targets, tokenizer, seed, s.documents, s.controls, s.canaries, s.canary_digits,
                           min_tokens=max(need, s.target_tokens), controls_path=exp.controls,
                           control_fraction=s.control_fraction)
    short = [len(d) for d in docs.targets + docs.controls if len(d) < need]
    if short:
        raise ConfigError(f"{len(short)} target/control documents are shorter than experiment.prefix + "
                          f"experiment.suffix = {need} tokens (the shortest has {min(short)})")
    if not docs.trained():
        raise ConfigError("nothing to memorize: no target documents and experiment.canaries=0")
    if s.target_tokens:
        docs.targets = [d[: s.target_tokens] for d in docs.targets]
        docs.controls = [d[: s.target_tokens] for d in docs.controls]
    return docs


def _check_model(exp: Experiment, model: ModelEntry, shape, tokenizer) -> None:
    s = exp.section
    need = s.prefix + s.suffix
    if shape.vocab < tokenizer.vocab:
        raise ConfigError(f"model {model.name}: model.vocab={shape.vocab} is smaller than the tokenizer's "
                          f"vocab {tokenizer.vocab} ({exp.tokenizer})")
    if shape.seq_len + 1 < max(need, s.target_tokens):
        which = "experiment.target_tokens" if s.target_tokens > need else "experiment.prefix + experiment.suffix"
        raise ConfigError(f"model {model.name}: model.seq_len={shape.seq_len} + 1 is shorter than {which} = "
                          f"{max(need, s.target_tokens)}")


def _recurring_dropped(stream: MemorizationStream, losses: list[LossSpec]) -> np.ndarray | None:
    """[val_windows, seq_len]: the validation tokens the experiment's (first) Goldfish loss drops
    and whose window of h ids recurs in the training filler, so that loss never supervises them
    there; the validation loss is reported on them and on the rest apart. None without Goldfish."""
    from axon.data.goldfish import GoldfishMask

    goldfish = next((loss for loss in losses if loss.kind == "goldfish"), None)
    if goldfish is None or stream.val_windows == 0:
        return None
    dropped = ~GoldfishMask(goldfish.k, goldfish.h, goldfish.strategy).keep(stream.validation())
    return dropped & stream.recurring(goldfish.h)


def _mark_acr(exp: Experiment, runs: list[PlannedRun]) -> None:
    """experiment.acr: which runs search prompts at their last epoch, and on which layout: the
    search backpropagates through the whole model, and pipeline stages run forward only, so a
    run with pipe > 1 searches on the same ranks with the stages folded into depth (its last
    checkpoint read back resharded; each rank holds the same share of the weights)."""
    from axon.spec.layout_rules import find_layout_problem
    from axon.spec.parameters import whole_model_parameters

    if exp.section.acr == "none":
        return
    largest = max(whole_model_parameters(r.config.model) for r in runs)
    for run in runs:
        run.acr = exp.section.acr == "all" or whole_model_parameters(run.config.model) == largest
        layout = run.config.layout
        if run.acr and layout.pipe > 1:
            run.acr_layout = acr_layout(layout)
            shards = run.acr_layout.data * run.acr_layout.depth  # a batch every shard divides: the search has none
            problem = find_layout_problem(run.config.model, run.acr_layout, shards, 1)
            if problem:
                raise ConfigError(f"experiment.acr={exp.section.acr} searches model {run.model.name} on layout "
                                  f"{run.acr_layout} (layout.pipe={layout.pipe} folded into depth), where "
                                  f"{problem.sentence}; set experiment.acr: none")


def acr_layout(layout):
    """`layout` with its pipeline stages folded into depth (same world, same weight share per rank)."""
    import dataclasses

    return dataclasses.replace(layout, pipe=1, depth=layout.depth * layout.pipe, virtual_stages=1)


def _row(run: PlannedRun, params: int, epoch: int, step: int, scores: dict, losses: list[dict],
         seconds: float) -> dict:
    loss = run.loss
    goldfish = loss.kind == "goldfish"
    return {"model": run.model.name, "params": params, "loss_kind": loss.kind, "seed": run.stream.seed,
            "k": loss.k if goldfish else None, "h": loss.h if goldfish else None,
            "strategy": loss.strategy if goldfish else None, "lr": run.config.train.lr, "epoch": epoch, "step": step, **scores,
            **{key: scores.get(key, float("nan")) for key in ("acr", "acr_memorized", "control_acr",
                                                              "control_acr_memorized", "acr_seconds",
                                                              "val_loss_recurring_dropped", "val_loss_rest",
                                                              "val_recurring_dropped_fraction")},
            "train_loss": float(np.mean([m["loss"] for m in losses])),
            "kept_fraction": float(np.mean([m["kept_fraction"] for m in losses])), "train_seconds": seconds}


def acr_all(model, grid, device, docs: DocumentSets, s) -> tuple[dict, dict]:
    """ACR of the targets and controls (the first experiment.acr_documents of each, or all) with
    `model` on `grid` (pipe 1): (the ACR paper's statistics for the results row, per-document values)."""
    from axon.memorize.adversarial_compression import AcrBudget, PromptSearch

    budget = AcrBudget(s.acr_iterations, s.acr_candidates, s.acr_top_k, batch=s.eval_batch * 4, init=s.acr_init)
    search = PromptSearch(model, grid, device, budget, s.seed)
    cut = lambda documents: documents[: s.acr_documents] if s.acr_documents else documents
    target, control = (search.run(cut(documents), s.prefix, s.suffix) for documents in (docs.targets, docs.controls))
    share = lambda values: float(np.mean(values > 1)) if len(values) else float("nan")
    above = lambda values: float(np.mean(values[values > 1])) if (values > 1).any() else float("nan")
    scores = {"acr": above(target["acr"]), "acr_memorized": share(target["acr"]),
              "control_acr": above(control["acr"]), "control_acr_memorized": share(control["acr"])}
    listed = lambda found: {"acr": found["acr"].tolist(), "prompt": [p.tolist() for p in found["prompt"]]}
    return scores, {"targets_acr": listed(target), "controls_acr": listed(control)}


def filler_losses(evaluator, stream) -> dict:
    """The mean next-token loss on the held-out filler, and apart on the tokens Goldfish never
    supervises in their recurring context (stream.val_split) and on the rest."""
    if not stream.val_windows:
        return {"val_loss": float("nan")}
    losses = evaluator.token_losses(stream.validation())
    split = stream.val_split
    scores = {"val_loss": float(losses.mean())}
    if split is not None:
        scores.update(val_loss_recurring_dropped=float(losses[split].mean()) if split.any() else float("nan"),
                      val_loss_rest=float(losses[~split].mean()) if (~split).any() else float("nan"),
                      val_recurring_dropped_fraction=float(split.mean()))
    return scores


def evaluate_all(trainer, docs: DocumentSets, stream, s) -> tuple[dict, dict]:
    """The metrics of every target and control; (means for the results row, per-document scores).
    Documents are read as trained: their first seq_len + 1 tokens."""
    from axon.memorize.evaluate import (ShardedEval, canary_extraction, document_losses, exposure, extraction,
                                        memorization, zlib_length)
    from axon.memorize.statistics import auc

    evaluator = ShardedEval(trainer.model, trainer.grid, trainer.device, s.eval_batch)
    trained = lambda documents: [d[: stream.seq_len + 1] for d in documents]
    targets, controls = trained(docs.targets), trained(docs.controls)
    target = memorization(evaluator, targets, s.prefix, s.suffix)
    control = memorization(evaluator, controls, s.prefix, s.suffix)
    for found, documents in ((target, targets), (control, controls)):
        found.update({f"extract_{key}": value for key, value in extraction(
            evaluator, documents, s.extraction_prefixes, s.suffix, s.extraction_tail, s.extraction_windows).items()})
        found["loss"] = document_losses(evaluator, documents)
        if docs.decode is not None:
            found["zlib_ratio"] = found["loss"] / np.array([zlib_length(docs.decode(d)) for d in documents])
    target_exposure = [exposure(evaluator, c, docs.alphabet, s.exposure_samples, s.seed)
                       for c in docs.target_canaries]
    control_exposure = [exposure(evaluator, c, docs.alphabet, s.exposure_samples, s.seed)
                        for c in docs.control_canaries]
    canaries = canary_extraction(evaluator, docs.target_canaries)
    control_canaries = canary_extraction(evaluator, docs.control_canaries)
    mean = lambda values: float(np.nanmean(values)) if len(values) and not np.isnan(values).all() else float("nan")
    scores = {"exact_match": mean(target["exact_match"]), "token_acc": mean(target["token_acc"]),
              "rougeL": mean(target["rougeL"]), "exposure": mean(target_exposure),
              "control_exact_match": mean(control["exact_match"]), "control_token_acc": mean(control["token_acc"]),
              "control_rougeL": mean(control["rougeL"]), "control_exposure": mean(control_exposure),
              "canary_extraction": mean(canaries), "control_canary_extraction": mean(control_canaries),
              "mia_auc_loss": auc(target["loss"], control["loss"]),
              "mia_auc_zlib": auc(target.get("zlib_ratio", []), control.get("zlib_ratio", []))}
    for key in (k for k in target if k.startswith("extract_")):
        scores[key], scores[f"control_{key}"] = mean(target[key]), mean(control[key])
    scores.update(filler_losses(evaluator, stream))
    per_document = {"targets": {k: v.tolist() for k, v in target.items()},
                    "controls": {k: v.tolist() for k, v in control.items()},
                    "exposure": target_exposure, "control_exposure": control_exposure,
                    "canary_extraction": canaries.tolist(), "control_canary_extraction": control_canaries.tolist()}
    return scores, per_document


def acr_model(run: PlannedRun, runtime, path):
    """(model, grid): the run's weights on run.acr_layout, read resharded from the checkpoint at
    `path` (the model's tensors only: the AdamW state stays in memory unread). Collective."""
    import torch

    from axon.checkpoint import CheckpointReader, load_shards
    from axon.model import Llama
    from axon.parallel.grid import Grid

    grid = Grid(run.acr_layout, runtime.rank)
    model = Llama(run.config.model, grid, compute_dtype=getattr(torch, run.config.train.dtype)).to(runtime.device)
    reader = CheckpointReader(path)
    reader.verify(grid.rank, grid.layout.world_size, runtime.device)  # collective: each file hashed by one rank
    load_shards(reader, model, None, grid)
    return model, grid


def _measure_acr(run: PlannedRun, trainer, runtime, docs, s, checkpoint_path) -> tuple[dict, dict]:
    """ACR on the run's layout, or on run.acr_layout (pipe folded into depth) from its last checkpoint."""
    if run.acr_layout is None:
        return acr_all(trainer.model, trainer.grid, trainer.device, docs, s)
    if runtime.rank == 0:
        print(f"  ACR on layout {run.acr_layout} (the pipeline stages folded into depth: the search "
              f"backpropagates through the whole model), from {checkpoint_path}", flush=True)
    trainer.optimizer.state.clear()  # the last use of this run's trainer: room for the search's model
    model, grid = acr_model(run, runtime, checkpoint_path)
    try:
        return acr_all(model, grid, runtime.device, docs, s)
    finally:
        grid.destroy()


def train_and_measure(run: PlannedRun, s, runtime, leader: bool, on_row, start=None, stop=None,
                      key: str = "") -> dict:
    """One run: train epoch by epoch, evaluating as configured; returns the last per-document scores.
    `start` (axon.memorize.resume.CellStart): resume from its checkpoint, keeping the rows recorded
    up to it; `stop`: a StopSignal whose request checkpoints at the next step and raises Preempted.
    Rank 0 records the cell's progress in its cell.json (fingerprint `key`) after each evaluation."""
    import torch

    from axon import checkpoint
    from axon.memorize.evaluate import ShardedEval
    from axon.memorize.resume import CellStart, write_cell
    from axon.parallel.grid import Grid
    from axon.parallel.sharding import named_shardings
    from axon.runtime.metrics import METRICS_FILE, MetricsLog, read_metrics
    from axon.runtime.run_dir import keep_metrics_through
    from axon.runtime.trainer import Preempted, Trainer

    config, stream, docs = run.config, run.stream, run.docs
    start = start or CellStart()
    grid = Grid(config.layout, runtime.rank)
    trainer = Trainer(config, grid, runtime.device, peak_tflops=config.train.peak_tflops, source=stream)
    trainer.stop_signal = stop
    params = sum(torch.Size(sh.global_shape).numel() for _, _, sh in named_shardings(trainer.model))
    rows, per_document, trained_s, t = [], {}, 0.0, config.train
    first, saved, earlier = 0, None, {}  # resumed step, the last checkpoint, step losses before `first`
    if start.checkpoint:
        trainer.resume_from(checkpoint.CheckpointReader(start.checkpoint))  # collective; verifies the files
        first, saved = trainer.start_step, start.checkpoint
        if leader:
            record = start.record or {}
            rows = [r for r in record.get("rows", []) if r["epoch"] in start.evaluated]
            per_document = record["documents"] if rows and len(rows) == len(record["rows"]) else {}
            trained_s = record.get("trained_s", 0.0) if per_document else rows[-1]["train_seconds"] if rows else 0.0
            keep_metrics_through(config.out_dir, first)
            earlier = {m["step"]: m for m in read_metrics(Path(config.out_dir) / METRICS_FILE)}
            for row in rows:
                on_row(row)
            print(f"  resumed from {start.checkpoint} at step {first} ({len(rows)} evaluation(s) kept)", flush=True)
    elif leader:
        write_cell(run, key, False, [], {}, 0.0)  # this sweep's from now on: its checkpoints may be resumed
    log = MetricsLog(config.out_dir, stream.total_steps, max(1, stream.total_steps // 4), enabled=leader,
                     append=first > 0)
    try:
        for epoch in range(1, s.epochs + 1):
            begin, end = (epoch - 1) * stream.steps_per_epoch, epoch * stream.steps_per_epoch
            evaluated = epoch == s.epochs or (epoch % s.eval_every == 0 and not run.probe)
            if end <= first and (not evaluated or epoch in start.evaluated):
                continue  # trained (and evaluated) before the stop
            trainer.pause_clock()  # the last epoch's evaluation is not a step's time
            started = time.perf_counter()
            losses = [earlier[step + 1] for step in range(begin, min(end, first)) if step + 1 in earlier]
            for step in range(max(begin, first), end):
                metrics = trainer.step(step)
                if step == first:
                    trainer.save_gemm_choices()
                losses.append(metrics)
                log.record(metrics)
                done = step + 1
                if t.checkpoint_every and (done % t.checkpoint_every == 0 or done == stream.total_steps) \
                        or trainer.stop_agreed:
                    saved = checkpoint.save(trainer, done, t.keep_checkpoints)
                    trainer.pause_clock()
                if trainer.stop_agreed:  # every rank saw the same vote in this step's reductions
                    trainer.save_gemm_choices()
                    if leader:
                        write_cell(run, key, False, rows, per_document, trained_s + time.perf_counter() - started)
                    raise Preempted(done, saved)
            trained_s += time.perf_counter() - started
            if not evaluated:
                continue
            if run.probe:  # a learning-rate probe: its validation loss only
                scores = filler_losses(ShardedEval(trainer.model, trainer.grid, trainer.device, s.eval_batch), stream)
            else:
                scores, per_document = evaluate_all(trainer, docs, stream, s)
            if run.acr and epoch == s.epochs:
                if run.acr_layout is not None and (saved is None or checkpoint.checkpoint_step(Path(saved)) != end):
                    saved = checkpoint.save(trainer, end, t.keep_checkpoints)  # the search reads it resharded
                trainer.save_gemm_choices()
                started = time.perf_counter()
                acr_scores, acr_documents = _measure_acr(run, trainer, runtime, docs, s, saved)
                scores.update(acr_scores, acr_seconds=time.perf_counter() - started)
                per_document.update(acr_documents)
            row = _row(run, params, epoch, end, scores, losses, trained_s)
            rows.append(row)
            on_row(row)
            if leader:
                write_cell(run, key, False, rows, per_document, trained_s)
            if leader and run.probe:
                print(f"  epoch {epoch}/{s.epochs} | train loss {row['train_loss']:.3f} | val loss "
                      f"{row['val_loss']:.4f}", flush=True)
            elif leader:
                print(f"  epoch {epoch}/{s.epochs} | train loss {row['train_loss']:.3f} | exact match "
                      f"{row['exact_match']:.3f} (control {row['control_exact_match']:.3f}) | token acc "
                      f"{row['token_acc']:.3f} | Rouge-L {row['rougeL']:.3f} | exposure {row['exposure']:.2f} bits "
                      f"(control {row['control_exposure']:.2f}) | val loss {row['val_loss']:.3f}"
                      + (f" | ACR {row['acr']:.2f}, {row['acr_memorized']:.3f} > 1 (control "
                         f"{row['control_acr']:.2f}, {row['control_acr_memorized']:.3f}) in {row['acr_seconds']:.0f} s"
                         if "acr" in scores else ""), flush=True)
        trainer.save_gemm_choices()  # evaluation's shapes too
    finally:
        log.close()
        grid.destroy()
    result = {"model": run.model.name, "params": params, "loss_kind": run.loss.kind, "loss": run.loss.tag,
              "seed": stream.seed, "epoch": s.epochs, **per_document}
    if leader:
        write_cell(run, key, True, rows, result, trained_s)  # done: a rerun reads this instead of training
    return result


def run_sweep(exp: Experiment, docs: DocumentSets, runs: list[PlannedRun], runtime, starts=None,
              stop=None) -> list[dict]:
    """Every planned run in order; rank 0 rewrites the results after each evaluation. `starts`
    (axon.memorize.resume.agree_on_resume): cells done before are read back, not run again, and
    a cell stopped mid-way resumes from its checkpoint; `stop`: a StopSignal (preemption)."""
    from axon.memorize import report
    from axon.memorize.lr_selection import settle
    from axon.memorize.resume import CellStart, fingerprint, write_cell
    from axon.runtime.trainer import TrainingDiverged

    leader = runtime.rank == 0
    out = Path(exp.out_dir)
    rows, documents = [], []
    starts = starts or [CellStart() for _ in runs]
    if leader:
        out.mkdir(parents=True, exist_ok=True)
        report.write_setup(out, exp, docs, [run for run in runs if not run.probe])

    def on_row(row):
        rows.append(row)
        if leader:
            report.write_results(out, rows)

    probe_rows, probes = [], sum(run.probe for run in runs)
    started = time.perf_counter()
    for index, (run, start) in enumerate(zip(runs, starts), 1):
        if not run.probe and probe_rows is not None and probes:  # the probes come first: settle once, now
            settle(runtime, out, exp.lr_selection, probe_rows, runs)
            probe_rows = None
        sink = probe_rows.append if run.probe else on_row
        described = (f"axon: memorize: learning-rate probe {index}/{probes}: model {run.model.name}, lr "
                     f"{run.config.train.lr:g} (standard loss, seed {run.seed})" if run.probe else
                     f"axon: memorize run {index - probes}/{len(runs) - probes}: model {run.model.name}, loss "
                     f"{run.loss.tag}" + ("" if run.seed is None else f", seed {run.seed}")
                     + (f", lr {run.config.train.lr:g} (chosen)" if run.lr_auto else ""))
        if start.done:
            if leader:
                print(f"{described}: done before ({run.config.out_dir}/cell.json): not run again", flush=True)
                for row in start.record["rows"]:
                    sink(row)
                if not run.probe:
                    documents.append(start.record["documents"])
            continue
        if leader:
            layout = f"layout {run.config.layout}" + (" (auto)" if run.choice is not None else "")
            print(f"{described}: {run.stream.total_steps} steps ({exp.section.epochs} epochs x "
                  f"{run.stream.steps_per_epoch}); {layout}", flush=True)
        key = fingerprint(exp, run) if leader else ""
        try:
            result = train_and_measure(run, exp.section, runtime, leader, sink, start, stop, key)
        except TrainingDiverged as err:
            if not run.probe:
                raise
            if leader:  # a probe that diverged loses the selection (decided on every rank alike)
                print(f"  diverged: {err}", flush=True)
                row = {"model": run.model.name, "lr": run.config.train.lr, "val_loss": float("nan"), "diverged": True}
                write_cell(run, key, True, [row], {}, 0.0)
                sink(row)
            continue
        if not run.probe:
            documents.append(result)
            if leader:
                report.write_per_document(out, documents)
    if leader:
        report.write_per_document(out, documents)
        report.write_report(out, rows, documents)
        print(f"axon: memorize done in {time.perf_counter() - started:.0f} s: {out / 'summary.md'}, "
              f"{out / 'results.csv'}, plots in {out}", flush=True)
    return rows
