"""The memorization experiment's config: which models, which losses, which documents.

    models:      list of model entries, each like a train config's `model` (a preset, a mapping,
                 or {init_from: hf:DIR}) plus an optional `name` and an optional `lr`: this model's
                 peak learning rate (else train.lr), as sizes rarely share the best one, or `auto`:
                 chosen by `lr_selection` before the reported runs and frozen for every loss
    lr_selection: {candidates: [lr, ...], seed: S}: for models with lr: auto, the standard loss is
                 trained once per candidate with seed S (not one of `seeds`) and scored on held-out
                 filler of its own; the lowest validation loss wins (axon/memorize/lr_selection.py)
    losses:      list of `standard` or {kind: goldfish, k: 4, h: 13, strategy: hash}
    targets:     default (generated records) | natural (plain English of the Python help topics) |
                 a .txt/.jsonl file or a directory of them (all of it is trained)
    controls:    none | a .txt/.jsonl file or a directory: documents never trained on (the baseline)
    tokenizer:   bytes | bpe:V (trained on the generated corpus, cached in out_dir) | a local tokenizer.json
    filler:      default (the generated corpus) | a token file (.tok/.npy/.bin)
    experiment:  the knobs below (ExperimentSection)
    seeds:       [s, ...]: every model x loss runs once per seed; a seed sets experiment.seed (the
                 documents drawn, the stream's order, the placements) and train.seed (model init);
                 the tokenizer and the filler text stay those of the config's experiment.seed
    quick:       {KEY: VALUE, ...}: the overrides `--quick` applies (a reduced local run)
    layout, layout_machine, train, overlap, out_dir: as in a train config (train.steps and
                 train.loss are set per run: steps from the epochs, loss from `losses`)

Every string may name environment variables (`hf:${LLAMA_8B_DIR}`), so one config serves every
user of a machine: read_mapping expands them, as for a train config (axon.config.loading).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


from axon.config import ConfigError, RunConfig, build_config, build_section, reject_unknown
from axon.config.loading import read_mapping


@dataclass
class ExperimentSection:
    documents: int = 32  # default targets: fictional documents trained on
    controls: int = 32  # generated documents drawn like the default targets and never trained on
    control_fraction: float = 0.0  # with targets=PATH and no controls file: this share of it held out as controls
    canaries: int = 8  # canaries trained on (0 = none); as many control canaries
    canary_digits: int = 8  # digits in a canary's secret: 10^8 possible secrets
    exposure_samples: int = 255  # random secrets each canary is ranked against
    epochs: int = 16  # passes over the targets; the metrics are taken after each (see eval_every)
    repeats: int = 1  # times each target appears per epoch
    target_tokens: int = 0  # a target's trained length (0: a whole sequence, seq_len + 1); shorter leaves room
    placement: str = "start"  # where a target sits in its sequence: start | random (an offset drawn per sequence)
    near_duplicates: int = 0  # tokens of a target document replaced in every injection (0: exact repeats)
    filler_per_epoch: int = 96  # filler sequences per epoch (rounded up to whole steps)
    prefix: int = 32  # tokens given to the model
    suffix: int = 48  # tokens it must reproduce
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    extraction_prefixes: tuple[int, ...] = (8, 16, 32, 64)  # extraction: `suffix` tokens after p tokens ...
    extraction_windows: int = 4  # ... at windows starting 0, suffix, 2 x suffix, ... (at most this many)
    extraction_tail: int = 50  # and the last this many tokens after all the rest (0: not measured)
    eval_batch: int = 64  # sequences per forward per data x depth shard during evaluation
    val_sequences: int = 64  # held-out filler sequences for the validation loss
    seed: int = 0  # documents, canaries, filler and the stream's order
    acr: str = "none"  # ACR at the last epoch: none | largest (the model with the most parameters) | all
    acr_iterations: int = 200  # greedy coordinate-gradient iterations per prompt length tried (bisection)
    acr_candidates: int = 16  # prompts scored per iteration and start
    acr_top_k: int = 16  # tokens per prompt position the swaps are drawn from
    acr_init: str = "both"  # starts: the document's own last prefix tokens (context), random tokens, or both
    acr_documents: int = 0  # search the first this many targets and controls (0: all)


@dataclass(frozen=True)
class LossSpec:
    kind: str  # "standard" | "goldfish"
    k: int = 0
    h: int = 0
    strategy: str = ""

    @property
    def tag(self) -> str:
        if self.kind == "standard":
            return "standard"
        return f"goldfish-k{self.k}-h{self.h}" + ("" if self.strategy == "hash" else f"-{self.strategy}")


@dataclass
class ModelEntry:
    name: str
    raw: Any  # what goes into a train config's `model`
    lr: float | None = None  # this model's peak learning rate (None: train.lr)
    lr_auto: bool = False  # lr: auto, chosen by the experiment's lr_selection


@dataclass(frozen=True)
class LrSelection:
    """How `lr: auto` models get their peak learning rate: one standard-loss run per candidate,
    with a seed of its own, scored on held-out filler no reported run uses."""
    candidates: tuple[float, ...]
    seed: int


@dataclass
class Experiment:
    models: list[ModelEntry]
    losses: list[LossSpec]
    targets: str
    controls: str
    tokenizer: str
    filler: str
    section: ExperimentSection
    base: dict[str, Any]  # layout, layout_machine, train, overlap: shared by every run
    out_dir: str
    seeds: tuple[int, ...] = ()  # () = one run per cell with experiment.seed and train.seed as given
    lr_selection: LrSelection | None = None  # set when a model has lr: auto

    def seed_list(self) -> list[int | None]:
        """The seeds each cell runs with; [None]: the config's own seeds, once."""
        return list(self.seeds) or [None]

    def run_config(self, model: ModelEntry, loss: LossSpec, steps: int, seed: int | None = None,
                   lr: float | None = None, folder: str = "runs") -> RunConfig:
        """The train config of one run: this model and loss, `steps` steps (and train.seed `seed`),
        peak rate `lr` (else the model's; an lr: auto model gets the first candidate until chosen),
        in out_dir/`folder`."""
        raw = {key: (dict(value) if isinstance(value, dict) else value) for key, value in self.base.items()}
        raw["model"] = model.raw
        raw["train"] = {**raw.get("train", {}), "steps": steps, "loss": loss.kind}
        if seed is not None:
            raw["train"]["seed"] = seed
        rate = self.lr_selection.candidates[0] if lr is None and model.lr_auto else lr
        if rate is not None or model.lr is not None:
            raw["train"]["lr"] = model.lr if rate is None else rate
        if loss.kind == "goldfish":
            raw["goldfish"] = {"k": loss.k, "h": loss.h, "strategy": loss.strategy}
        tag = f"{model.name}-{loss.tag}" + ("" if seed is None else f"-seed{seed}") + (f"-lr{lr:g}" if lr else "")
        raw["out_dir"] = str(Path(self.out_dir) / folder / tag)
        return build_config(raw)


