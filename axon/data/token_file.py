"""The axon token file: a fixed header, a flat token array and a document index.

Layout (little-endian; `python -m axon data prepare` writes it, training memory-maps it):

    offset  size  field
         0     8  magic b"AXONTOK1"
         8     4  format version (u32, 1)
        12     4  bytes per token (u32): 2 = uint16 (vocab <= 65536), 4 = uint32
        16     8  number of tokens (u64)
        24     8  vocab size the ids are below (u64)
        32     8  number of documents (u64)
        40     8  offset of the document index (u64; 0 when there are no documents)
        48     8  end-of-document id appended to every document (i64; -1 = none)
        56     4  crc32 of the token bytes (u32)
        60     4  reserved, 0
        64   192  tokenizer description, UTF-8, NUL-padded ("bytes", or a tokenizer.json's sha256)
       256        tokens
     index        one u64 start offset per document, at the token end rounded up to 8 bytes

Document i spans tokens[doc_offsets[i]:doc_offsets[i + 1]] (the last one runs to the end).
numpy only: the checks run before torch is imported, on every rank.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from axon.config import ConfigError

MAGIC = b"AXONTOK1"
VERSION = 1
HEADER = struct.Struct("<8sIIQQQQqII192s")  # 256 bytes, fields as in the table above
DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
_CHUNK = 1 << 22  # tokens per pass when verifying: bounded memory on any file size


def token_dtype(vocab: int) -> np.dtype:
    return DTYPES[2] if vocab <= 1 << 16 else DTYPES[4]


def _index_offset(n_tokens: int, itemsize: int) -> int:
    end = HEADER.size + n_tokens * itemsize
    return (end + 7) // 8 * 8  # aligned, so the index memory-maps as u64


@dataclass(frozen=True)
class TokenFileView:
    """An opened token file: `tokens` is a read-only memory map; nothing is loaded eagerly."""

    path: Path
    tokens: np.ndarray
    vocab: int
    tokenizer: str
    doc_offsets: np.ndarray  # start of each document in `tokens`
    eos: int | None
    checksum: int

    def __len__(self) -> int:
        return int(self.tokens.size)

    def document(self, i: int) -> np.ndarray:
        end = self.doc_offsets[i + 1] if i + 1 < self.doc_offsets.size else self.tokens.size
        return self.tokens[int(self.doc_offsets[i]): int(end)]


def open_token_file(path, verify: bool = False) -> TokenFileView:
    """Open and check a token file; `verify` also reads every token (checksum and largest id)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"token file {str(file)!r} does not exist")
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(HEADER.size)
    if head[:len(MAGIC)] != MAGIC:
        raise ConfigError(f"{str(file)!r} is not an axon token file: it starts with {head[:8]!r}, "
                          f"not {MAGIC!r} (write one with `python -m axon data prepare`)")
    if len(head) < HEADER.size:
        raise ConfigError(f"token file {str(file)!r} is truncated: {size} bytes, shorter than "
                          f"its {HEADER.size}-byte header")
    _, version, width, n_tokens, vocab, n_docs, index_at, eos, crc, _, name = HEADER.unpack(head)
    if version != VERSION:
        raise ConfigError(f"token file {str(file)!r} has format version {version}; "
                          f"this axon reads version {VERSION}")
    if width not in DTYPES:
        raise ConfigError(f"token file {str(file)!r} has {width} bytes per token; expected 2 or 4")
    expected = _index_offset(n_tokens, width) + 8 * n_docs if n_docs else HEADER.size + n_tokens * width
    if n_docs and index_at != _index_offset(n_tokens, width):
        raise ConfigError(f"token file {str(file)!r} puts its index at byte {index_at}, "
                          f"not {_index_offset(n_tokens, width)} after {n_tokens} tokens; it is corrupt")
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise ConfigError(f"token file {str(file)!r} is {state}: {n_tokens} tokens of {width} bytes and "
                          f"{n_docs} documents need {expected} bytes, the file has {size}")
    dtype = DTYPES[width]
    # np.memmap refuses zero-length maps; an empty file is valid, just useless for training
    tokens = (np.memmap(file, dtype=dtype, mode="r", offset=HEADER.size, shape=(n_tokens,))
              if n_tokens else np.empty(0, dtype))
    offsets = (np.memmap(file, dtype="<u8", mode="r", offset=index_at, shape=(n_docs,))
               if n_docs else np.empty(0, "<u8"))
    if n_docs and (offsets[0] != 0 or offsets[-1] > n_tokens or np.any(np.diff(offsets.astype(np.int64)) < 0)):
        raise ConfigError(f"token file {str(file)!r} has a document index that is not increasing "
                          f"from 0 to at most {n_tokens}; it is corrupt")
    view = TokenFileView(file, tokens, vocab, name.rstrip(b"\0").decode("utf-8", "replace"),
                         offsets, None if eos < 0 else eos, crc)
    if verify:
        verify_tokens(view)
    return view


