"""Token files: `axon data prepare` writes what the tokenizer says, reading back fails clearly."""

from __future__ import annotations

import hashlib
import json
import re
import struct

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from axon.config import ConfigError, build_config
from axon.data.corpus import DEFAULT_BYTES, DEFAULT_DOCS, DEFAULT_SHA256, default_corpus_documents
from axon.data.batches import TokenFile, token_source
from axon.data.prepare import main
from axon.data.token_file import TokenFileWriter, open_token_file

EOD = 256


def _inputs(root):
    """Four documents: two from a .jsonl (blank line skipped), a .txt, a nested .txt; a .md is ignored."""
    root.mkdir()
    (root / "a.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two ü", "id": 7}) + "\n")
    (root / "b.txt").write_text("héllo\nworld", encoding="utf-8")
    (root / "sub").mkdir()
    (root / "sub" / "c.txt").write_text("x")
    (root / "notes.md").write_text("not an input")
    return ["one", "two ü", "héllo\nworld", "x"]


def test_byte_tokenizer_writes_utf8_bytes_with_separators(tmp_path, capsys):
    texts = _inputs(tmp_path / "in")
    main(["prepare", str(tmp_path / "in"), "--out", str(tmp_path / "out" / "c.tok")])
    assert "prepared 4 documents, 26 tokens, vocab 257" in capsys.readouterr().out
    view = open_token_file(tmp_path / "out" / "c.tok", verify=True)
    # Hand-counted: "one" 3 bytes, "two ü" 6 (ü is 2), "héllo\nworld" 12, "x" 1; each + 1 separator.
    assert view.doc_offsets.tolist() == [0, 4, 11, 24]
    expected = [b for t in texts for b in [*t.encode("utf-8"), EOD]]
    assert view.tokens.tolist() == expected and len(view) == 26
    assert view.tokens.dtype == np.uint16 and not view.tokens.flags.writeable
    assert (view.vocab, view.tokenizer, view.eos) == (257, "bytes", EOD)
    assert view.document(2).tolist() == [*"héllo\nworld".encode(), EOD]
    # 256-byte header + 26 uint16 tokens = 308, index aligned to 312, then 4 x u8 offsets.
    assert (tmp_path / "out" / "c.tok").stat().st_size == 344


def test_hugging_face_tokenizer_ids_match_the_library(tmp_path):
    words = ["[UNK]", "</s>", "the", "river", "flows", "into", "sea", "."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["</s>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    texts = ["the river flows into the sea.", "the Dalen flows", "", "sea sea river"]
    with open(tmp_path / "d.jsonl", "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    main(["prepare", str(tmp_path / "d.jsonl"), "--tokenizer", str(tmp_path / "tokenizer.json"),
          "--out", str(tmp_path / "d.tok")])
    view = open_token_file(tmp_path / "d.tok", verify=True)
    reference = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    eos = reference.token_to_id("</s>")
    for i, text in enumerate(texts):
        assert view.document(i).tolist() == reference.encode(text).ids + [eos]
    assert view.document(1).tolist() == [2, 0, 4, 1]  # "Dalen" is unknown
    assert (view.vocab, view.eos) == (len(words), 1)
    sha = hashlib.sha256((tmp_path / "tokenizer.json").read_bytes()).hexdigest()
    assert view.tokenizer == f"sha256:{sha} tokenizer.json"

    main(["prepare", str(tmp_path / "d.jsonl"), "--tokenizer", str(tmp_path / "tokenizer.json"),
          "--eos", "none", "--out", str(tmp_path / "plain.tok")])
    plain = open_token_file(tmp_path / "plain.tok")
    assert plain.tokens.tolist() == sum((reference.encode(t).ids for t in texts), [])
    assert plain.doc_offsets.tolist() == [0, 7, 10, 10] and plain.eos is None


def _small_file(path, tokens=(5, 6, 7, 8, 9), vocab=257):
    with TokenFileWriter(path, vocab=vocab, tokenizer="bytes") as out:
        out.add_document(np.array(tokens))
    return path


def test_truncated_and_foreign_files_are_named_with_their_sizes(tmp_path):
    path = _small_file(tmp_path / "t.tok")
    size = path.stat().st_size
    assert size == 256 + 5 * 2 + 6 + 8  # header, tokens, padding to 8, one offset
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ConfigError, match=rf"t\.tok.* is truncated: .*need {size} bytes, the file has {size - 5}"):
        open_token_file(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ConfigError, match="truncated: 100 bytes, shorter than its 256-byte header"):
        open_token_file(path)

    np.save(tmp_path / "array.npy", np.arange(10))
    (tmp_path / "array.npy").rename(tmp_path / "array.tok")
    with pytest.raises(ConfigError, match=r"array\.tok.* is not an axon token file: it starts with b'\\x93NUMPY"):
        open_token_file(tmp_path / "array.tok")
    with pytest.raises(ConfigError, match="not an axon token file"):  # training reads through the same check
        TokenFile(str(tmp_path / "array.tok"), vocab=512, seq_len=4, tokens_per_step=4)

    data = bytearray(_small_file(tmp_path / "v.tok").read_bytes())
    data[8:12] = struct.pack("<I", 9)
    (tmp_path / "v.tok").write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="format version 9; this axon reads version 1"):
        open_token_file(tmp_path / "v.tok")


