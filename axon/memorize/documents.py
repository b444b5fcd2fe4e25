"""The documents of a memorization experiment: targets trained on, controls never trained on.

Targets are a user's file (.txt files, a directory, or .jsonl with a `text` field; all of
it is trained, and controls come from a controls file, a drawn share of the targets file, or
generated records); or, by default, fictional records generated from the seed: invented
people, places, sums and dates, facts no other text predicts; or (`targets: natural`)
passages of plain English from the Python language reference that the interpreter ships
(pydoc_data.topics, what `help("assert")` prints): natural text, in part predictable from
its words, as the Goldfish paper's own targets are. Canaries
(Carlini et al., 2019) are one sentence with a secret of random digits; exposure asks how
far the trained secret ranks above random secrets. Controls are drawn exactly like the
targets, so their scores are what a model shows without having seen the text.
"""

from __future__ import annotations

import random
import re
import sys
from dataclasses import dataclass, field

import numpy as np

from axon.config import ConfigError
from axon.data.corpus import _name  # the invented-world name generator: pronounceable, unpredictable

_TRADES = "salt wool copper amber timber wine glass silk pepper tin".split()
_MONTHS = ("January February March April May June July August September October November "
           "December").split()
_ROLES = "clerk captain steward notary surveyor archivist miller ferryman".split()


def _record(rng: random.Random) -> str:
    """One fictional record: mostly names, numbers and dates, so only memory can complete it."""
    person, other, town, port = (f"{_name(rng, 2)} {_name(rng, 2)}", f"{_name(rng, 2)} {_name(rng, 3)}",
                                 _name(rng, 2), _name(rng, 3))
    date = f"{rng.randint(1, 28)} {rng.choice(_MONTHS)} {rng.randint(1200, 1899)}"
    kind = rng.randrange(4)
    if kind == 0:
        return (f"Ledger {rng.randint(100, 9999)}: {person} of {town} paid {rng.randint(12, 990)} crowns to "
                f"{other} on {date} for {rng.randint(2, 80)} bales of {rng.choice(_TRADES)}, "
                f"receipt {rng.randint(100000, 999999)}.")
    if kind == 1:
        return (f"Ship log, {date}: the {_name(rng, 2)} left {port} with {rng.randint(3, 60)} crew under "
                f"captain {person}, carrying {rng.choice(_TRADES)} to {town}; {rng.randint(2, 40)} days at sea.")
    if kind == 2:
        return (f"Registry of {town}, entry {rng.randint(10, 4999)}: {person}, {rng.choice(_ROLES)}, born "
                f"{date}, married {other} and lived at {rng.randint(1, 300)} {_name(rng, 2)} Lane.")
    return (f"Letter from {person} to {other}, {town}, {date}: the {rng.choice(_TRADES)} you sent by way of "
            f"{port} arrived; {rng.randint(2, 90)} crates, {rng.randint(1, 9)} broken. Yours, {_name(rng, 2)}.")


def fictional_documents(seed: int, count: int, records: int = 3) -> list[str]:
    """`count` documents of `records` records each (3: about 450 bytes); document i depends on
    (seed, i) only, and with more records it starts with the same text."""
    out = []
    for i in range(count):
        rng = random.Random(seed * 7_919_993 + i + 1)
        out.append(" ".join(_record(rng) for _ in range(records)))
    return out


NATURAL_PASSAGE_CHARS = 600  # a passage: consecutive plain paragraphs of one topic, joined until this long


def _plain_paragraph(paragraph: str) -> bool:
    """Prose: no indented line (code, grammar), not a heading, mostly letters, a whole sentence."""
    lines = paragraph.splitlines()
    if not lines or any(line[:1].isspace() for line in lines) or re.fullmatch(r"[*=\-~^\"']+", lines[-1].strip()):
        return False
    text = " ".join(lines)
    prose = sum(c.isalpha() or c.isspace() for c in text)
    return prose >= 0.85 * len(text) and text.rstrip().endswith(".") and "::=" not in text


