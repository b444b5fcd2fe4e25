"""Hugging Face Llama checkpoints in and out: config.json <-> ModelShape, safetensors <-> axon.

Loading reads each rank's part straight from the safetensors files (`safe_open` +
`get_slice`), so a rank holds its shard plus at most a partial row at each end, never a
whole weight. Hugging Face keeps q/k projections in the rotate-half RoPE layout axon
uses, so names map one to one and no weight is permuted.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from axon.parallel.sharding import named_shardings, shard_from_global
from axon.spec.hf_config import hf_config, read_hf_config
from axon.spec.shapes import ModelShape
from axon.spec.parameters import parameter_shapes

# axon module inside layers.{i} -> Hugging Face module inside model.layers.{i}
LAYER_NAMES = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w3": "mlp.up_proj",
    "feed_forward.w2": "mlp.down_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
TOP_NAMES = {"tok_embeddings": "model.embed_tokens", "norm": "model.norm", "output": "lm_head"}
EMBEDDING = "model.embed_tokens.weight"
SINGLE_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"


def hf_name(name: str) -> str:
    """axon parameter name -> Hugging Face tensor name."""
    module = name.removesuffix(".weight")
    if module.startswith("layers."):
        _, index, inner = module.split(".", 2)
        return f"model.layers.{index}.{LAYER_NAMES[inner]}.weight"
    return f"{TOP_NAMES[module]}.weight"


# ---------------------------------------------------------------------------------------- config
# config.json <-> ModelShape (read_hf_config, hf_config) is torch-free, in axon.spec.hf_config:
# a run config's model.init_from is read there by axon train and perfmodel plan --config alike.


def shape_from_hf(hf_dir: str | Path) -> ModelShape:
    return read_hf_config(hf_dir)[0]


# ---------------------------------------------------------------------------------------- weights in


def weight_files(hf_dir: str | Path) -> dict[str, Path]:
    """Hugging Face tensor name -> the safetensors file holding it."""
    root = Path(hf_dir)
    if (root / INDEX_FILE).is_file():
        return _index_files(root / INDEX_FILE)
    if (root / SINGLE_FILE).is_file():
        return dict.fromkeys(read_header(root / SINGLE_FILE), root / SINGLE_FILE)
    raise FileNotFoundError(f"{root} holds neither {SINGLE_FILE} nor {INDEX_FILE}")


def _index_files(index: Path) -> dict[str, Path]:
    """An index's weight_map, every file confined to the index's folder: a downloaded index
    must not make the loader read files elsewhere on the machine."""
    try:
        data = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{index} is not readable JSON ({err})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(file, str) for file in weight_map.values()):
        raise ValueError(f"{index} needs a weight_map mapping each tensor name to a file name")
    root, files = index.parent.resolve(), {}
    for tensor, file in weight_map.items():
        path = index.parent / file
        # The folder, not the file, is resolved: the hub cache keeps each file as a symlink into ../../blobs.
        if Path(file).is_absolute() or ".." in Path(file).parts or not path.parent.resolve().is_relative_to(root):
            raise ValueError(f"{index}: weight_map puts {tensor} in {file!r}, outside the checkpoint's folder")
        files[tensor] = path
    return files


def read_header(file: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from a safetensors file's header. safe_open is the loader's own
    reader, and it checks that the tensors cover the file, so a truncated download fails here."""
    try:
        with safe_open(str(file), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{file}: its safetensors header cannot be read ({err})") from None


def check_hf_weights(hf_dir: str | Path, shape: ModelShape, tied: bool) -> dict[str, tuple[Path, str]]:
    """axon parameter name -> (file, Hugging Face tensor) for every parameter of `shape`, each
    checked against its file's header; ValueError naming the file, the tensor and both shapes.

    Headers only, no weight: config loading runs it on every rank before any collective.
    """
    files, headers, sources = weight_files(hf_dir), {}, {}
    for name, expected in parameter_shapes(shape).items():
        source = hf_name(name)
        if name == "output.weight" and (tied or source not in files):
            source = EMBEDDING  # tied LM head: the output projection is the embedding table
        if source not in files:
            listing = INDEX_FILE if (Path(hf_dir) / INDEX_FILE).is_file() else SINGLE_FILE
            raise ValueError(f"{Path(hf_dir) / listing}: no tensor {source} (for axon's {name})")
        file = files[source]
        if file not in headers:
            headers[file] = read_header(file)
        found = headers[file].get(source)
        if found is None:
            raise ValueError(f"{file}: no tensor {source} (for axon's {name}), though the index puts it there")
        if found != expected:
            raise ValueError(f"{file}: tensor {source} has shape {list(found)}, but the model "
                             f"expects {list(expected)} (axon's {name})")
        sources[name] = (file, source)
    return sources


@torch.no_grad()
def load_hf_weights(model, grid, hf_dir: str | Path) -> None:
    """Fill this rank's shard of every parameter of `model` (built on `grid`) from Hugging Face files.

    No collectives: every rank reads its own slices, after check_hf_weights has checked every
    tensor's name and shape (file headers only), so a bad directory fails on all ranks alike
    with the same message.
    """
    _, tied = read_hf_config(hf_dir)
    sources = check_hf_weights(hf_dir, model.shape, tied)
    with ExitStack() as stack:
        handles = {}
        for name, param, sharding in named_shardings(model):
            file, tensor = sources[name]
            if file not in handles:
                handles[file] = stack.enter_context(safe_open(str(file), framework="pt"))
            piece = handles[file].get_slice(tensor)

            def read_region(rows, cols, piece=piece):
                # a 1-D gain is one row to shard_from_global; only its columns are read
                region = piece[cols] if len(piece.get_shape()) == 1 else piece[rows, cols]
                return region.to(torch.float32)

            param.copy_(shard_from_global(sharding, grid, read_region, param.numel()).to(param.device))


# ---------------------------------------------------------------------------------------- weights out


def export_hf(full_tensors: dict[str, torch.Tensor], shape: ModelShape, out_dir: str | Path,
              max_shard_bytes: float = 5e9) -> None:
    """Write config.json and float32 safetensors (sharded with an index above max_shard_bytes).

    `full_tensors` holds every parameter under its axon name at its global shape, as
    `axon.parallel.full_tensor.full_parameters` or `axon.checkpoint.read_full_model` return it.
    """
    out = Path(out_dir)
    expected = parameter_shapes(shape)
    if set(full_tensors) != set(expected):
        absent, extra = sorted(set(expected) - set(full_tensors)), sorted(set(full_tensors) - set(expected))
        raise ValueError(f"export_hf: tensors do not match the model shape (missing {absent}, unexpected {extra})")
    for name, dims in expected.items():
        if tuple(full_tensors[name].shape) != dims:
            raise ValueError(f"export_hf: {name} has shape {list(full_tensors[name].shape)}, expected {list(dims)}")
    if out.is_dir() and any(out.glob("model*.safetensors*")):
        raise ValueError(f"{out} already holds model weights; export into an empty directory")
    out.mkdir(parents=True, exist_ok=True)

    shards, size = [{}], 0  # greedy: start a new file when the next tensor would overflow this one
    for name in expected:
        tensor = full_tensors[name].detach().to("cpu", torch.float32).contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][hf_name(name)] = tensor
        size += nbytes
    (out / "config.json").write_text(json.dumps(hf_config(shape), indent=2) + "\n")
    if len(shards) == 1:
        save_file(shards[0], str(out / SINGLE_FILE), metadata={"format": "pt"})
        return
    weight_map, total = {}, 0
    for i, tensors in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        for hf_tensor, tensor in tensors.items():
            weight_map[hf_tensor] = file
            total += tensor.numel() * tensor.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