def verify_tokens(view: TokenFileView) -> None:
    """Read every token once: the crc32 must match the header and every id must be below vocab."""
    crc, top, where = 0, -1, 0
    for start in range(0, view.tokens.size, _CHUNK):
        chunk = np.ascontiguousarray(view.tokens[start: start + _CHUNK])
        crc = zlib.crc32(chunk, crc)
        i = int(chunk.argmax())
        if int(chunk[i]) > top:
            top, where = int(chunk[i]), start + i
    if crc != view.checksum:
        raise ConfigError(f"token file {str(view.path)!r} fails its checksum (crc32 {view.checksum:#010x} "
                          f"in the header, {crc:#010x} computed over {view.tokens.size} tokens); it is corrupt")
    if top >= view.vocab:
        raise ConfigError(f"token file {str(view.path)!r} contains token id {top} at position {where}, "
                          f"not below its header's vocab {view.vocab}")


class TokenFileWriter:
    """Streams documents into a token file; the file appears (renamed into place) only when complete.

        with TokenFileWriter("corpus.tok", vocab=257, tokenizer="bytes", eos=256) as out:
            out.add_document(ids)          # eos is appended by the caller's tokenizer, not here
    """

    def __init__(self, path, vocab: int, tokenizer: str, eos: int | None = None):
        self.path = Path(path)
        self.vocab, self.eos, self.dtype = int(vocab), eos, token_dtype(vocab)
        self.tokenizer = tokenizer.encode("utf-8")[:192]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Same directory, so the final rename is atomic: readers never see a half-written file.
        self.temp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.file = open(self.temp, "wb", buffering=1 << 20)
        self.file.write(b"\0" * HEADER.size)  # the real header is written last, when counts are known
        self.n_tokens, self.crc, self.starts = 0, 0, []

    def add_document(self, ids) -> None:
        ids = np.asarray(ids)
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab):
            bad = int(ids.max()) if int(ids.max()) >= self.vocab else int(ids.min())
            raise ConfigError(f"document {len(self.starts)} for {str(self.path)!r} has token id {bad}, "
                              f"outside vocab {self.vocab}")
        data = ids.astype(self.dtype).tobytes()
        self.crc = zlib.crc32(data, self.crc)
        self.file.write(data)
        self.starts.append(self.n_tokens)
        self.n_tokens += ids.size

    def close(self) -> int:
        """Write index and header, fsync, rename into place; returns the file's size in bytes."""
        index_at = _index_offset(self.n_tokens, self.dtype.itemsize) if self.starts else 0
        if self.starts:
            self.file.write(b"\0" * (index_at - self.file.tell()))
            self.file.write(np.asarray(self.starts, dtype="<u8").tobytes())
        size = self.file.tell()
        self.file.seek(0)
        self.file.write(HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, self.n_tokens, self.vocab,
                                    len(self.starts), index_at, -1 if self.eos is None else self.eos,
                                    self.crc, 0, self.tokenizer))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.temp, self.path)
        _fsync_dir(self.path.parent)  # the rename itself survives a crash only once the directory is synced
        return size

    def abort(self) -> None:
        self.file.close()
        self.temp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self.size = self.close()
        else:
            self.abort()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the data itself is already synced
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def has_magic(path) -> bool:
    """Whether a file starts like a token file (so any suffix works, not only .tok)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False
