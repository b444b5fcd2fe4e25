"""Interleaved 1F1B (layout.virtual_stages): trains exactly like the 1-process run (DESIGN §4).

Every layout of 4 ranks with pipe >= 2 at v = 2 (and a subset of 8 ranks: every one is in
benchmarks/interleaved_equivalence.py), then the features a pipeline must compose with, each
against the 1-process run of the same config: recompute, the Goldfish loss, many small DP
buckets, every overlap switch off (bitwise the same as on), uneven train.stage_layers,
checkpoints resharded between (pipe, v) pairs, and the forward-only evaluation the
memorization metrics use. Each world is spawned once and runs all its cases.
"""

from __future__ import annotations

import pytest
import torch

from axon import checkpoint
from axon.config import ConfigError, build_config, check_layout
from axon.parallel.grid import Grid
from axon.parallel.full_tensor import full_parameters
from axon.runtime.trainer import Trainer
from axon.spec.layout import AXES, Layout, factorizations
from axon.testing.spawn import run_distributed
from axon.testing.runs import relative_errors

# The equivalence suite's model: hidden 96 = 16 heads x 6 with 8 kv heads (GQA).
MODEL = {"layers": 2, "hidden": 96, "heads": 16, "kv_heads": 8, "ffn": 72, "vocab": 136, "seq_len": 16}

STEPS, SAVE_AT = 5, 3
OVERLAPS_OFF = {"all_reduce": False, "reduce_scatter": False, "all_gather": False, "data_parallel": False}


def make_config(layers: int, layout: Layout, out_dir: str = "runs/interleaved", overlap=None, **train):
    return build_config({
        "model": {**MODEL, "layers": layers},
        "layout": {**{a: getattr(layout, a) for a in AXES}, "virtual_stages": layout.virtual_stages},
        "out_dir": out_dir, "overlap": overlap or {},
        "train": {"steps": STEPS, "global_batch": 8, "micro_batch": 1, "lr": 1e-3, "seed": 7, "grad_clip": 0.5,
                  **train},
    })


def train(config, rank: int, resume: str | None = None):
    """(losses, whole-model parameters) after training `config` (from a checkpoint when given)."""
    grid = Grid(config.layout, rank)
    trainer = Trainer(config, grid, torch.device("cpu"))
    if resume:
        trainer.resume_from(checkpoint.CheckpointReader(resume))
    losses = [m["loss"] for m in trainer.fit()]
    params = full_parameters(trainer.model, grid)
    grid.destroy()
    return losses, params


def evaluate(config, rank: int, ids: torch.Tensor, targets: torch.Tensor):
    """The forward-only passes of the memorization metrics: token losses and greedy tokens."""
    grid = Grid(config.layout, rank)
    model = Trainer(config, grid, torch.device("cpu")).model
    with torch.no_grad():
        out = model.token_losses(ids, targets), model.greedy_tokens(ids)
    grid.destroy()
    return out


def run_cases(rank, world, cases):
    out = []
    for kind, args in cases:
        if kind == "train":
            losses, params = train(*args[:1], rank, *args[1:])
            out.append((losses, params if rank == 0 else None))
        elif kind == "save":  # train with a checkpoint at SAVE_AT; return its path
            train(args[0], rank)
            out.append(str(checkpoint.checkpoint_root(args[0].out_dir) / f"step_{SAVE_AT:08d}"))
        else:
            out.append(evaluate(*args[:1], rank, *args[1:]))
    return out


def interleaved_layouts(world: int) -> list[Layout]:
    """Every factorization of `world` with pipe >= 2, at v = 2."""
    return [Layout(**l.sizes(), virtual_stages=2) for l in factorizations(world, AXES) if l.pipe >= 2]


def name(layout: Layout) -> str:
    return f"{layout.data}x{layout.pipe}x{layout.depth}x{layout.row}x{layout.col} v{layout.virtual_stages}"


def check_matches(results, references, label):
    report = [(case, *relative_errors(*result, *references[case])) for case, result in zip(label, results)]
    print("\ndata x pipe x depth x row x col v | loss | parameters | worst tensor")
    print("\n".join(f"{case} | {loss:.1e} | {model:.1e} | {tensor:.1e}" for case, loss, model, tensor in report))
    for case, loss, model, tensor in report:
        assert loss < 1e-5 and model < 1e-5 and tensor < 1e-4, (case, loss, model, tensor)


# Composition cases on 4 ranks: (what, layout, layers, extra train/overlap keys).
COMPOSED = [
    ("recompute + goldfish + 1 KiB DP buckets", Layout(data=2, pipe=2, virtual_stages=2), 4,
     {"recompute": "block", "loss": "goldfish", "overlap": {"bucket_mb": 1 / 1024}}),
    ("overlaps on", Layout(pipe=2, depth=2, virtual_stages=2), 4, {}),
    ("overlaps off", Layout(pipe=2, depth=2, virtual_stages=2), 4, {"overlap": OVERLAPS_OFF}),
    ("stage_layers [1, 2, 2, 1]", Layout(pipe=2, col=2, virtual_stages=2), 6, {"stage_layers": [1, 2, 2, 1]}),
    ("v=3", Layout(pipe=2, row=2, virtual_stages=3), 6, {}),
]
# Checkpoints: saved at SAVE_AT in the first layout, finished from it in the second.
RESHARDS = [(Layout(data=2, pipe=2, virtual_stages=2), Layout(pipe=4, virtual_stages=2)),
            (Layout(pipe=4), Layout(pipe=2, row=2, virtual_stages=4)),
            (Layout(pipe=2, depth=2, virtual_stages=4), Layout(pipe=2, col=2))]
