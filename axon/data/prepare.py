"""`python -m axon data prepare`: text files to an axon token file (see axon/data/token_file.py).

    python -m axon data prepare [INPUT ...] --out FILE [--tokenizer tokenizer.json] [--eos TOKEN|none]
    python -m axon data prepare --default-corpus --out runs/data/corpus.tok
    python -m axon data verify FILE

Inputs: .txt files (a whole file is one document), .jsonl files (one JSON object a line with
a string `text`; blank lines are skipped) and directories (their .txt/.jsonl files, recursively,
in sorted order). One document is in memory at a time; documents are encoded in batches.

Tokenizers: the default is byte-level and needs nothing: ids 0..255 are the UTF-8 bytes and
256 ends every document, vocab 257 (256 with --eos none). --tokenizer loads a local Hugging
Face tokenizer.json; each document is `tokenizer.encode(text).ids` (its post-processor's BOS
included) followed by its end-of-sequence token when it has one (a special token named
</s>, <|endoftext|>, <|end_of_text|>, <eos> or <|eos|>, or the one --eos names).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from axon.config import ConfigError
from axon.config.errors import error_line
from axon.data.token_file import TokenFileWriter, open_token_file, verify_tokens

BYTE_EOD = 256
_EOS_NAMES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|eos|>")
_BATCH_DOCS, _BATCH_CHARS = 1024, 1 << 23  # encode this many documents (or characters) at once


class ByteTokenizer:
    """UTF-8 bytes as ids; nothing to load."""

    description = "bytes"

    def __init__(self, eod: bool = True):
        self.eos = BYTE_EOD if eod else None
        self.vocab = 257 if eod else 256

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]


class HFTokenizer:
    """A local tokenizer.json, through the `tokenizers` library (batch encoding runs in parallel in Rust)."""

    def __init__(self, path: str, eos: str = "auto"):
        from tokenizers import Tokenizer

        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"--tokenizer {path!r} is not a file (give a local tokenizer.json)")
        try:
            self.tokenizer = Tokenizer.from_file(str(file))
        except Exception as err:  # tokenizers raises a bare Exception on a malformed file
            raise ConfigError(f"--tokenizer {path!r} could not be loaded: {err}") from None
        # The file's hash names the tokenizer in the token file, so a mismatch can be spotted later.
        self.description = f"sha256:{hashlib.sha256(file.read_bytes()).hexdigest()} {file.name}"
        self.vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos = self._eos_id(path, eos)

    def _eos_id(self, path: str, eos: str) -> int | None:
        if eos == "none":
            return None
        if eos != "auto":
            found = self.tokenizer.token_to_id(eos)
            if found is None:
                raise ConfigError(f"--eos {eos!r} is not a token of {path!r}")
            return found
        special = {t.content: i for i, t in self.tokenizer.get_added_tokens_decoder().items() if t.special}
        return next((special[name] for name in _EOS_NAMES if name in special), None)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self.tokenizer.encode_batch(texts)]


def input_files(inputs: Iterable[str]) -> list[Path]:
    """Inputs with directories expanded to their .txt/.jsonl files (recursive, sorted)."""
    files = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
            if not found:
                raise ConfigError(f"input directory {name!r} holds no .txt or .jsonl files")
            files += found
        elif not path.is_file():
            raise ConfigError(f"input {name!r} does not exist")
        elif path.suffix not in (".txt", ".jsonl"):
            raise ConfigError(f"input {name!r} is neither .txt (one document) nor .jsonl (one per line)")
        else:
            files.append(path)
    return files


def read_documents(files: Iterable[Path]) -> Iterator[str]:
    """Each document's text, in order; a malformed line stops with its file:line."""
    for path in files:
        if path.suffix == ".txt":
            yield _decode(path.read_bytes(), str(path))
            continue
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                where = f"{path}:{number}"
                line = _decode(raw, where)
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ConfigError(f"{where} is not valid JSON ({err.msg} at column {err.colno})") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise ConfigError(f"{where} has no string field 'text' "
                                      "(each JSONL line must be an object like {\"text\": \"...\"})")
                yield record["text"]


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{where} is not UTF-8 (byte {err.start} is {data[err.start]:#04x})") from None


def _batches(documents: Iterator[str]) -> Iterator[list[str]]:
    batch, chars = [], 0
    for text in documents:
        batch.append(text)
        chars += len(text)
        if len(batch) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def prepare(documents: Iterable[str], out: str, tokenizer) -> dict:
    """Tokenize `documents` (each followed by the tokenizer's eos, if any) into token file `out`."""
    eos = None if tokenizer.eos is None else np.array([tokenizer.eos])
    docs = tokens = 0
    with TokenFileWriter(out, tokenizer.vocab, tokenizer.description, tokenizer.eos) as writer:
        for batch in _batches(iter(documents)):
            for ids in tokenizer.encode_batch(batch):
                writer.add_document(ids if eos is None else np.concatenate([ids, eos]))
                docs, tokens = docs + 1, tokens + ids.size + (eos is not None)
        if docs == 0:
            raise ConfigError("no documents to prepare (every input was empty)")
    return {"documents": docs, "tokens": tokens, "vocab": tokenizer.vocab, "bytes": writer.size}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m axon data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="action", required=True)
    prep = commands.add_parser("prepare", help="tokenize text files (or the generated default corpus)")
    prep.add_argument("inputs", nargs="*", help=".txt files, .jsonl files with a 'text' field, directories")
    prep.add_argument("--out", required=True, help="token file to write, e.g. runs/data/corpus.tok")
    prep.add_argument("--tokenizer", help="a local Hugging Face tokenizer.json (default: UTF-8 bytes)")
    prep.add_argument("--eos", default="auto", help="end-of-document token: auto (default), none, or a token")
    prep.add_argument("--default-corpus", action="store_true",
                      help="write the generated default corpus (axon/data/corpus.py) instead of inputs")
    check = commands.add_parser("verify", help="check a token file's size, checksum and ids")
    check.add_argument("file")
    check.add_argument("--json", action="store_true",
                       help="print one JSON object: ok, file, tokens, documents, vocab, eos, tokenizer, crc32 "
                            "(or ok false and the error; exit 2 either way when the file is bad)")
    return parser


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    try:
        if args.action == "verify":
            try:
                view = open_token_file(args.file)
                verify_tokens(view)
            except ConfigError as err:
                if args.json:
                    print(json.dumps({"ok": False, "file": args.file, "error": str(err)}))
                raise
            if args.json:
                print(json.dumps({"ok": True, "file": args.file, "tokens": int(view.tokens.size),
                                  "documents": int(view.doc_offsets.size), "vocab": view.vocab, "eos": view.eos,
                                  "tokenizer": view.tokenizer, "crc32": f"{view.checksum:#010x}"}))
            else:
                print(f"axon: {args.file}: ok: {view.tokens.size:,} tokens, {view.doc_offsets.size:,} documents, "
                      f"vocab {view.vocab}, tokenizer {view.tokenizer}, crc32 {view.checksum:#010x}")
            return
        if args.default_corpus == bool(args.inputs):
            raise ConfigError("give either input files or --default-corpus, not both or neither")
        if args.tokenizer:
            tokenizer = HFTokenizer(args.tokenizer, args.eos)
        else:
            if args.eos not in ("auto", "none"):
                raise ConfigError(f"--eos {args.eos!r} needs --tokenizer; the byte tokenizer's eos is id 256")
            tokenizer = ByteTokenizer(eod=args.eos == "auto")
        if args.default_corpus:
            from axon.data.corpus import default_corpus_documents
            documents = default_corpus_documents()
        else:
            documents = read_documents(input_files(args.inputs))
        done = prepare(documents, args.out, tokenizer)
    except ConfigError as err:
        print(error_line("data", str(err)), file=sys.stderr, flush=True)
        sys.exit(2)
    print(f"axon: prepared {done['documents']:,} documents, {done['tokens']:,} tokens, vocab {done['vocab']} "
          f"({tokenizer.description}): {done['bytes']:,} bytes to {args.out} "
          f"in {time.perf_counter() - started:.2f} s", flush=True)


if __name__ == "__main__":
    main()
