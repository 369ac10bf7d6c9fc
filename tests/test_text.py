"""Character-level text: ids, corpora, their checks, random and evaluation windows, bits/char."""

from __future__ import annotations

import functools
import math
import pathlib
import sysconfig
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_gd.seq import text


@pytest.fixture(scope="module")
def small_stdlib() -> text.Corpus:
    return text.stdlib_corpus(max_chars=200_000)


def write(tmp_path, content: str | bytes, name: str = "t.txt") -> str:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_bytes(content.encode("utf-8"))
    else:
        path.write_bytes(content)
    return str(path)


# --------------------------------------------------------------------------- encode / decode


def test_encode_decode_round_trip_and_unknown_characters_map_to_zero():
    chars = text.UNKNOWN + "\n abcé€"
    ids = text.encode("abc é€\nab", chars)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [3, 4, 5, 2, 6, 7, 1, 3, 4])
    assert text.decode(ids, chars) == "abc é€\nab"
    # Characters outside the vocabulary (and the emoji beyond the BMP) become id 0.
    ids = text.encode("aXb😀Z", chars)
    np.testing.assert_array_equal(ids, [3, 0, 4, 0, 0])
    assert text.decode(ids, chars) == "a\ufffdb\ufffd\ufffd"
    assert text.encode("", chars).shape == (0,)
    assert text.decode(np.zeros(0, np.int32), chars) == ""
    # An unsorted vocabulary works too; a 2-D id array decodes row after row.
    assert text.decode(text.encode("cab", "\ufffdcba").reshape(1, 3), "\ufffdcba") == "cab"


def test_decode_rejects_ids_outside_the_vocabulary_and_repeated_characters():
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\).*got \[0, 3\]"):
        text.decode([0, 3], "\ufffdab")
    with pytest.raises(ValueError, match="must not repeat"):
        text.encode("a", "\ufffdaa")


# --------------------------------------------------------------------------- text_corpus


def test_text_corpus_splits_by_position_with_exact_sizes(tmp_path):
    content = "hello world\n" * 10 + "xyz!" * 5  # 140 characters
    path = write(tmp_path, content)
    corpus = text.text_corpus(path, held_out_fraction=0.1)  # 14 held out
    assert (len(corpus.train), len(corpus.held_out)) == (126, 14)
    assert corpus.train.dtype == corpus.held_out.dtype == np.int32
    train_text, held_text = content[:126], content[126:]
    assert corpus.chars == "\ufffd" + "".join(sorted(set(train_text)))
    assert corpus.chars == "\ufffd\n !dehlorwxyz"
    assert corpus.vocab == len(corpus.chars) == 14
    assert text.decode(corpus.train, corpus.chars) == train_text
    assert text.decode(corpus.held_out, corpus.chars) == held_text
    assert "last 14 characters" in corpus.source and path in corpus.source
    with pytest.raises(ValueError):  # read-only ids
        corpus.train[0] = 1

    # Rounded half up: 0.05 · 30 = 1.5 → 2; held-out characters unseen in training become id 0.
    corpus = text.text_corpus(write(tmp_path, "a" * 28 + "bc", "u.txt"))
    assert (len(corpus.train), len(corpus.held_out)) == (28, 2)
    assert corpus.chars == "\ufffda"
    np.testing.assert_array_equal(corpus.held_out, [0, 0])


