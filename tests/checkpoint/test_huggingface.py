"""Hugging Face Llama in and out, checked against transformers itself.

The reference models are built here by transformers (no hub), saved with save_pretrained
and read back by transformers in float32: axon must give the same logits and losses on
every layout, and what axon exports must be the same tensors, bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from axon.checkpoint import huggingface as hf
from axon.config import ConfigError, check_init_weights, load_config
from axon.parallel.grid import Grid
from axon.model import Llama
from axon.parallel.full_tensor import full_parameters
from axon.spec.layout import Layout
from axon.spec.parameters import parameter_shapes
from axon.spec.shapes import ModelShape
from axon.testing.spawn import run_distributed

# transformers is imported inside the functions that use it: the spawned ranks import this
# module too, and only need axon (importing transformers costs each of them seconds).

SIZES = dict(hidden_size=96, num_attention_heads=16, num_key_value_heads=8, intermediate_size=72,
             vocab_size=136, num_hidden_layers=2, max_position_embeddings=8192, rms_norm_eps=1e-5,
             initializer_range=0.1)  # larger weights than the default 0.02: attention that depends on position
# original context 1024 puts head_dim 6's three wavelengths (6, 498, 39,500) in all three llama3 bands
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 1024, "rope_theta": 500000.0}
CASES = {
    "llama3": dict(config=dict(rope_parameters=LLAMA3), dtype=torch.float32),
    "tied": dict(config=dict(tie_word_embeddings=True), dtype=torch.float32),
    "bf16": dict(config=dict(), dtype=torch.bfloat16),
}
LAYOUTS = [  # (case, layout) for the 4-rank world
    ("llama3", Layout(col=4)), ("llama3", Layout(row=4)), ("llama3", Layout(depth=4)),
    ("llama3", Layout(data=2, col=2)), ("llama3", Layout(depth=2, row=2)),
    ("tied", Layout(row=2, col=2)), ("bf16", Layout(depth=2, row=2)),
]
TOL = 1e-5


def save_hf_model(directory, case: str, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**SIZES, **CASES[case]["config"]))
    with torch.no_grad():  # norm gains start at 1; make them distinct so a swapped norm shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.2 * torch.randn_like(param))
    model.to(CASES[case]["dtype"]).save_pretrained(directory, safe_serialization=True)


def saved_tensors(directory) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in set(hf.weight_files(directory).values()):
        tensors.update(load_file(file))
    return tensors


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """case -> (directory, the transformers model read back in float32, token ids, targets)."""
    from transformers import LlamaForCausalLM

    tokens = torch.randint(0, SIZES["vocab_size"], (2, 17), generator=torch.Generator().manual_seed(1))
    out = {}
    for case in CASES:
        directory = tmp_path_factory.mktemp(case)
        save_hf_model(directory, case)
        reference = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        out[case] = (directory, reference, tokens[:, :-1], tokens[:, 1:])
    return out


def reference_outputs(reference, ids, targets):
    tokens = torch.cat([ids, targets[:, -1:]], dim=1)  # transformers shifts labels itself
    with torch.no_grad():
        logits, mean_loss = reference(ids).logits, reference(tokens, labels=tokens).loss
    per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    return logits, per_token, mean_loss


def axon_outputs(rank, layout, directory, ids, targets):
    """Full logits (gathered over row) and per-token losses of axon's model loaded from `directory`."""
    grid = Grid(layout, rank)
    model = Llama(hf.shape_from_hf(directory), grid)
    hf.load_hf_weights(model, grid, directory)
    with torch.no_grad():
        logits, losses = model(ids), model.token_losses(ids, targets)
    if grid.size("row") > 1:  # each rank holds a vocab slice; the row group's ranks are in row order
        parts = [torch.empty_like(logits) for _ in range(grid.size("row"))]
        dist.all_gather(parts, logits.contiguous(), group=grid.group("row"))
        logits = torch.cat(parts, dim=-1)
    grid.destroy()
    return logits, losses


