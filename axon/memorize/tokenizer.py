"""The experiment's tokenizer: `bytes`, `bpe:V`, or a local tokenizer.json.

`bpe:V` trains a byte-level BPE tokenizer of V ids with the `tokenizers` library's trainer on
the generated default corpus (axon/data/corpus.py, the experiment's seed) and as many generated
fictional records from another seed (never a target or a control: the genre's words, "Ledger",
"January", "bales", not the documents'): nothing is downloaded.
Digits are split one per token, as Llama 3's pre-tokenizer groups them at most three at a
time, so a canary's secret is one token per digit and sums are spelled digit by digit. The
file is cached in out_dir beside the results (tokenizer-bpeV-seedS.json), so a rerun or
memorize-eval reads the same ids, and the results name the tokenizer they were measured with.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from axon.config import ConfigError

BPE_TRAINING_DOCS = 3000  # of each kind: half the default corpus (2.6 MB) and 1.3 MB of records, in ~2 s
RECORDS_SEED_OFFSET = 1_000_000  # the records' seed: far from any experiment's own documents
EOS = "<|endoftext|>"


def parse_bpe(name: str) -> int | None:
    """The vocabulary of a `bpe:V` tokenizer name, or None for any other name."""
    if not name.startswith("bpe:"):
        return None
    try:
        vocab = int(name[4:])
    except ValueError:
        vocab = 0
    if vocab < 300:
        raise ConfigError(f"tokenizer={name!r}: bpe:V needs a whole vocabulary V >= 300 (256 bytes, the end of "
                          "document and merges), e.g. bpe:1024")
    return vocab


def bpe_path(out_dir: str, vocab: int, seed: int) -> Path:
    return Path(out_dir) / f"tokenizer-bpe{vocab}-seed{seed}.json"


def train_bpe(path: Path, vocab: int, seed: int, documents: int = BPE_TRAINING_DOCS) -> Path:
    """Train (or reuse the cached) BPE tokenizer on `documents` of the default corpus and as many records."""
    if path.is_file():
        return path
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from axon.data.corpus import default_corpus_documents
    from axon.memorize.documents import fictional_documents

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = itertools.chain(default_corpus_documents(seed, documents),
                            fictional_documents(seed + RECORDS_SEED_OFFSET, documents))
    tokenizer.train_from_iterator(texts, trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # ranks may train at once: last rename wins
    tokenizer.save(str(partial))
    os.replace(partial, path)
    return path


def load_tokenizer(name: str, out_dir: str = "runs/memorize", seed: int = 0):
    from axon.data.prepare import ByteTokenizer, HFTokenizer

    if name == "bytes":
        return ByteTokenizer()
    vocab = parse_bpe(name)
    if vocab is not None:
        return HFTokenizer(str(train_bpe(bpe_path(out_dir, vocab, seed), vocab, seed)))
    return HFTokenizer(name)