TOP_LEVEL_KEYS = ("models", "losses", "targets", "controls", "tokenizer", "filler", "experiment", "layout",
                  "layout_machine", "train", "overlap", "out_dir", "seeds", "quick", "lr_selection")


def _loss(item: Any, index: int) -> LossSpec:
    if item == "standard":
        return LossSpec("standard")
    if item == "goldfish":
        item = {"kind": "goldfish"}
    if not isinstance(item, dict) or item.get("kind") not in ("standard", "goldfish"):
        raise ConfigError(f"losses[{index}] must be 'standard', 'goldfish' or a mapping "
                          f"{{kind: goldfish, k: 4, h: 13, strategy: hash}}, got {item!r}")
    reject_unknown(item, ("kind", "k", "h", "strategy"), f"losses[{index}]")
    if item["kind"] == "standard":
        return LossSpec("standard")
    spec = LossSpec("goldfish", item.get("k", 4), item.get("h", 13), item.get("strategy", "hash"))
    build_config({"train": {"loss": "goldfish"}, "goldfish": {"k": spec.k, "h": spec.h, "strategy": spec.strategy}})
    return spec


def _model_entry(item: Any, index: int) -> ModelEntry:
    if isinstance(item, str):
        return ModelEntry(item, item)
    if not isinstance(item, dict):
        raise ConfigError(f"models[{index}] must be a preset name or a mapping, got {item!r}")
    item = dict(item)
    name = item.pop("name", None) or item.get("preset") or f"model{index}"
    lr = item.pop("lr", None)
    if lr == "auto":
        return ModelEntry(str(name), item, None, lr_auto=True)
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
        raise ConfigError(f"models[{index}].lr must be a positive number (this model's peak learning rate) or "
                          f"auto (chosen by lr_selection), got {lr!r}")
    return ModelEntry(str(name), item, None if lr is None else float(lr))