def assert_matches(logits, losses, expected, label):
    ref_logits, ref_losses, ref_mean = expected
    error = ((logits - ref_logits).abs().max() / ref_logits.abs().max()).item()
    assert error <= TOL, f"{label}: logits differ by {error:.2e} relative"
    assert (losses - ref_losses).abs().max() <= TOL * ref_losses.abs().max(), label
    assert abs(losses.mean().item() - ref_mean.item()) <= TOL * ref_mean.item(), label
    print(f"{label}: max |logits - transformers| / max |logits| = {error:.2e}")


@pytest.mark.parametrize("case", list(CASES))
def test_one_process_load_matches_transformers_and_exports_bitwise(models, case, tmp_path):
    directory, reference, ids, targets = models[case]
    logits, losses = axon_outputs(0, Layout(), directory, ids, targets)
    assert_matches(logits, losses, reference_outputs(reference, ids, targets), f"{case} 1 process")

    grid = Grid(Layout(), 0)
    model = Llama(hf.shape_from_hf(directory), grid)
    hf.load_hf_weights(model, grid, directory)
    # a small shard limit makes the export write several files and an index
    export_hf_dir = tmp_path / "export"
    hf.export_hf(full_parameters(model, grid), model.shape, export_hf_dir, max_shard_bytes=60_000)
    assert (export_hf_dir / hf.INDEX_FILE).is_file() and len(set(hf.weight_files(export_hf_dir).values())) > 1
    assert hf.shape_from_hf(export_hf_dir) == model.shape

    original = saved_tensors(directory)
    if case == "tied":
        assert "lm_head.weight" not in original  # the loader took the LM head from the embedding
        original["lm_head.weight"] = original["model.embed_tokens.weight"]
    exported = saved_tensors(export_hf_dir)
    assert set(exported) == set(original)
    for name, tensor in original.items():
        assert exported[name].dtype == torch.float32 and torch.equal(exported[name], tensor.float()), name

    from transformers import LlamaForCausalLM

    again = LlamaForCausalLM.from_pretrained(export_hf_dir).eval()
    want = reference.state_dict()
    assert set(again.state_dict()) == set(want)
    for name, tensor in again.state_dict().items():
        assert torch.equal(tensor, want[name]), name
    with torch.no_grad():  # the exported config.json means the same model to transformers (RoPE, eps)
        assert torch.equal(again(ids).logits, reference(ids).logits)


def test_llama3_rope_matches_transformers():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from axon.kernels.rope import inverse_frequencies, rotary_tables

    # Llama 3.1 8B's attention shape and RoPE
    scaling = {**LLAMA3, "original_max_position_embeddings": 8192}
    config = LlamaConfig(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                         max_position_embeddings=131072, rope_parameters=scaling)
    theirs = LlamaRotaryEmbedding(config)
    ours = inverse_frequencies(128, 500000.0, (8.0, 1.0, 4.0, 8192))
    assert ((theirs.inv_freq.double() - ours).abs() / ours).max() < 1e-6
    unscaled = inverse_frequencies(128, 500000.0)
    ratio = ours / unscaled  # all three llama3 bands occur: kept, divided by 8, interpolated
    assert (ratio == 1).sum() > 0 and ((ratio - 1 / 8).abs() < 1e-15).sum() > 0
    assert ((ratio > 1 / 8 + 1e-6) & (ratio < 1 - 1e-6)).sum() > 0

    cos, sin = theirs(torch.zeros(1, 1, 128), torch.arange(16)[None])
    our_cos, our_sin = rotary_tables(16, 128, 500000.0, scaling=(8.0, 1.0, 4.0, 8192))
    # transformers multiplies positions in float32, so its angles drift by ~position x 6e-8
    assert (cos[0] - our_cos).abs().max() < 1e-6 and (sin[0] - our_sin).abs().max() < 1e-6


def test_llama3_scaling_changes_the_logits(models):
    """The llama3 case would not notice a wrong RoPE if scaling did not move the logits."""
    directory, _, ids, _ = models["llama3"]
    grid = Grid(Layout(), 0)
    shape = hf.shape_from_hf(directory)
    assert (shape.rope_scaling_factor, shape.rope_original_context) == (8.0, 1024)
    logits = []
    for s in (shape, dataclasses.replace(shape, rope_scaling_factor=1.0)):
        model = Llama(s, grid)
        hf.load_hf_weights(model, grid, directory)
        with torch.no_grad():
            logits.append(model(ids))
    change = ((logits[0] - logits[1]).abs().max() / logits[0].abs().max()).item()
    print(f"llama3 scaling off changes the logits by {change:.2e} relative")
    assert change > 1000 * TOL


