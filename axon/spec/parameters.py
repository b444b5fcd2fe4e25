"""The Llama's parameters: every tensor's global shape, and the counts derived from it.

One list for everything that counts parameters: the engine's Hugging Face names and
shapes (axon.checkpoint.huggingface), the pipeline split (axon.spec.stage_split), the FLOP convention
(axon.spec.flops) and the start-up banner. Matrices are (out, in), as torch holds them.
"""

from __future__ import annotations

from math import prod

from axon.spec.shapes import ModelShape

# How a linear layer's weight is split (axon.parallel.linear): a "normal" layer splits its
# output over row and its input over col, a "transposed" one the reverse, so a normal layer's
# output is already split the way the transposed layer after it takes its input.
ORIENTATIONS = {"normal": ("row", "col"), "transposed": ("col", "row")}  # (axis of out, axis of in)
LINEAR_ORIENTATIONS = {"attention.wq": "normal", "attention.wk": "normal", "attention.wv": "normal",
                       "attention.wo": "transposed", "feed_forward.w1": "normal", "feed_forward.w3": "normal",
                       "feed_forward.w2": "transposed", "output": "normal"}


def block_shapes(shape: ModelShape) -> dict[str, tuple[int, ...]]:
    """Module name inside `layers.{i}` -> global shape, for one transformer block."""
    h, q, kv, f = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.ffn
    return {"attention.wq": (q, h), "attention.wk": (kv, h), "attention.wv": (kv, h), "attention.wo": (h, q),
            "feed_forward.w1": (f, h), "feed_forward.w3": (f, h), "feed_forward.w2": (h, f),
            "attention_norm": (h,), "ffn_norm": (h,)}


def linear_layers(shape: ModelShape, with_head: bool) -> list[tuple[str, int, int, str]]:
    """(name, in, out, orientation) of one block's linear layers in forward order, then the
    LM head's if asked for."""
    layers = [(module.split(".")[-1], dims[1], dims[0], LINEAR_ORIENTATIONS[module])
              for module, dims in block_shapes(shape).items() if module in LINEAR_ORIENTATIONS]
    return layers + ([("output", shape.hidden, shape.vocab, LINEAR_ORIENTATIONS["output"])] if with_head else [])


def parameter_shapes(shape: ModelShape) -> dict[str, tuple[int, ...]]:
    """axon parameter name -> global shape, for every parameter of the model, in module order."""
    shapes = {"tok_embeddings.weight": (shape.vocab, shape.hidden)}
    block = block_shapes(shape)
    for i in range(shape.layers):
        shapes.update({f"layers.{i}.{module}.weight": dims for module, dims in block.items()})
    shapes.update({"norm.weight": (shape.hidden,), "output.weight": (shape.vocab, shape.hidden)})
    return shapes


def block_parameters(shape: ModelShape) -> int:
    """Parameters of one transformer block: its seven matrices and two norm gains."""
    return sum(prod(dims) for dims in block_shapes(shape).values())


def embedding_parameters(shape: ModelShape) -> int:
    return shape.vocab * shape.hidden


def head_parameters(shape: ModelShape) -> int:
    """The final norm's gain and the LM head (untied from the embedding)."""
    return shape.hidden + shape.vocab * shape.hidden


def whole_model_parameters(shape: ModelShape) -> int:
    """Every parameter of the model: blocks, embedding, final norm and LM head."""
    return shape.layers * block_parameters(shape) + embedding_parameters(shape) + head_parameters(shape)


def matmul_parameters(shape: ModelShape) -> int:
    """Parameters that take part in a matmul: every block (norm gains included: they are
    tiny) and the head. The input embedding is a lookup, not a matmul, so it is left out."""
    return shape.layers * block_parameters(shape) + head_parameters(shape)
