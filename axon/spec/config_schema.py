"""The run configuration's sections, as typed dataclasses: what a config file may say and its defaults.

A section's keys are its fields; `axon.spec.sections.build_section` reads a YAML mapping into
one (unknown keys, missing keys and wrong types are errors naming the key). The model and
layout sections are the shared `ModelShape` and `Layout` of axon.spec.

The schema lives here, with the rules both sides share, so that `axon train` (axon.config) and
`perfmodel plan --config` (axon.spec.config_file) read a run with the same defaults: one copy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from axon.spec.layout import AXES, Layout
from axon.spec.shapes import ModelShape


@dataclass
class TrainConfig:
    steps: int = 100
    global_batch: int = 16  # sequences per optimizer step, over the whole world
    # sequences per micro-batch per data x depth shard; 0 = automatic: the whole shard without a pipeline, with
    # one the largest that still gives 4 x layout.pipe micro-batches, else 1 (axon.spec.training.split_micro_batches)
    micro_batch: int = 0
    lr: float = 3e-4
    weight_decay: float = 0.1  # applied to matrices only, never to norm weights
    betas: tuple[float, float] = (0.9, 0.95)
    seed: int = 1234
    dtype: str = "float32"  # compute dtype; "bfloat16" keeps fp32 master weights and optimizer state
    # dtype gradients travel in for the data all-reduces and depth reduce-scatters; "bfloat16" halves
    # those bytes (sums still land in fp32 gradients)
    grad_reduce_dtype: str = "float32"
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    log_every: int = 1  # progress line every N steps (metrics.jsonl gets every step)
    peak_tflops: float = 0.0  # per-rank peak for MFU; 0 = measure a large GEMM at start-up
    schedule: str = "cosine"  # "cosine" (after warm-up, down to min_lr_ratio x lr) or "constant"
    warmup_steps: int = 0  # linear warm-up from lr / warmup_steps to lr
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    checkpoint_every: int = 0  # steps between checkpoints (and one at the end); 0 = only at the end (final_checkpoint)
    # `axon train` saves a checkpoint after its last step whenever it trained at least one step
    # (false: only train.checkpoint_every's and a preemption's)
    final_checkpoint: bool = True
    keep_checkpoints: int = 2  # newest checkpoints kept under OUT_DIR/checkpoints
    # every N steps (and after the last) the validation loss over data.validation_sequences; 0 = after the last only
    eval_every: int = 0
    trace_steps: int = 0  # write a Chrome trace of the collectives of steps 2..N+1 per rank (0 = none)
    recompute: str = "none"  # "block": keep only each block's input, recompute its activations in backward
    resume: str = ""  # "" = start fresh, "latest" = newest checkpoint in out_dir (if any), or a checkpoint path
    loss: str = "standard"  # "standard" cross-entropy or "goldfish" (the goldfish section says which tokens drop)
    # blocks per pipeline stage (per chunk, in virtual-stage order, with layout.virtual_stages); () = balanced by parameters
    stage_layers: tuple[int, ...] = ()
    collective_timeout_s: float = 0.0  # a collective waiting this long for a peer fails the job; 0 = $AXON_COLLECTIVE_TIMEOUT_S or 600
    peer_timeout_s: float = 30.0  # a rank whose heartbeat is this old is lost: every survivor stops, naming it
    straggler_every: int = 50  # every N steps rank 0 records the slowest rank's step (0 = never)
    # time each GEMM shape's operand layouts on first use and keep the fastest (axon/kernels/tune.py);
    # "auto" = on for GPUs, off on CPUs (wins there were within noise, and noisy choices differ between runs)
    gemm_tuning: bool | str = "auto"
    gemm_tuning_cache: str = ""  # JSON file of tuned choices, kept across restarts; "" = OUT_DIR/gemm_tuning.json
    # torch.compile the local math between collectives (RMSNorm, RoPE, SwiGLU, the middle residual add):
    # "auto" = on for GPUs (CUDA and ROCm), where it saves kernel launches, off on CPUs
    compile: bool | str = "auto"


@dataclass
class GoldfishSection:
    k: int = 4  # drop about 1 target token in k
    h: int = 13  # hash the h token ids that end at each target
    strategy: str = "hash"  # "hash" (axon/data/goldfish.py), "static" (every k-th position), "hash-table" (the reference's)


@dataclass
class DataConfig:
    # a .tok file (python -m axon data prepare), .npy, .bin (uint16), .txt, or "synthetic" (a generated
    # Markov chain); "" (unset) is refused by `axon train` (axon.config.checks.check_data_source)
    source: str = ""
    shuffle: bool = False  # visit the file's windows in a seeded random order per epoch (False: in file order)
    seed: int = 0  # the shuffle's seed: epoch e's order is a permutation drawn from (seed, e)
    validation_sequences: int = 0  # windows held out at the file's end for the validation loss (0 = none)


@dataclass
class OverlapSection:
    all_reduce: bool = True  # OAR: backward all-reduce of dX overlaps the dW GEMM
    reduce_scatter: bool = True  # ORS: depth reduce-scatter of dW runs on through backward
    all_gather: bool = True  # OAG: depth all-gathers of upcoming weights are issued ahead
    prefetch_distance: int = 2  # OAG: how many gathers ahead of the one being used
    data_parallel: bool = True  # DP: gradient buckets are all-reduced over data while backward runs
    bucket_mb: float = 25.0  # DP: gradient bucket size in MiB (also used when data_parallel is off)


@dataclass
class RunConfig:
    model: ModelShape
    layout: Layout
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    overlap: OverlapSection = field(default_factory=OverlapSection)
    goldfish: GoldfishSection = field(default_factory=GoldfishSection)
    out_dir: str = "runs/default"
    model_name: str = "custom"
    init_from: str = ""  # model.init_from: "" (random init) or "hf:DIR" (Hugging Face Llama weights)
    # layout: auto -- perfmodel picks the layout at start-up (axon.planning.auto_layout); until then
    # `layout` is a 1-rank placeholder.
    layout_auto: bool = False
    layout_machine: str = ""  # profile name or YAML for layout: auto; "" = OUT_DIR/machine_profile.yaml or calibrate

    def to_dict(self) -> dict[str, Any]:
        layout = {axis: getattr(self.layout, axis) for axis in AXES}
        layout["order"] = ",".join(self.layout.order)
        layout["virtual_stages"] = self.layout.virtual_stages
        return {
            "model": {**dataclasses.asdict(self.model), **({"init_from": self.init_from} if self.init_from else {})},
            "layout": layout,
            "train": dataclasses.asdict(self.train),
            "data": dataclasses.asdict(self.data),
            "overlap": dataclasses.asdict(self.overlap),
            "goldfish": dataclasses.asdict(self.goldfish),
            "out_dir": self.out_dir,
        }  # after layout: auto, the layout chosen (so the saved config reruns exactly that)


TOP_LEVEL_KEYS = ("model", "layout", "train", "data", "overlap", "goldfish", "out_dir", "layout_machine")