CHECKPOINT_LAYERS = 8


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    """Every 4-rank case, run in one spawn."""
    root = tmp_path_factory.mktemp("interleaved")
    cases = [("train", (make_config(2 * l.pipe, l),)) for l in interleaved_layouts(4)]
    for what, layout, layers, extra in COMPOSED:
        cases.append(("train", (make_config(layers, layout, **extra),)))
    for index, (before, _) in enumerate(RESHARDS):
        cases.append(("save", (make_config(CHECKPOINT_LAYERS, before, str(root / f"save{index}"),
                                           checkpoint_every=SAVE_AT),)))
    results = run_distributed(4, run_cases, cases)[0]
    # the resumed runs need the saved paths: a second spawn, with the evaluation
    paths = results[-len(RESHARDS):]
    ids = torch.randint(0, MODEL["vocab"], (3, MODEL["seq_len"]), generator=torch.Generator().manual_seed(3))
    targets = torch.roll(ids, -1, dims=1)
    later = [("train", (make_config(CHECKPOINT_LAYERS, after, str(root / f"resume{index}")), paths[index]))
             for index, (_, after) in enumerate(RESHARDS)]
    later.append(("eval", (make_config(4, Layout(pipe=2, row=2, virtual_stages=2)), ids, targets)))
    later_results = run_distributed(4, run_cases, later)[0]
    return cases, results, later, later_results, paths, (ids, targets)


def test_every_four_rank_interleaved_layout_matches_one_process(four_ranks):
    cases, results, *_ = four_ranks
    layouts = interleaved_layouts(4)
    references = {name(l): train(make_config(2 * l.pipe, Layout()), 0) for l in layouts}
    check_matches(results[:len(layouts)], references, [name(l) for l in layouts])


def test_interleaving_composes_with_recompute_goldfish_buckets_overlaps_and_stage_layers(four_ranks):
    cases, results, *_ = four_ranks
    start = len(interleaved_layouts(4))
    composed = results[start:start + len(COMPOSED)]
    references = {}
    for what, _, layers, extra in COMPOSED:
        extra = {k: v for k, v in extra.items() if k != "stage_layers"}
        references[what] = train(make_config(layers, Layout(), **extra), 0)
    check_matches(composed, references, [what for what, *_ in COMPOSED])
    on, off = composed[1], composed[2]
    assert on[0] == off[0] and all(torch.equal(on[1][k], off[1][k]) for k in on[1])  # overlap changes no number


def test_checkpoints_reshard_between_pipe_and_virtual_stage_pairs(four_ranks, tmp_path):
    _, _, later, later_results, paths, _ = four_ranks
    reference_losses, reference = train(make_config(CHECKPOINT_LAYERS, Layout()), 0)
    for (before, after), (losses, params) in zip(RESHARDS, later_results):
        loss, model, tensor = relative_errors(losses, params, reference_losses[SAVE_AT:], reference)
        assert loss < 1e-5 and model < 1e-5 and tensor < 1e-4, (name(before), name(after), loss, model, tensor)
    # and one process finishes a (pipe 2, v 2) checkpoint too
    losses, params = train(make_config(CHECKPOINT_LAYERS, Layout(), str(tmp_path)), 0, paths[0])
    loss, model, _ = relative_errors(losses, params, reference_losses[SAVE_AT:], reference)
    assert loss < 1e-5 and model < 1e-5
    meta = checkpoint.CheckpointReader(paths[0])
    assert meta.layout == RESHARDS[0][0]


def test_forward_only_evaluation_through_interleaved_stages(four_ranks):
    *_, later_results, _, (ids, targets) = four_ranks
    losses, tokens = later_results[-1]
    config = make_config(4, Layout())
    ref_losses, ref_tokens = evaluate(config, 0, ids, targets)
    assert losses.shape == ids.shape and torch.allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    assert torch.equal(tokens, ref_tokens)


def test_interleaving_rules_are_one_sentence_each():
    def problem(layers, layout, **train):
        with pytest.raises(ConfigError) as err:
            check_layout(make_config(layers, layout, **train), layout.world_size)
        return str(err.value)

    assert problem(4, Layout(pipe=4, virtual_stages=2)) == (
        "layout.pipe x layout.virtual_stages = 4 x 2 = 8 chunks need at least one block each, but model.layers=4")
    assert problem(8, Layout(pipe=4, virtual_stages=2), micro_batch=4) == (
        "layout.virtual_stages=2 runs micro-batches in groups of layout.pipe=4, but train.micro_batch=4 gives 2 per "
        "data x depth shard, not a multiple of 4")
    assert problem(8, Layout(data=2, virtual_stages=2)) == (
        "layout.virtual_stages=2 interleaves pipeline stages, but layout.pipe=1")
    assert problem(8, Layout(pipe=2, virtual_stages=2), stage_layers=[4, 4]) == (
        "train.stage_layers=[4, 4] must give 4 chunks (layout.pipe x layout.virtual_stages = 2 x 2) at least one "
        "block each, summing to model.layers=8")
    check_layout(make_config(8, Layout(pipe=2, virtual_stages=2), stage_layers=[1, 3, 3, 1]), 2)  # fine


EIGHT_RANK_SUBSET = [Layout(data=2, pipe=2, depth=2, virtual_stages=2), Layout(pipe=2, row=2, col=2, virtual_stages=2),
                     Layout(pipe=4, depth=2, virtual_stages=2), Layout(pipe=8, virtual_stages=2)]


def test_eight_rank_interleaved_layouts_match_one_process():
    results = run_distributed(8, run_cases, [("train", (make_config(2 * l.pipe, l),)) for l in EIGHT_RANK_SUBSET])[0]
    references = {name(l): train(make_config(2 * l.pipe, Layout()), 0) for l in EIGHT_RANK_SUBSET}
    check_matches(results, references, [name(l) for l in EIGHT_RANK_SUBSET])