def test_text_corpus_rejects_bad_files_with_messages_naming_the_path(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match=r"text file '.*nope\.txt' does not exist"):
        text.text_corpus(missing)
    with pytest.raises(ValueError, match=r"text file '.*' is a directory, not a file"):
        text.text_corpus(str(tmp_path))
    with pytest.raises(ValueError, match=r"text file '.*empty\.txt' is empty"):
        text.text_corpus(write(tmp_path, b"", "empty.txt"))
    bad = write(tmp_path, b"\xff\xfe\x00abc", "bad.txt")
    with pytest.raises(ValueError, match=r"'.*bad\.txt' is not UTF-8 text \(byte 0xff at offset 0"):
        text.text_corpus(bad)
    late = write(tmp_path, "ok é ".encode() + b"\xc3(", "late.txt")
    with pytest.raises(ValueError, match=r"not UTF-8 text \(byte 0xc3 at offset 6"):
        text.text_corpus(late)
    good = write(tmp_path, "abcdef")
    for fraction in (0, 1, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="held_out_fraction"):
            text.text_corpus(good, held_out_fraction=fraction)
    with pytest.raises(ValueError, match="held_out_fraction"):  # before the missing file
        text.text_corpus(missing, held_out_fraction=2)
    with pytest.raises(TypeError, match="must be a path"):
        text.text_corpus(3)


def test_check_context_names_the_part_and_the_numbers(tmp_path):
    corpus = text.text_corpus(write(tmp_path, "abcdefghij" * 10), held_out_fraction=0.1)
    text.check_context(corpus, 9)  # held-out part: 10 characters = 9 + 1
    with pytest.raises(ValueError) as info:
        text.check_context(corpus, 10)
    assert str(info.value) == (
        "the held-out part has 10 characters; the context needs at least context + 1 = 11; "
        "use a larger file or a smaller --seq-len"
    )
    with pytest.raises(ValueError, match="the training part has 90 characters.* = 100;"):
        text.check_context(corpus, 99)
    with pytest.raises(ValueError, match="context must be a positive integer"):
        text.check_context(corpus, 0)


# --------------------------------------------------------------------------- windows


def test_windows_are_consecutive_slices_and_jittable():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 5, size=50).astype(np.int32)  # repeated values: match whole rows
    length, batch = 7, 64
    out = text.windows(jax.random.key(0), jnp.asarray(data), batch=batch, length=length)
    assert out.shape == (batch, length + 1) and out.dtype == jnp.int32
    slices = np.lib.stride_tricks.sliding_window_view(data, length + 1)  # every valid crop
    for row in np.asarray(out):
        assert (slices == row).all(axis=1).any()

    # Distinct ids: the start is row[0]; every row is data[s : s + length + 1], s in range.
    data = jnp.arange(20, dtype=jnp.int64 if jax.config.jax_enable_x64 else jnp.int32)
    draw = jax.jit(functools.partial(text.windows, batch=500, length=4))
    out = np.asarray(draw(jax.random.key(1), data))
    assert out.dtype == np.int32
    starts = out[:, 0]
    np.testing.assert_array_equal(out, starts[:, None] + np.arange(5))
    assert set(starts.tolist()) == set(range(16))  # every start in [0, 20 - 4) is drawn
    assert not np.array_equal(out, np.asarray(draw(jax.random.key(2), data)))
    np.testing.assert_array_equal(out, np.asarray(draw(jax.random.key(1), data)))
    # A window that exactly fills the data has one start.
    np.testing.assert_array_equal(
        text.windows(jax.random.key(3), data, batch=2, length=19), np.tile(np.arange(20), (2, 1))
    )
    with pytest.raises(ValueError, match="data has 20 ids; a window needs length \\+ 1 = 21"):
        text.windows(jax.random.key(0), data, batch=2, length=20)


def test_eval_windows_tile_the_data_in_order():
    data = np.arange(100, 123, dtype=np.int32)  # 23 ids
    out = text.eval_windows(data, length=5)
    assert out.shape == (4, 6) and out.dtype == np.int32  # (23 - 1) // 5 = 4
    for i, row in enumerate(out):
        np.testing.assert_array_equal(row, data[5 * i : 5 * i + 6])
    # The targets never overlap and follow the data from its second id.
    np.testing.assert_array_equal(out[:, 1:].reshape(-1), data[1:21])
    np.testing.assert_array_equal(out[:, :-1].reshape(-1), data[:20])
    assert text.eval_windows(data, length=5, max_windows=2).shape == (2, 6)
    np.testing.assert_array_equal(text.eval_windows(data, length=22), data[None])
    with pytest.raises(ValueError, match="a window needs length \\+ 1 = 24"):
        text.eval_windows(data, length=23)


