"""A Hugging Face Llama config.json <-> ModelShape, without torch: the engine loads and exports
weights with it (axon.checkpoint.huggingface), and `model.init_from: hf:DIR` gives a run config
its shape from it wherever the config is read (axon.spec.config_file: `axon train` and
`perfmodel plan --config` alike).
"""

from __future__ import annotations

import json
from pathlib import Path

from axon.spec.shapes import ModelShape


def read_hf_config(hf_dir: str | Path) -> tuple[ModelShape, bool]:
    """(ModelShape, tie_word_embeddings) from a LlamaForCausalLM config.json; ValueError on what axon lacks."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a Hugging Face model directory")
    cfg = json.loads(path.read_text())

    def unsupported(key, value, why):
        return ValueError(f"{path}: {key}={value!r} is not supported; {why}")

    if cfg.get("model_type", "llama") != "llama":
        raise unsupported("model_type", cfg["model_type"], "axon loads Llama (LlamaForCausalLM) models")
    for key, axon_value in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if cfg.get(key, axon_value) != axon_value:
            raise unsupported(key, cfg[key], f"axon's Llama has {key}={axon_value!r}")
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"):
        if not isinstance(cfg.get(key), int):
            raise ValueError(f"{path}: {key} is missing or not an integer ({cfg.get(key)!r})")
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    if hidden % heads:
        raise ValueError(f"{path}: hidden_size={hidden} is not a multiple of num_attention_heads={heads}")
    if cfg.get("head_dim") not in (None, hidden // heads):
        raise unsupported("head_dim", cfg["head_dim"], f"axon's head_dim is hidden_size / num_attention_heads "
                                                      f"= {hidden // heads}")
    theta, scaling = _rope(cfg, path)
    shape = ModelShape(
        layers=cfg["num_hidden_layers"], hidden=hidden, heads=heads,
        kv_heads=cfg.get("num_key_value_heads") or heads, ffn=cfg["intermediate_size"],
        vocab=cfg["vocab_size"], seq_len=cfg.get("max_position_embeddings", 2048),
        max_positions=cfg.get("max_position_embeddings", 2048),
        rope_theta=float(theta), norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), **scaling)
    return shape, bool(cfg.get("tie_word_embeddings", False))


def _rope(cfg: dict, path: Path) -> tuple[float, dict]:
    """rope_theta and the ModelShape scaling fields, from either config format.

    Published Llama 3.1 configs hold `rope_theta` and `rope_scaling`; transformers >= 5
    writes both into one `rope_parameters` mapping.
    """
    key = "rope_scaling" if cfg.get("rope_scaling") else "rope_parameters"
    params = cfg.get(key) or {}
    theta = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"{path}: {key}.partial_rotary_factor={params['partial_rotary_factor']!r} "
                         f"is not supported; axon rotates the whole head")
    if rope_type == "default":
        return theta, {}
    if rope_type != "llama3":
        raise ValueError(f"{path}: {key}.rope_type={rope_type!r} is not supported; axon implements "
                         f"default and llama3 RoPE")
    fields = {"factor": "rope_scaling_factor", "low_freq_factor": "rope_low_freq_factor",
              "high_freq_factor": "rope_high_freq_factor", "original_max_position_embeddings": "rope_original_context"}
    missing = [name for name in fields if name not in params]
    if missing:
        raise ValueError(f"{path}: {key} of rope_type llama3 lacks {', '.join(missing)}")
    scaling = {ours: float(params[theirs]) for theirs, ours in fields.items()}
    scaling["rope_original_context"] = int(params["original_max_position_embeddings"])
    return theta, scaling


def hf_config(shape: ModelShape) -> dict:
    """A LlamaForCausalLM config.json for this shape (the format published Llama 3.1 configs use)."""
    scaling = None
    if shape.rope_scaling_factor != 1.0:
        scaling = {"rope_type": "llama3", "factor": shape.rope_scaling_factor,
                   "low_freq_factor": shape.rope_low_freq_factor, "high_freq_factor": shape.rope_high_freq_factor,
                   "original_max_position_embeddings": shape.rope_original_context}
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": shape.vocab, "hidden_size": shape.hidden, "intermediate_size": shape.ffn,
        "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads, "head_dim": shape.head_dim,
        # the model's context, not the length it was trained on (model.max_positions; 0 = seq_len)
        "max_position_embeddings": shape.max_positions or shape.seq_len, "rms_norm_eps": shape.norm_eps,
        "rope_theta": shape.rope_theta, "rope_scaling": scaling,
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
        "tie_word_embeddings": False, "torch_dtype": "float32", "initializer_range": 0.02, "use_cache": True,
    }