class Recording:
    """A safe_open handle, or one of its slices, that records the size of every region read."""

    def __init__(self, inner, reads, name=None):
        self.inner, self.reads, self.name = inner, reads, name

    def __getattr__(self, attr):  # keys, get_shape: headers only
        return getattr(self.inner, attr)

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)

    def get_tensor(self, name):
        raise AssertionError(f"whole tensor {name} read")

    def get_slice(self, name):
        return Recording(self.inner.get_slice(name), self.reads, name)

    def __getitem__(self, index):
        region = self.inner[index]
        self.reads.append((self.name, region.numel()))
        return region


def load_everywhere(rank, world, models):
    results = [axon_outputs(rank, layout, models[case][0], *models[case][2:]) for case, layout in LAYOUTS]
    reads = []
    hf.safe_open = lambda path, framework: Recording(safe_open(path, framework=framework), reads)
    try:
        grid = Grid(Layout(depth=4), rank)
        hf.load_hf_weights(Llama(hf.shape_from_hf(models["llama3"][0]), grid), grid, models["llama3"][0])
        grid.destroy()
    finally:
        hf.safe_open = safe_open
    return results, reads


@pytest.fixture(scope="module")
def four_ranks(models):
    portable = {case: (str(d), None, ids, targets) for case, (d, _, ids, targets) in models.items()}
    return run_distributed(4, load_everywhere, portable)


def test_four_rank_layouts_match_transformers(models, four_ranks):
    for i, (case, layout) in enumerate(LAYOUTS):
        _, reference, ids, targets = models[case]
        expected = reference_outputs(reference, ids, targets)
        for rank, (results, _) in enumerate(four_ranks):
            logits, losses = results[i]
            assert_matches(logits, losses, expected, f"{case} {layout} rank {rank}")


def test_depth_ranks_read_only_their_rows(models, four_ranks):
    originals = saved_tensors(models["llama3"][0])
    totals = {}
    for _, reads in four_ranks:
        assert {name for name, _ in reads} == set(originals)  # every weight read, each in pieces
        for name, numel in reads:
            full = originals[name]
            totals[name] = totals.get(name, 0) + numel
            if full.dim() == 2:  # norm gains (1-D) are not depth-sharded: every rank reads all of one
                # a quarter of the flattened matrix, plus at most a partial row at each end
                assert numel <= -(-full.numel() // 4) + 2 * full.shape[1] < full.numel(), (name, numel)
    for name, full in originals.items():
        assert full.numel() <= totals[name] <= full.numel() + 4 * 2 * full.shape[-1], name


@pytest.mark.parametrize("key, value, message", [
    ("attention_bias", True, "attention_bias=True is not supported"),
    ("hidden_act", "gelu", "hidden_act='gelu' is not supported"),
    ("head_dim", 8, "head_dim=8 is not supported"),
    ("rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4},
     "rope_parameters.rope_type='yarn' is not supported"),
])
def test_unsupported_configs_are_named(models, tmp_path, key, value, message):
    config = json.loads((models["tied"][0] / "config.json").read_text())
    config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        hf.shape_from_hf(tmp_path)


def test_wrong_tensor_shape_is_named(models, tmp_path):
    directory = models["bf16"][0]
    tensors = saved_tensors(directory)
    tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(71, 96, dtype=torch.bfloat16)
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    grid = Grid(Layout(), 0)
    model = Llama(hf.shape_from_hf(tmp_path), grid)
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor model\.layers\.1\.mlp\.up_proj\.weight "
                                         r"has shape \[71, 96\], but the model expects \[72, 96\]"):
        hf.load_hf_weights(model, grid, tmp_path)


