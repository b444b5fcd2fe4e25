"""A Hugging Face Llama 3.1 folder in miniature, made here without a download: what
`config.json`, `model.safetensors` and `tokenizer.json` hold for the real model, at 2 layers x
64 with 320 ids, for tests that walk a whole recipe on CPU (tests/end_to_end/test_first_run.py).

The weights are transformers' own random initialization (saved in bf16, as Meta's are); the
tokenizer is a byte-level BPE trained on a few KB of the generated corpus, whose end-of-document
token has Llama 3's name, so `axon data prepare --tokenizer` finds it as it finds the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

EOS = "<|end_of_text|>"  # Llama 3's end-of-document token
# Llama 3.1's RoPE: theta 500,000 and the llama3 frequency scaling, as its config.json gives it
LLAMA31_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=320, max_position_embeddings=131072, rms_norm_eps=1e-5,
                  tie_word_embeddings=False)
TOKENIZER_VOCAB = 300  # ids the BPE uses: fewer than the model's 320, as Llama 3.1's 128,256 leave room


def write_documents(path: Path, count: int, seed: int = 0) -> Path:
    """`count` documents of the generated corpus as a .jsonl file (one {"text": ...} a line)."""
    from axon.data.corpus import default_corpus_documents

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in default_corpus_documents(seed, count)))
    return path


def train_tokenizer(texts: list[str], vocab: int = TOKENIZER_VOCAB):
    """A byte-level BPE of `vocab` ids (the 256 bytes, EOS, merges), like Llama 3's in kind."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def save_tiny_llama(folder: Path, texts: list[str], seed: int = 0) -> Path:
    """FOLDER as a Hugging Face Llama 3.1 folder: config.json and model.safetensors from
    transformers (random weights from `seed`), tokenizer.json trained on `texts`, and the
    tokenizer_config.json that lets AutoTokenizer read it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA, rope_parameters=dict(LLAMA31_ROPE),
                                         bos_token_id=None, eos_token_id=None))
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    train_tokenizer(texts).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "model_max_length": 131072}, indent=2))
    return folder
