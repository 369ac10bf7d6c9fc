"""ListOps: hand-worked values, malformed input, the tokenizer, and the generated data's shape,
bounds, labels and tree limits (checked by an independent parser)."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from ssm_gd.seq import listops

# A small setting that runs in well under a second and still nests (max 4 levels, 5 arguments).
SMALL = {"max_depth": 4, "max_args": 5, "min_length": 20, "max_length": 100}


# --- An independent reference: parse into a tree, then height, widest node and value. --------


def _parse(tokens: list[str]):
    """Tree of ``(op, [children])`` and ints, by recursive descent; asserts well-formedness."""

    def node(i):
        t = tokens[i]
        if t.isdigit():
            return int(t), i + 1
        assert t in listops.OPERATORS, t
        children, i = [], i + 1
        while tokens[i] != "]":
            child, i = node(i)
            children.append(child)
        return (t, children), i + 1

    tree, end = node(0)
    assert end == len(tokens)
    return tree


def _height(tree) -> int:  # levels, a digit counting as one
    return 1 if isinstance(tree, int) else 1 + max(_height(c) for c in tree[1])


def _widest(tree) -> int:
    if isinstance(tree, int):
        return 0
    return max(len(tree[1]), *(_widest(c) for c in tree[1]))


def _value(tree) -> int:
    if isinstance(tree, int):
        return tree
    op, args = tree[0], [_value(c) for c in tree[1]]
    return {
        "[MIN": min,
        "[MAX": max,
        "[SM": lambda a: sum(a) % 10,
        "[MED": lambda a: int(np.median(a)),
    }[op](args)


# --- Evaluator ---------------------------------------------------------------------------------

# [MED [SM 4 8 [MAX 3 7 ] ] [MIN 6 [MED 9 1 4 8 ] 2 ] 5 [MAX 0 [SM 9 9 ] ] ], by hand:
#   [MAX 3 7 ] = 7, [SM 4 8 7 ] = 19 mod 10 = 9
#   [MED 9 1 4 8 ]: sorted 1 4 8 9, middle 4 and 8 -> int(6.0) = 6; [MIN 6 6 2 ] = 2
#   [SM 9 9 ] = 18 mod 10 = 8, [MAX 0 8 ] = 8
#   [MED 9 2 5 8 ]: sorted 2 5 8 9, middle 5 and 8 -> int(6.5) = 6
DEEP = "[MED [SM 4 8 [MAX 3 7 ] ] [MIN 6 [MED 9 1 4 8 ] 2 ] 5 [MAX 0 [SM 9 9 ] ] ]"

HAND_WORKED = [
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    ("[MIN 3 [MAX 1 8 ] 5 ]", 3),
    ("[SM 5 7 9 ]", 1),  # 21 mod 10
    ("[MED 1 9 3 ]", 3),
    ("[MED 2 5 ]", 3),  # int(3.5)
    ("[MED 2 4 ]", 3),
    ("[MED 0 9 9 0 ]", 4),  # int(4.5)
    ("[SM [MAX 9 1 ] [MIN 8 6 ] ]", 5),  # 9 + 6 = 15
    ("[SM 0 0 ]", 0),
    ("[MIN 7 ]", 7),  # one argument is well formed
    ("7", 7),  # so is a bare digit
    (DEEP, 6),
]


@pytest.mark.parametrize(("text", "value"), HAND_WORKED)
def test_evaluate_hand_worked(text, value):
    assert listops.evaluate(text) == value
    assert listops.evaluate(text.split()) == value
    assert _value(_parse(text.split())) == value


def test_med_of_any_count_is_int_of_numpy_median():
    rng = np.random.default_rng(3)
    for k in range(1, 12):
        for _ in range(20):
            args = rng.integers(0, 10, size=k)
            text = "[MED " + " ".join(map(str, args)) + " ]"
            assert listops.evaluate(text) == int(np.median(args)), text


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("[MAX 1 2", r"\[MAX at position 0 is never closed"),
        ("[MAX 1 [MIN 2 3 ]", r"\[MAX at position 0 is never closed"),
        ("[MAX 1 2 ] ]", "trailing"),
        ("] 1", "closes nothing"),
        ("[MAX ]", r"\[MAX at position 0 has no arguments"),
        ("[SM 1 [MIN ] ]", r"\[MIN at position 2 has no arguments"),
        ("3 [MAX 1 2 ]", "stray value '3'"),
        ("[MAX 1 2 ] 4", "trailing"),
        ("[MAX 1 2 ] [MIN 3 4 ]", "trailing"),
        ("[MAX 1 12 ]", "unknown ListOps token '12'"),
        ("[MAX 1 <pad> ]", "unknown ListOps token '<pad>'"),
        ("[AVG 1 2 ]", r"unknown ListOps token '\[AVG'"),
        ("( [MAX 1 2 ] )", r"unknown ListOps token '\('"),
    ],
)
def test_evaluate_rejects_malformed(text, match):
    with pytest.raises(ValueError, match=match):
        listops.evaluate(text)


# --- Tokenizer ---------------------------------------------------------------------------------


def test_vocab_layout():
    assert len(listops.VOCAB) == 16
    assert listops.VOCAB[0] == "<pad>"
    assert listops.VOCAB[1:11] == tuple("0123456789")
    assert listops.VOCAB[11:] == ("[MIN", "[MAX", "[MED", "[SM", "]")


def test_encode_decode_round_trip():
    ids = listops.encode("[MAX 2 9 [MIN 4 7 ] 0 ]")
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [12, 3, 10, 11, 5, 8, 15, 1, 15])
    assert listops.decode(ids) == "[MAX 2 9 [MIN 4 7 ] 0 ]"
    assert listops.decode(np.concatenate([ids, np.zeros(5, np.int32)])) == listops.decode(ids)
    assert listops.decode([]) == ""
    np.testing.assert_array_equal(listops.encode("  [SM\t1\n 2 ]  "), [14, 2, 3, 15])
    np.testing.assert_array_equal(listops.encode(["[SM", "1", "2", "]"]), [14, 2, 3, 15])
    assert listops.encode("").shape == (0,)


def test_tokenizer_rejects_unknown():
    with pytest.raises(ValueError, match="unknown ListOps token '10'"):
        listops.encode("[MAX 10 2 ]")
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 16\); got 16"):
        listops.decode([1, 16])
    with pytest.raises(ValueError, match="ids must be a 1-D"):
        listops.decode([[1, 2]])


# --- Generator ---------------------------------------------------------------------------------


def test_sample_expression_respects_depth_and_args():
    rng = np.random.default_rng(0)
    heights, widths = collections.Counter(), collections.Counter()
    for _ in range(300):
        expr = listops.sample_expression(rng, max_depth=4, max_args=3)
        tree = _parse(expr)
        assert expr[0] in listops.OPERATORS  # the root is an operator
        heights[_height(tree)] += 1
        widths[_widest(tree)] += 1
        assert listops.evaluate(expr) == _value(tree)
    # Every height 2..4 and every widest count 2..3 occurs; nothing beyond the limits.
    assert set(heights) == {2, 3, 4}
    assert set(widths) == {2, 3}


def test_max_tokens():
    assert listops.max_tokens(2, 3) == 5  # [OP d d d ]
    assert listops.max_tokens(3, 2) == 2 + 2 * 4
    rng = np.random.default_rng(0)
    longest = max(len(listops.sample_expression(rng, max_depth=3, max_args=2)) for _ in range(500))
    assert longest == listops.max_tokens(3, 2)  # (1/4)^2 chance per draw: reached in 500


def test_dataset_shapes_bounds_padding_labels_and_trees():
    data = listops.dataset(400, seed=1, **SMALL)
    assert isinstance(data, listops.ListOps)
    assert data.tokens.shape == (400, 100) and data.tokens.dtype == np.int32
    assert data.lengths.shape == data.labels.shape == (400,)
    assert data.lengths.dtype == data.labels.dtype == np.int32
    assert data.lengths.min() >= 20 and data.lengths.max() <= 100
    heights = collections.Counter()
    for row, length, label in zip(data.tokens, data.lengths, data.labels, strict=True):
        assert (row[length:] == 0).all() and (row[:length] != 0).all()
        text = listops.decode(row)
        assert len(text.split()) == length
        assert label == listops.evaluate(text)
        tree = _parse(text.split())
        assert label == _value(tree)
        assert _height(tree) <= 4 and 2 <= _widest(tree) <= 5
        heights[_height(tree)] += 1
    assert heights[4] > 0  # the depth limit is reached


def test_dataset_at_lra_settings():
    data = listops.dataset(4, seed=0)
    assert data.tokens.shape == (4, 2000)
    assert ((data.lengths >= 500) & (data.lengths <= 2000)).all()
    for row, label in zip(data.tokens, data.labels, strict=True):
        tree = _parse(listops.decode(row).split())
        assert _height(tree) <= 10 and _widest(tree) <= 10
        assert label == _value(tree)


def test_dataset_is_deterministic_per_seed():
    a = listops.dataset(50, seed=7, **SMALL)
    b = listops.dataset(50, seed=7, **SMALL)
    c = listops.dataset(50, seed=8, **SMALL)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.tokens, c.tokens)


def test_splits_use_distinct_streams():
    train_seed, test_seed = listops.split_seeds(0)
    assert train_seed != test_seed
    assert listops.split_seeds(0) == (train_seed, test_seed)
    train, test = listops.splits(30, 20, seed=0, **SMALL)
    assert train.tokens.shape == (30, 100) and test.tokens.shape == (20, 100)
    np.testing.assert_array_equal(
        train.tokens, listops.dataset(30, seed=train_seed, **SMALL).tokens
    )
    np.testing.assert_array_equal(test.tokens, listops.dataset(20, seed=test_seed, **SMALL).tokens)
    assert not np.array_equal(train.tokens[0], test.tokens[0])
    # At this size the lengths 20..100 make collisions unlikely: none between the splits.
    seen = {listops.decode(r) for r in train.tokens}
    assert not any(listops.decode(r) in seen for r in test.tokens)


def test_label_distribution_small_setting():
    labels = listops.dataset(1000, seed=0, **SMALL).labels
    counts = np.bincount(labels, minlength=10)
    top = int(counts.argmax())
    print(
        f"ListOps labels at {SMALL}: {counts.tolist()}; most frequent {top}, {counts[top] / 1000:.1%}"
    )
    # MIN and MAX pull the answers to the ends of the range: 0 and 9 lead the ten classes.
    assert set(np.argsort(counts)[-2:]) == {0, 9}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must be a positive integer; got 0"),
        ({"n": 2.0}, "n must be a positive integer"),
        ({"n": True}, "n must be a positive integer"),
        ({"seed": -1}, "seed must be a non-negative integer; got -1"),
        ({"seed": "0"}, "seed must be a non-negative integer"),
        ({"max_depth": 1}, "max_depth must be an integer >= 2; got 1"),
        ({"max_args": 1}, "max_args must be an integer >= 2; got 1"),
        ({"min_length": 0}, "min_length must be a positive integer; got 0"),
        ({"max_length": -5}, "max_length must be a positive integer; got -5"),
        ({"min_length": 50, "max_length": 40}, "min_length must be <= max_length"),
        # Unreachable: max_depth=2, max_args=3 gives 4 to 5 tokens.
        ({"max_depth": 2, "max_args": 3, "min_length": 6, "max_length": 9}, "min_length=6"),
        ({"min_length": 1, "max_length": 3}, "max_length=3"),
        # Reachable but rare: only full trees have 26 tokens (chance ~2e-5 a draw).
        ({"max_depth": 3, "max_args": 4, "min_length": 26, "max_length": 26}, "too rare"),
    ],
)
def test_dataset_rejects_bad_arguments(kwargs, match):
    args = {"n": 2, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        listops.dataset(args.pop("n"), **args)


def test_other_entry_points_reject_bad_arguments():
    with pytest.raises(ValueError, match="rng must be a numpy.random.Generator"):
        listops.sample_expression(0, max_depth=3, max_args=3)
    with pytest.raises(ValueError, match="max_args must be an integer >= 2"):
        listops.sample_expression(np.random.default_rng(0), max_depth=3, max_args=0)
    with pytest.raises(ValueError, match="n_test must be a positive integer"):
        listops.splits(5, 0, seed=0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        listops.split_seeds(-2)


def test_a_learning_rate_of_inf_is_refused_by_flag(tmp_path, capsys):
    from experiments import listops as experiment

    with pytest.raises(SystemExit) as info:
        experiment.main(["--lr", "inf", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "error: --lr must be a positive finite number" in capsys.readouterr().err