def test_convert_cli_round_trip(models, tmp_path):
    from axon.checkpoint.convert import main

    directory = models["llama3"][0]
    assert main(["--from-hf", str(directory), "--to", str(tmp_path / "ckpt")]) == 0
    assert main(["--from", str(tmp_path / "ckpt"), "--to-hf", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / hf.SINGLE_FILE).is_file()  # 5e9 bytes per file by default: one file
    original, exported = saved_tensors(directory), saved_tensors(tmp_path / "hf")
    assert set(exported) == set(original)
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), name
    assert hf.shape_from_hf(tmp_path / "hf") == hf.shape_from_hf(directory)
    assert main(["--from-hf", str(tmp_path / "nothing"), "--to", str(tmp_path / "ckpt2")]) == 2
    # Converting again into the checkpoint folder replaces it; into a foreign folder only with --force.
    assert main(["--from-hf", str(directory), "--to", str(tmp_path / "ckpt")]) == 0
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    assert main(["--from-hf", str(directory), "--to", str(foreign)]) == 2
    assert (foreign / "thesis.tex").read_text() == "years of work"
    assert main(["--from-hf", str(directory), "--to", str(foreign), "--force"]) == 0
    assert (foreign / "meta.json").is_file()


def test_convert_never_writes_over_the_current_folder(tmp_path, monkeypatch, capsys):
    """`--to .` once made ./.partial and then removed the current folder's contents."""
    from axon.checkpoint.convert import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    for target in (".", "..", "", str(tmp_path)):
        assert main(["--from-hf", "anything", "--to", target, "--force"]) == 2
        assert "is the current folder or one above it" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_training_starts_from_hf_weights_via_the_config(models, tmp_path):
    """model.init_from: hf:DIR through the config contract and the Trainer: the first step's
    loss is transformers' loss on the same sequences."""
    from axon.config import build_config
    from axon.data.batches import shard_micro_batches
    from axon.runtime.trainer import Trainer

    directory, reference, _, _ = models["llama3"]
    config = build_config({"model": {"init_from": f"hf:{directory}", "seq_len": 16},
                           "train": {"steps": 1, "global_batch": 2, "lr": 1e-4}, "out_dir": str(tmp_path)})
    assert config.model.layers == SIZES["num_hidden_layers"] and config.model.rope_scaling_factor == 8.0
    trainer = Trainer(config, Grid(config.layout, 0), torch.device("cpu"))
    ids, targets = shard_micro_batches(trainer.source, config, trainer.grid, 0, "cpu")[0]
    _, per_token, _ = reference_outputs(reference, ids, targets)
    loss = trainer.step(0)["loss"]
    assert abs(loss - per_token.mean().item()) <= TOL * per_token.mean().item()


# ---------------------------------------------------------------------------------------- bad folders
# Built by hand (no transformers): config.json from hf_config and one tensor per parameter.
# Each mistake must stop config loading with one sentence, before any process group exists.

SMALL = ModelShape(layers=1, hidden=8, heads=2, kv_heads=1, ffn=12, vocab=16, seq_len=32)


def test_init_from_needs_seq_len_and_export_keeps_the_models_context(tmp_path):
    """Llama 3.1's config.json says max_position_embeddings 131072: a run that names no
    model.seq_len stops with one sentence instead of training on 131,072-token sequences,
    and a run on 8-token sequences exports the model's own context, not 8."""
    from axon.checkpoint import read_full_model, write_model_checkpoint
    from axon.checkpoint.convert import checkpoint_to_hf

    folder = tmp_path / "hf"
    small_folder(folder)
    config_json = folder / "config.json"
    config_json.write_text(json.dumps({**json.loads(config_json.read_text()), "max_position_embeddings": 131072}))
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"model.init_from=hf:{folder}"])
    assert str(err.value) == (f"model.init_from='hf:{folder}' needs model.seq_len, the length to train on: "
                              f"{folder}/config.json's max_position_embeddings=131072 is the model's context "
                              "(kept as model.max_positions, which an export writes)")
    config = load_config(None, [f"model.init_from=hf:{folder}", "model.seq_len=8"])
    assert (config.model.seq_len, config.model.max_positions) == (8, 131072)
    grid = Grid(Layout(), 0)
    model = Llama(config.model, grid)
    hf.load_hf_weights(model, grid, folder)
    write_model_checkpoint(tmp_path / "ckpt", model, grid, config.model)  # what a training run saves
    assert read_full_model(tmp_path / "ckpt")[0] == config.model
    checkpoint_to_hf(str(tmp_path / "ckpt"), str(tmp_path / "export"))
    exported = json.loads((tmp_path / "export" / "config.json").read_text())
    assert exported["max_position_embeddings"] == 131072
    # A model trained from scratch has no other context than the length it trained on.
    assert hf.hf_config(SMALL)["max_position_embeddings"] == SMALL.seq_len == 32