def load_experiment(path: str | Path, overrides: list[str] = (), quick: bool = False,
                    seeds: int | None = None) -> Experiment:
    """The experiment of a YAML file with `--set` overrides; `quick` applies the file's `quick:`
    overrides first, `seeds` = N keeps the first N of its seeds (extended by consecutive ones)."""
    path = Path(path)
    raw = read_mapping(path, overrides)
    if quick:
        reduced = raw.get("quick")
        if not isinstance(reduced, dict) or not reduced:
            raise ConfigError(f"--quick needs a `quick:` mapping of overrides in {path.name} (e.g. "
                              "quick: {experiment.epochs: 12}), which it does not have")
        import yaml

        raw = read_mapping(path, [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
                                  .removesuffix("\n...") for key, value in reduced.items()] + list(overrides))
    reject_unknown(raw, TOP_LEVEL_KEYS, "")
    models_raw = raw.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise ConfigError(f"models must be a non-empty list of model entries, got {models_raw!r}")
    models = [_model_entry(item, i) for i, item in enumerate(models_raw)]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"models need distinct names (they name the runs), got {', '.join(names)}")
    losses_raw = raw.get("losses", ["standard", {"kind": "goldfish", "k": 4, "h": 13}])
    if not isinstance(losses_raw, list) or not losses_raw:
        raise ConfigError(f"losses must be a non-empty list, got {losses_raw!r}")
    losses = [_loss(item, i) for i, item in enumerate(losses_raw)]
    train = raw.get("train", {}) or {}
    for key in ("steps", "loss"):
        if isinstance(train, dict) and key in train:
            raise ConfigError(f"train.{key} is set per run by the experiment (steps from experiment.epochs, "
                              "loss from losses); remove it")
    if isinstance(train, dict) and train.get("resume"):
        raise ConfigError("train.resume does not apply to a memorization sweep (each run starts from scratch "
                          "or from model init_from); remove it")
    section = build_section(ExperimentSection, raw.get("experiment", {}) or {}, "experiment")
    _check_section(section)
    strings = {}
    for key, default in (("targets", "default"), ("controls", "none"), ("tokenizer", "bytes"), ("filler", "default"),
                         ("out_dir", "runs/memorize")):
        value = raw.get(key, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
        strings[key] = value
    base = {key: raw[key] for key in ("layout", "layout_machine", "train", "overlap") if key in raw}
    if strings["controls"] != "none" and strings["targets"] in ("default", "natural"):
        raise ConfigError(f"controls={strings['controls']!r} needs targets=PATH too (targets={strings['targets']} "
                          "come with their own controls: experiment.controls)")
    experiment = Experiment(models, losses, strings["targets"], strings["controls"], strings["tokenizer"],
                            strings["filler"], section, base, strings["out_dir"], _seeds(raw.get("seeds"), seeds))
    experiment.lr_selection = _lr_selection(raw.get("lr_selection"), experiment)
    for model in models:  # every model entry builds into a valid train config now, not mid-sweep
        experiment.run_config(model, losses[0], 1)
    return experiment


def _lr_selection(raw: Any, exp: Experiment) -> LrSelection | None:
    """`lr_selection:` checked against the models that need it and the seeds it must not share."""
    auto = [m.name for m in exp.models if m.lr_auto]
    if raw is None:
        if auto:
            raise ConfigError(f"models {', '.join(auto)} have lr: auto, which needs lr_selection: {{candidates: "
                              "[1.0e-3, 2.0e-3, 4.0e-3], seed: 100}} (a seed none of `seeds` uses)")
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"lr_selection must be a mapping {{candidates: [...], seed: S}}, got {raw!r}")
    reject_unknown(raw, ("candidates", "seed"), "lr_selection")
    candidates, seed = raw.get("candidates"), raw.get("seed")
    if not isinstance(candidates, list) or not candidates or len(set(candidates)) != len(candidates) or not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0 for c in candidates):
        raise ConfigError(f"lr_selection.candidates must be a non-empty list of distinct positive learning rates, "
                          f"got {candidates!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"lr_selection.seed must be an integer, got {seed!r}")
    reported = list(exp.seeds) or [exp.section.seed]
    if seed in reported:
        raise ConfigError(f"lr_selection.seed={seed} is also a seed of the reported runs ({', '.join(map(str, reported))}): "
                          "the rates must be chosen on a seed those runs do not use")
    return LrSelection(tuple(float(c) for c in candidates), seed)


def _seeds(listed: Any, count: int | None) -> tuple[int, ...]:
    """`seeds:` checked, cut or extended to `count` (--seeds N)."""
    if listed is None:
        listed = []
    if not isinstance(listed, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in listed) \
            or len(set(listed)) != len(listed):
        raise ConfigError(f"seeds must be a list of distinct integers, got {listed!r}")
    if count is None:
        return tuple(listed)
    if count < 1:
        raise ConfigError(f"--seeds must be at least 1, got {count}")
    start = max(listed, default=-1) + 1
    return tuple(listed[:count] + list(range(start, start + max(0, count - len(listed)))))


def _check_section(s: ExperimentSection) -> None:
    positive = ("epochs", "repeats", "prefix", "suffix", "eval_every", "eval_batch", "canary_digits",
                "exposure_samples")
    for name in positive:
        if getattr(s, name) < 1:
            raise ConfigError(f"experiment.{name} must be at least 1, got {getattr(s, name)}")
    if s.acr not in ("none", "largest", "all") or s.acr_init not in ("context", "random", "both"):
        raise ConfigError(f"experiment.acr must be none, largest or all and experiment.acr_init context, random "
                          f"or both, got {s.acr!r} and {s.acr_init!r}")
    if s.placement not in ("start", "random"):
        raise ConfigError(f"experiment.placement must be start or random, got {s.placement!r}")
    if any(p < 1 for p in s.extraction_prefixes) or s.extraction_windows < 1 or s.extraction_tail < 0:
        raise ConfigError(f"experiment.extraction_prefixes must be positive, extraction_windows at least 1 and "
                          f"extraction_tail >= 0, got {list(s.extraction_prefixes)}, {s.extraction_windows} and "
                          f"{s.extraction_tail}")
    if s.target_tokens and s.target_tokens < s.prefix + s.suffix:
        raise ConfigError(f"experiment.target_tokens={s.target_tokens} is shorter than experiment.prefix + "
                          f"experiment.suffix = {s.prefix + s.suffix}")
    for name in ("acr_iterations", "acr_candidates", "acr_top_k"):
        if getattr(s, name) < 1 + (name == "acr_candidates"):
            raise ConfigError(f"experiment.{name} must be at least {1 + (name == 'acr_candidates')}, "
                              f"got {getattr(s, name)}")
    if not 0 <= s.control_fraction < 1:
        raise ConfigError(f"experiment.control_fraction must be in [0, 1), got {s.control_fraction}")
    for name in ("documents", "controls", "canaries", "filler_per_epoch", "val_sequences", "near_duplicates",
                 "acr_documents", "target_tokens"):
        if getattr(s, name) < 0:
            raise ConfigError(f"experiment.{name} must be >= 0, got {getattr(s, name)}")