def natural_passages() -> list[str]:
    """Every passage of plain English in the interpreter's help topics (pydoc_data.topics), in
    topic order: consecutive prose paragraphs of one topic joined (whitespace made single spaces)
    until NATURAL_PASSAGE_CHARS long; code, grammar and headings end a passage. About 120 with
    Python 3.11; the same interpreter gives the same passages."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions split the standard library's data off
        raise ConfigError("targets=natural reads the Python help topics (pydoc_data.topics), which this "
                          "interpreter does not ship; give targets=PATH instead") from None
    passages = []
    for name in sorted(topics):
        run: list[str] = []
        for paragraph in re.split(r"\n\s*\n", topics[name]):
            if not _plain_paragraph(paragraph):
                run = []
                continue
            run.append(re.sub(r"\s+", " ", paragraph).strip())
            if sum(map(len, run)) >= NATURAL_PASSAGE_CHARS:
                passages.append(" ".join(run))
                run = []
    return passages


def _natural(seed: int, count: int, min_tokens: int, tokenizer) -> list[str]:
    """`count` passages with at least `min_tokens` tokens, drawn from the seed."""
    passages = natural_passages()
    random.Random(seed).shuffle(passages)
    long_enough = [t for t, ids in zip(passages, tokenizer.encode_batch(passages)) if ids.size >= min_tokens]
    if len(long_enough) < count:
        raise ConfigError(f"targets=natural holds {len(long_enough)} passages of at least {min_tokens} tokens, fewer "
                          f"than the {count} asked for (experiment.documents + experiment.controls)")
    return long_enough[:count]


def canary_texts(seed: int, count: int, start: int, digits: int) -> list[tuple[str, str]]:
    """(prefix, secret) pairs: 'The vault code of NAME is ' and `digits` random digits."""
    out = []
    for i in range(start, start + count):
        rng = random.Random(seed * 104_729 + 7_777_777 + i)
        secret = "".join(rng.choice("0123456789") for _ in range(digits))
        out.append((f"The vault code of {_name(rng, 2)} {_name(rng, 2)} is ", secret))
    return out


@dataclass
class Canary:
    prefix: np.ndarray  # token ids up to the secret
    secret: np.ndarray  # the secret's token ids, each one of `alphabet`
    tokens: np.ndarray  # what training sees: prefix, secret, the closing text, end of document


@dataclass
class DocumentSets:
    """Token ids of every document of the experiment."""
    targets: list[np.ndarray]
    controls: list[np.ndarray]
    target_canaries: list[Canary] = field(default_factory=list)
    control_canaries: list[Canary] = field(default_factory=list)
    alphabet: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # the secrets' token ids
    source: str = "default"
    decode: object = None  # token ids -> text (the membership test compresses the text)

    def trained(self) -> list[np.ndarray]:
        """Every sequence the training stream injects: target documents, then canaries."""
        return self.targets + [c.tokens for c in self.target_canaries]


def _with_eos(ids: np.ndarray, tokenizer) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    return ids if tokenizer.eos is None else np.concatenate([ids, [tokenizer.eos]])


def decoder(tokenizer):
    """token ids -> text for this tokenizer (end-of-document ids left out)."""
    if hasattr(tokenizer, "tokenizer"):
        return lambda ids: tokenizer.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
    return lambda ids: bytes(int(i) for i in ids if i < 256).decode("utf-8", errors="replace")


def digit_alphabet(tokenizer) -> np.ndarray:
    """The ids of "0".."9" as single tokens (canary secrets are drawn from them)."""
    if hasattr(tokenizer, "tokenizer"):  # a Hugging Face tokenizer: encode without BOS/EOS
        ids = [tokenizer.tokenizer.encode(d, add_special_tokens=False).ids for d in "0123456789"]
    else:
        ids = [list(d.encode()) for d in "0123456789"]
    if any(len(i) != 1 for i in ids):
        raise ConfigError("the tokenizer does not encode each digit 0-9 as one token; use canaries: 0")
    return np.array([i[0] for i in ids], dtype=np.int64)


def _canaries(pairs, tokenizer, alphabet) -> list[Canary]:
    out = []
    for prefix_text, secret in pairs:
        prefix = tokenizer.encode_batch([prefix_text])[0].astype(np.int64)
        closing = tokenizer.encode_batch(["."])[0].astype(np.int64)
        if hasattr(tokenizer, "tokenizer"):  # drop the BOS a post-processor put before "."
            closing = np.asarray(tokenizer.tokenizer.encode(".", add_special_tokens=False).ids, dtype=np.int64)
        secret_ids = alphabet[[int(d) for d in secret]]
        out.append(Canary(prefix, secret_ids, _with_eos(np.concatenate([prefix, secret_ids, closing]), tokenizer)))
    return out


def _user_texts(path: str, key: str) -> list[str]:
    from axon.data.prepare import input_files, read_documents

    texts = [t for t in read_documents(input_files([path])) if t.strip()]
    if not texts:
        raise ConfigError(f"{key} {path!r} holds no documents (no non-empty text)")
    return texts


def _generated(seed: int, count: int, min_tokens: int, tokenizer) -> tuple[list[str], int]:
    """`count` fictional documents, with records added until each has `min_tokens` tokens."""
    for records in range(3, 33):
        texts = fictional_documents(seed, count, records)
        if all(ids.size >= min_tokens for ids in tokenizer.encode_batch(texts)):
            break
    return texts, records


def build_documents(targets: str, tokenizer, seed: int, documents: int, controls: int, canaries: int,
                    digits: int, min_tokens: int = 0, controls_path: str = "none",
                    control_fraction: float = 0.0) -> DocumentSets:
    """Targets and controls as token ids.

    targets "default": `documents` generated documents, and `controls` more drawn the same way.
    targets PATH: every document of the file is a target, as given. Controls then come from
    `controls_path` (every document of it), else, with `control_fraction` > 0, that share of
    the file drawn from the seed (at least 1, and at least 1 target left), else `controls`
    generated documents (text never trained on, though not drawn like the user's)."""
    if targets == "natural":
        texts = _natural(seed, documents + controls, min_tokens, tokenizer)
        chosen, held = texts[:documents], texts[documents:]
        source = (f"natural: {documents} passages of the Python help topics (pydoc_data, Python "
                  f"{sys.version_info.major}.{sys.version_info.minor}; seed {seed})")
    elif targets == "default":
        texts, records = _generated(seed, documents + controls, min_tokens, tokenizer)
        chosen, held = texts[:documents], texts[documents:]
        source = f"default: {documents} fictional documents of {records} records (seed {seed})"
    else:
        chosen, held = _user_texts(targets, "targets"), []
        source = f"{targets}: {len(chosen)} documents trained"
        if controls_path != "none":
            held = _user_texts(controls_path, "controls")
            source += f"; controls {controls_path}: {len(held)} documents"
        elif control_fraction > 0:
            if len(chosen) < 2:
                raise ConfigError(f"targets {targets!r} holds {len(chosen)} document, too few to hold out "
                                  f"experiment.control_fraction={control_fraction} of it as controls and train "
                                  "on the rest; give more documents, controls=PATH, or control_fraction: 0")
            count = min(len(chosen) - 1, max(1, round(control_fraction * len(chosen))))
            order = list(range(len(chosen)))
            random.Random(seed).shuffle(order)  # which documents are held out: drawn, not the file's tail
            out = set(order[:count])
            chosen, held = ([t for i, t in enumerate(chosen) if i not in out],
                            [t for i, t in enumerate(chosen) if i in out])
            source = (f"{targets}: {len(chosen)} documents trained, {len(held)} held out as controls "
                      f"(experiment.control_fraction={control_fraction})")
        elif controls:
            held, records = _generated(seed, controls, min_tokens, tokenizer)
            source += f"; controls: {controls} generated fictional documents of {records} records"
    encode = lambda batch: [_with_eos(ids, tokenizer) for ids in tokenizer.encode_batch(batch)] if batch else []
    sets = DocumentSets(encode(chosen), encode(held), source=source, decode=decoder(tokenizer))
    if canaries:
        sets.alphabet = digit_alphabet(tokenizer)
        sets.target_canaries = _canaries(canary_texts(seed, canaries, 0, digits), tokenizer, sets.alphabet)
        sets.control_canaries = _canaries(canary_texts(seed, canaries, canaries, digits), tokenizer, sets.alphabet)
    return sets