def small_tensors() -> dict[str, torch.Tensor]:
    # every element distinct across tensors, so a swapped or misread tensor shows
    return {hf.hf_name(name): torch.arange(1000 * i, 1000 * i + math.prod(dims), dtype=torch.float32).view(dims)
            for i, (name, dims) in enumerate(parameter_shapes(SMALL).items())}


def small_folder(directory, tensors=None, weight_map=None, tied=False):
    """A tiny Llama folder: model.safetensors, or with `weight_map` (raw JSON or a mapping) an
    index instead, its tensors written to model-1.safetensors."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({**hf.hf_config(SMALL), "tie_word_embeddings": tied}))
    tensors = small_tensors() if tensors is None else tensors
    if weight_map is None:
        save_file(tensors, str(directory / hf.SINGLE_FILE))
        return directory
    save_file(tensors, str(directory / "model-1.safetensors"))
    text = weight_map if isinstance(weight_map, str) else json.dumps({"weight_map": weight_map})
    (directory / hf.INDEX_FILE).write_text(text)
    return directory


def config_error(directory) -> str:
    with pytest.raises(ConfigError) as err:  # what `axon train` runs on every rank before any collective
        check_init_weights(load_config(None, [f"model.init_from=hf:{directory}", "model.seq_len=32"]))
    assert not dist.is_initialized()  # refused before any process group exists
    return str(err.value)


def test_a_good_small_folder_loads_every_tensor(tmp_path):
    tensors = small_tensors()
    del tensors["lm_head.weight"]  # tied: the LM head is the embedding table
    folder = small_folder(tmp_path / "hf", tensors, weight_map=dict.fromkeys(tensors, "model-1.safetensors"),
                          tied=True)
    config = load_config(None, [f"model.init_from=hf:{folder}", "model.seq_len=32"])
    check_init_weights(config)
    assert config.model == dataclasses.replace(SMALL, max_positions=32)  # config.json's max_position_embeddings
    grid = Grid(Layout(), 0)
    model = Llama(config.model, grid)
    hf.load_hf_weights(model, grid, folder)
    loaded = full_parameters(model, grid)
    assert set(loaded) == set(parameter_shapes(SMALL))
    for name, tensor in loaded.items():
        source = "model.embed_tokens.weight" if name == "output.weight" else hf.hf_name(name)
        assert torch.equal(tensor, tensors[source]), name


def test_a_missing_tensor_is_named(tmp_path):
    tensors = small_tensors()
    del tensors["model.layers.0.mlp.down_proj.weight"]
    message = config_error(small_folder(tmp_path / "hf", tensors))
    assert message == (f"model.init_from='hf:{tmp_path / 'hf'}': {tmp_path / 'hf' / 'model.safetensors'}: no tensor "
                       f"model.layers.0.mlp.down_proj.weight (for axon's layers.0.feed_forward.w2.weight)")


def test_a_tensor_the_index_misplaces_is_named(tmp_path):
    tensors = small_tensors()
    weight_map = dict.fromkeys(tensors, "model-1.safetensors")
    del tensors["model.norm.weight"]
    message = config_error(small_folder(tmp_path / "hf", tensors, weight_map))
    assert f"{tmp_path / 'hf' / 'model-1.safetensors'}: no tensor model.norm.weight (for axon's norm.weight), " \
           f"though the index puts it there" in message


@pytest.mark.parametrize("tied, tensor, shape, expected, axon_name", [
    (False, "model.layers.0.mlp.up_proj.weight", (11, 8), [12, 8], "layers.0.feed_forward.w3.weight"),
    (False, "model.layers.0.self_attn.k_proj.weight", (8, 8), [4, 8], "layers.0.attention.wk.weight"),
    (False, "model.norm.weight", (8, 1), [8], "norm.weight"),
    (True, "model.embed_tokens.weight", (17, 8), [16, 8], "tok_embeddings.weight"),
])
def test_a_wrong_shape_is_named_with_both_shapes(tmp_path, tied, tensor, shape, expected, axon_name):
    tensors = small_tensors()
    tensors[tensor] = torch.zeros(shape)
    message = config_error(small_folder(tmp_path / "hf", tensors, tied=tied))
    assert message.endswith(f"{tmp_path / 'hf' / 'model.safetensors'}: tensor {tensor} has shape {list(shape)}, "
                            f"but the model expects {expected} (axon's {axon_name})")


def test_weight_map_files_stay_inside_the_folder(tmp_path):
    # Each target exists and holds the right tensors, so only the confinement rule refuses it.
    outside = small_folder(tmp_path / "outside")
    (tmp_path / "outside.safetensors").symlink_to(outside / hf.SINGLE_FILE)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "shards").symlink_to(outside, target_is_directory=True)
    for file in ("../outside.safetensors", str(outside / hf.SINGLE_FILE), "shards/model.safetensors",
                 "sub/../../outside.safetensors"):
        weight_map = dict.fromkeys(small_tensors(), "model-1.safetensors")
        weight_map["model.norm.weight"] = file
        message = config_error(small_folder(tmp_path / "hf", weight_map=weight_map))
        assert message.endswith(f"{tmp_path / 'hf' / hf.INDEX_FILE}: weight_map puts model.norm.weight in "
                                f"{file!r}, outside the checkpoint's folder"), file


def test_a_file_symlinked_out_of_the_folder_loads(tmp_path):
    """The Hugging Face hub cache keeps each snapshot file as a symlink into ../../blobs."""
    blobs = small_folder(tmp_path / "blobs")
    snapshot = small_folder(tmp_path / "snapshot", weight_map=dict.fromkeys(small_tensors(), "linked.safetensors"))
    (snapshot / "linked.safetensors").symlink_to(blobs / hf.SINGLE_FILE)
    config = load_config(None, [f"model.init_from=hf:{snapshot}", "model.seq_len=32"])
    check_init_weights(config)
    assert config.model == dataclasses.replace(SMALL, max_positions=32)


@pytest.mark.parametrize("index, words", [
    ("{not json", "is not readable JSON"),
    ('["model-1.safetensors"]', "needs a weight_map mapping each tensor name to a file name"),
    ('{"metadata": {}}', "needs a weight_map mapping each tensor name to a file name"),
    ('{"weight_map": ["model-1.safetensors"]}', "needs a weight_map mapping each tensor name to a file name"),
    ('{"weight_map": {"model.norm.weight": 3}}', "needs a weight_map mapping each tensor name to a file name"),
])
def test_a_malformed_index_is_one_sentence(tmp_path, index, words):
    message = config_error(small_folder(tmp_path / "hf", weight_map=index))
    assert message.startswith(f"model.init_from='hf:{tmp_path / 'hf'}': {tmp_path / 'hf' / hf.INDEX_FILE} {words}")


@pytest.mark.parametrize("cut, reason", [
    (lambda data: data[:2], "header too small"),
    (lambda data: (10**9).to_bytes(8, "little") + data[8:], "header too large"),
    (lambda data: (5).to_bytes(8, "little") + b"{nope", "invalid JSON in header"),
    (lambda data: data[:-4], "incomplete metadata, file not fully covered"),  # a truncated download
])
def test_an_unreadable_file_is_one_sentence(tmp_path, cut, reason):
    folder = small_folder(tmp_path / "hf")
    (folder / hf.SINGLE_FILE).write_bytes(cut((folder / hf.SINGLE_FILE).read_bytes()))
    message = config_error(folder)
    assert message.startswith(f"model.init_from='hf:{folder}': {folder / hf.SINGLE_FILE}: its safetensors "
                              f"header cannot be read (Error while deserializing header: {reason}")


def test_a_file_the_index_names_but_lacks_is_one_sentence(tmp_path):
    weight_map = dict.fromkeys(small_tensors(), "model-1.safetensors")
    weight_map["model.norm.weight"] = "model-2.safetensors"
    message = config_error(small_folder(tmp_path / "hf", weight_map=weight_map))
    assert message.endswith(f"{tmp_path / 'hf' / 'model-2.safetensors'}: its safetensors header cannot be read "
                            f"(No such file or directory: {tmp_path / 'hf' / 'model-2.safetensors'})")