# --------------------------------------------------------------------------- bits per character


def test_bits_per_character_exact_values():
    v = 13
    targets = jnp.asarray(np.random.default_rng(0).integers(0, v, size=(3, 7)))
    uniform = jnp.zeros((3, 7, v))
    assert float(text.bits_per_character(uniform, targets)) == pytest.approx(math.log2(v), 1e-12)
    # Margin c on the correct class: -log2 softmax = log2(1 + (V - 1) e^{-c}).
    c = 20.0
    confident = c * jax.nn.one_hot(targets, v)
    expected = math.log1p((v - 1) * math.exp(-c)) / math.log(2)
    assert float(text.bits_per_character(confident, targets)) == pytest.approx(expected, 1e-9)
    assert expected < 1e-7
    # Random logits against a numpy log-softmax, and bfloat16 logits computed in float32.
    logits = np.random.default_rng(1).normal(size=(3, 7, v))
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_p, np.asarray(targets)[..., None], -1)
    want = -picked.mean() / math.log(2)
    assert float(text.bits_per_character(logits, targets)) == pytest.approx(want, 1e-12)
    low = text.bits_per_character(jnp.asarray(logits, jnp.bfloat16), targets)
    assert low.dtype == jnp.float32 and float(low) == pytest.approx(want, 2e-2)
    with pytest.raises(ValueError, match="vocabulary axis"):
        text.bits_per_character(uniform, targets[:, :3])


# --------------------------------------------------------------------------- standard library


def test_stdlib_files_are_sorted_python_sources_outside_the_excluded_folders():
    files = text.stdlib_files()
    assert len(files) > 100
    root = sysconfig.get_paths()["stdlib"]
    rel = [f.relative_to(root).as_posix() for f in files]
    assert rel == sorted(rel) and len(set(rel)) == len(rel)
    assert all(r.endswith(".py") for r in rel)
    assert not any(set(r.split("/")[:-1]) & text.EXCLUDED_DIRS for r in rel)
    assert "os.py" in rel and "json/decoder.py" in rel


def test_stdlib_corpus_is_deterministic_split_by_file_and_mostly_ascii(small_stdlib):
    corpus, again = small_stdlib, text.stdlib_corpus(max_chars=200_000)
    np.testing.assert_array_equal(corpus.train, again.train)
    np.testing.assert_array_equal(corpus.held_out, again.held_out)
    assert (corpus.chars, corpus.source, corpus.files) == (again.chars, again.source, again.files)

    assert len(corpus.train) == len(corpus.held_out) == 200_000
    train_files, held_files = corpus.files
    assert train_files and held_files and not set(train_files) & set(held_files)
    # The split rule: held out exactly when crc32(relative path) / 2**32 < 0.05.
    assert all(zlib.crc32(f.encode()) / 2**32 < 0.05 for f in held_files)
    assert all(zlib.crc32(f.encode()) / 2**32 >= 0.05 for f in train_files)
    assert "crc32" in corpus.source and "200,000" in corpus.source

    # Each part starts with its first file's text; the vocabulary is the training characters.
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    first = (root / held_files[0]).read_text(encoding="utf-8")[:1000]
    np.testing.assert_array_equal(corpus.held_out[:1000], text.encode(first, corpus.chars))
    train_text = text.decode(corpus.train, corpus.chars)
    assert corpus.chars == "\ufffd" + "".join(sorted(set(train_text)))
    assert "\n\n" in train_text and train_text.count("\n\n") >= len(train_files) - 1

    # Mostly ASCII, few unknown held-out characters.
    codes = np.array([ord(c) for c in corpus.chars])
    assert (codes[corpus.train] < 128).mean() > 0.99
    assert (corpus.held_out == 0).mean() < 0.01
    assert 60 < corpus.vocab < 300