def test_ids_above_the_vocab_and_corrupt_tokens_are_caught(tmp_path):
    with pytest.raises(ConfigError, match="token id 257, outside vocab 257"):
        _small_file(tmp_path / "never.tok", tokens=(1, 257))
    assert not list(tmp_path.iterdir())  # the aborted write left no temporary file behind

    path = _small_file(tmp_path / "big.tok", tokens=list(range(290, 300)) * 4, vocab=300)
    data = bytearray(path.read_bytes())
    data[24:32] = struct.pack("<Q", 257)  # the header now claims a smaller vocab than its ids
    path.write_bytes(bytes(data))
    assert open_token_file(path).vocab == 257  # opening is lazy ...
    with pytest.raises(ConfigError, match=r"token id 299 at position 9, not below its header's vocab 257"):
        open_token_file(path, verify=True)  # ... verify reads every id
    source = TokenFile(str(path), vocab=512, seq_len=4, tokens_per_step=8)
    with pytest.raises(ConfigError, match=r"big\.tok.* contains token id 29\d, not below its header's vocab 257"):
        source.sequences(range(0, 2))  # training checks each window it serves

    path = _small_file(tmp_path / "flip.tok")
    data = bytearray(path.read_bytes())
    data[256] ^= 1  # token 5 becomes 4: still a valid id, only the checksum can tell
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="fails its checksum"):
        open_token_file(path, verify=True)


@pytest.mark.parametrize("lines, where, words", [
    (['{"text": "ok"}', "", '{"title": "no text"}'], 3, "has no string field 'text'"),
    (['{"text": "ok"}', '{"text": 5}'], 2, "has no string field 'text'"),
    (['{"text": "ok"', '{"text": "b"}'], 1, "is not valid JSON"),
])
def test_bad_jsonl_lines_are_named_by_file_and_line(tmp_path, capsys, lines, where, words):
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "x.tok")])
    assert exit_.value.code == 2
    assert f"bad.jsonl:{where} {words}" in capsys.readouterr().err
    assert not (tmp_path / "x.tok").exists()


def test_default_corpus_is_reproducible_and_consistent(tmp_path, capsys):
    docs = list(default_corpus_documents())
    text = "".join(docs).encode("utf-8")
    assert (len(docs), len(text)) == (DEFAULT_DOCS, DEFAULT_BYTES)
    assert hashlib.sha256(text).hexdigest() == DEFAULT_SHA256  # the same bytes on every machine
    assert list(default_corpus_documents(n_docs=40)) == docs[:40]  # document i depends on (seed, i)
    assert list(default_corpus_documents(seed=1, n_docs=3)) != docs[:3]
    corpus = "".join(docs)
    # Learnable, not noise: every river always flows into the same sea, and every sum is right.
    seas = {}
    for river, sea in re.findall(r"The (?:river )?(\w+) flows into the Sea of (\w+)\.", corpus):
        assert seas.setdefault(river, sea) == sea
    sums = re.findall(r"\b(\d+) plus (\d+) is (\d+)\.", corpus)
    assert len(seas) == 40 and len(sums) > 10_000
    assert all(int(a) + int(b) == int(c) for a, b, c in sums)

    main(["prepare", "--default-corpus", "--out", str(tmp_path / "corpus.tok")])
    view = open_token_file(tmp_path / "corpus.tok", verify=True)
    assert len(view) == DEFAULT_BYTES + DEFAULT_DOCS and view.vocab == 257
    assert bytes(view.document(7)[:-1].astype(np.uint8)).decode() == docs[7]


def test_training_serves_windows_from_a_token_file(tmp_path):
    tokens = np.arange(1000) % 251
    with TokenFileWriter(tmp_path / "w.bin", vocab=257, tokenizer="bytes", eos=256) as out:
        out.add_document(tokens[:300])
        out.add_document(tokens[300:])
    # .bin, yet read as a token file: the magic decides, not only the .tok suffix.
    source = TokenFile(str(tmp_path / "w.bin"), vocab=512, seq_len=10, tokens_per_step=40)
    got = source.sequences(range(97, 100))
    # Window g starts at (g x 10) mod (1000 - 11): 970, 980, then 990 wraps to 1.
    assert np.array_equal(got, np.stack([tokens[970:981], tokens[980:991], tokens[1:12]]))
    assert got.dtype == np.int64

    config = build_config({"model": {"preset": "1M", "vocab": 256, "seq_len": 10},
                           "train": {"global_batch": 4}, "data": {"source": str(tmp_path / "w.bin")}})
    with pytest.raises(ConfigError, match=r"was tokenized for vocab 257 \(bytes\), more than model.vocab=256"):
        token_source(config)
    with pytest.raises(ConfigError, match="holds 1000 tokens, fewer than one step needs"):
        TokenFile(str(tmp_path / "w.bin"), vocab=512, seq_len=100, tokens_per_step=1000)
