"""Model shapes: the Llama-style presets shared by axon and the performance model."""

from __future__ import annotations

from dataclasses import dataclass, fields

from axon.spec.sections import integer

SIZES = ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "seq_len")


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    seq_len: int
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5
    # Llama 3.1 RoPE frequency scaling ("rope_type": "llama3" in Hugging Face configs);
    # a factor of 1.0 means no scaling and leaves the other three unused.
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context: int = 8192
    # The model's context (Hugging Face's max_position_embeddings), which an export writes; 0 = seq_len.
    # Only metadata: seq_len is what a run trains on, and RoPE's scaling keys are what change numbers.
    max_positions: int = 0

    def __post_init__(self):
        """What the engine cannot run: each a ValueError naming model.<key> and the numbers."""
        for name in SIZES:
            integer(getattr(self, name), f"model.{name}")
        integer(self.max_positions, "model.max_positions", least=0)
        if self.hidden % self.heads:
            raise ValueError(f"model.hidden={self.hidden} is not divisible by model.heads={self.heads}")
        if self.head_dim % 2:
            raise ValueError(f"model.hidden / model.heads = {self.head_dim} must be even for rotary embeddings")
        if self.heads % self.kv_heads:
            raise ValueError(f"model.heads={self.heads} is not divisible by model.kv_heads={self.kv_heads}")
        for name in ("rope_theta", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"model.{name} must be a positive finite number, got {value!r}")
        if self.rope_scaling_factor <= 0 or (self.rope_scaling_factor != 1.0
                                             and self.rope_high_freq_factor <= self.rope_low_freq_factor):
            raise ValueError(f"model.rope_scaling_factor must be positive and, when not 1, model.rope_high_freq_factor "
                             f"({self.rope_high_freq_factor}) must exceed model.rope_low_freq_factor "
                             f"({self.rope_low_freq_factor}), got {self.rope_scaling_factor}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


# Llama 3.1 shapes for 8B/70B/405B (seq_len is the pre-training context, 8192; their RoPE
# is scaled by 8 for the 128K context, so weights loaded from Hugging Face behave the same);
# the small ones are for tests, local runs and the memorization sweeps.
PRESETS: dict[str, ModelShape] = {
    "tiny": ModelShape(layers=2, hidden=64, heads=4, kv_heads=2, ffn=192, vocab=256, seq_len=64),
    "1M": ModelShape(layers=4, hidden=128, heads=4, kv_heads=2, ffn=384, vocab=512, seq_len=128),
    "10M": ModelShape(layers=6, hidden=320, heads=8, kv_heads=4, ffn=864, vocab=4096, seq_len=256),
    "20M": ModelShape(layers=8, hidden=384, heads=8, kv_heads=4, ffn=1024, vocab=8192, seq_len=256),
    "50M": ModelShape(layers=8, hidden=576, heads=8, kv_heads=4, ffn=1536, vocab=8192, seq_len=512),
    "125M": ModelShape(layers=12, hidden=768, heads=12, kv_heads=4, ffn=2048, vocab=32768, seq_len=1024),
    "350M": ModelShape(layers=24, hidden=1024, heads=16, kv_heads=8, ffn=2816, vocab=32768, seq_len=2048),
    "1B": ModelShape(layers=16, hidden=2048, heads=32, kv_heads=8, ffn=8192, vocab=128256, seq_len=4096),
    "8B": ModelShape(layers=32, hidden=4096, heads=32, kv_heads=8, ffn=14336, vocab=128256, seq_len=8192,
                     rope_scaling_factor=8.0),
    "70B": ModelShape(layers=80, hidden=8192, heads=64, kv_heads=8, ffn=28672, vocab=128256, seq_len=8192,
                      rope_scaling_factor=8.0),
    "405B": ModelShape(layers=126, hidden=16384, heads=128, kv_heads=8, ffn=53248, vocab=128256, seq_len=8192,
                       rope_scaling_factor=8.0),
}


def preset(name: str, key: str = "model") -> ModelShape:
    """The preset called `name`; a ValueError naming `key` (model, --model, ...) if there is none."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"{key} {name!r} is not a preset; known presets are {', '.join(PRESETS)}")
    return PRESETS[name]
