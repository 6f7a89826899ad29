"""mrl.data: readers, column mapping, error messages, collator layout, batch samplers. No network."""

import itertools
import random

import pytest
import torch
from torch.utils.data import DataLoader

from mrl.data import (
    BatchSampler,
    DataError,
    Examples,
    TokenizingCollator,
    load_examples,
    parse_where,
    read_rows,
)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_examples(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message, "DataError messages are one line"
    assert message.startswith(str(path)), message
    return message


# ----------------------------------------------------------------------------- layouts and formats


def test_scored_pairs(tmp_path):
    path = write(tmp_path, "sts.csv", 'sentence1,sentence2,score\nA cat.,A dog.,0.25\n"Hi, you.",Hello.,1\n')
    ex = load_examples(path)
    assert ex.column_names == ["sentence1", "sentence2"]
    assert ex.columns == [["A cat.", "Hi, you."], ["A dog.", "Hello."]]
    assert ex.scores == [0.25, 1.0]
    assert len(ex) == 2 and ex.n_columns == 2
    assert ex[1] == (("Hi, you.", "Hello."), 1.0)
    assert ex.source == str(path)


def test_pairs_with_where_filter(tmp_path):
    path = write(
        tmp_path,
        "nli.csv",
        "premise,hypothesis,label\nP1,H1,neutral\nP2,H2,entailment\nP3,,contradiction\nP4,H4,Entailment\n",
    )
    # The empty hypothesis sits in a row the filter drops, so it is never checked.
    ex = load_examples(path, where={"label": "ENTAILMENT"})
    assert ex.columns == [["P2", "P4"], ["H2", "H4"]]
    assert ex.scores is None
    assert ex[0] == (("P2", "H2"), None)


def test_triplets_with_two_negatives(tmp_path):
    path = write(tmp_path, "trip.csv", "id,anchor,positive,negative_1,negative_2\n7,a,p,n1,n2\n8,b,q,m1,m2\n")
    ex = load_examples(path)
    assert ex.column_names == ["anchor", "positive", "negative_1", "negative_2"]
    assert ex[1] == (("b", "q", "m1", "m2"), None)


def test_single_negative_and_query_layout(tmp_path):
    trip = write(tmp_path, "t.csv", "anchor,positive,negative\na,p,n\n")
    assert load_examples(trip).column_names == ["anchor", "positive", "negative"]
    qp = write(tmp_path, "q.csv", "query,positive\nq,p\n")
    assert load_examples(qp).column_names == ["query", "positive"]
    t12 = write(tmp_path, "t12.csv", "text1,text2\nx,y\n")
    assert load_examples(t12).column_names == ["text1", "text2"]


def test_text_columns_by_name(tmp_path):
    path = write(tmp_path, "many.csv", "id,title,text,question,score\n1,T,body,what?,0.5\n")
    ex = load_examples(path, text_columns=["question", "text"])
    assert ex.columns == [["what?"], ["body"]]
    assert ex.scores == [0.5]  # a "score" column is picked up unless another is named
    ex = load_examples(path, text_columns=["question", "text"], score_column="id")
    assert ex.scores == [1.0]


def test_tsv_keeps_literal_quotes(tmp_path):
    path = write(tmp_path, "sts.tsv", 'sentence1\tsentence2\tscore\nHe said "hi\tShe said "bye"\t0.5\n')
    ex = load_examples(path)
    assert ex[0] == (('He said "hi', 'She said "bye"'), 0.5)


def test_jsonl(tmp_path):
    path = write(
        tmp_path,
        "pairs.jsonl",
        '{"sentence1": "a", "sentence2": "b", "score": 0.5}\n\n'
        '{"sentence1": "c", "sentence2": "d", "score": 1}\n',
    )
    header, rows = read_rows(path)
    assert header == ["sentence1", "sentence2", "score"]
    assert [line for line, _ in rows] == [1, 3]
    ex = load_examples(path)
    assert ex.columns == [["a", "c"], ["b", "d"]] and ex.scores == [0.5, 1.0]


def test_read_rows_lines_bom_crlf_and_quoted_newline(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b'\xef\xbb\xbfsentence1,sentence2\r\n"two\r\nlines",b\r\n\r\nc,d\r\n')
    header, rows = read_rows(path)
    assert header == ["sentence1", "sentence2"]  # the BOM is not part of the first name
    assert rows == [
        (2, {"sentence1": "two\r\nlines", "sentence2": "b"}),
        (5, {"sentence1": "c", "sentence2": "d"}),
    ]


# ----------------------------------------------------------------------------- bad input


STS_HEADER = "sentence1,sentence2,score\n"


def test_missing_column_suggests_closest(tmp_path):
    path = write(tmp_path, "sts.csv", STS_HEADER + "a,b,0.1\n")
    message = load_error(path, text_columns=["sentence1", "sentnce2"])
    assert f"{path}:1:" in message and "'sentnce2'" in message
    assert "sentence1, sentence2, score" in message and "did you mean 'sentence2'" in message
    message = load_error(path, score_column="Score")
    assert "'Score'" in message and "did you mean 'score'" in message
    message = load_error(path, where={"lable": "x"})
    assert "'lable'" in message and f"{path}:1:" in message


def test_unknown_layout(tmp_path):
    path = write(tmp_path, "odd.csv", "left,right\na,b\n")
    message = load_error(path)
    assert f"{path}:1:" in message and "left, right" in message and "text_columns" in message


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text(tmp_path, text):
    path = write(tmp_path, "sts.csv", STS_HEADER + "a,b,0.1\nc," + text + ",0.2\n")
    message = load_error(path)
    assert f"{path}:3:" in message and "'sentence2'" in message and "empty" in message


@pytest.mark.parametrize(
    "score, expected",
    [
        ("abc", "'abc' is not a number"),
        ("", "'' is not a number"),
        ("nan", "not a finite number"),
        ("-inf", "not a finite number"),
    ],
)
def test_bad_score(tmp_path, score, expected):
    path = write(tmp_path, "sts.csv", STS_HEADER + "a,b,0.1\nc,d,0.2\ne,f," + score + "\n")
    message = load_error(path)
    assert f"{path}:4:" in message and "'score'" in message and expected in message


def test_bad_score_line_counts_quoted_newlines(tmp_path):
    path = write(tmp_path, "sts.csv", STS_HEADER + '"multi\nline",b,0.1\nc,d,x\n')
    assert f"{path}:4:" in load_error(path)


def test_ragged_rows(tmp_path):
    short = write(tmp_path, "short.csv", STS_HEADER + "a,b,0.1\nc,d\n")
    message = load_error(short)
    assert f"{short}:3:" in message and "2 fields but the header has 3" in message and "'score'" in message
    long = write(tmp_path, "long.csv", STS_HEADER + "a,b,0.1\nHi, you,b,0.2\n")
    message = load_error(long)
    assert f"{long}:3:" in message and "4 fields" in message and "'score'" in message


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes((STS_HEADER + "a,b,0.1\ncaf\xe9,d,0.2\n").encode("latin-1"))
    message = load_error(path)
    assert f"{path}:3:" in message and "not UTF-8" in message


def test_missing_empty_and_headeronly_files(tmp_path):
    assert "no such file" in load_error(tmp_path / "nope.csv")
    assert "empty file" in load_error(write(tmp_path, "empty.csv", "\n\n"))
    assert "no rows" in load_error(write(tmp_path, "header.csv", STS_HEADER))
    assert "unknown file type" in load_error(write(tmp_path, "x.txt", STS_HEADER))


def test_where_keeping_nothing(tmp_path):
    path = write(tmp_path, "nli.csv", "premise,hypothesis,label\nP,H,neutral\nQ,I,entailment\n")
    message = load_error(path, where={"label": "entailmnt"})
    assert "label=entailmnt" in message and "'label' has entailment, neutral" in message


def test_jsonl_errors(tmp_path):
    bad = write(tmp_path, "bad.jsonl", '{"text1": "a", "text2": "b"}\n{"text1": "a",\n')
    message = load_error(bad)
    assert f"{bad}:2:" in message and "not valid JSON" in message
    gap = write(tmp_path, "gap.jsonl", '{"text1": "a", "text2": "b"}\n{"text1": "c"}\n')
    message = load_error(gap)
    assert f"{gap}:2:" in message and "'text2'" in message
    null = write(tmp_path, "null.jsonl", '{"text1": "a", "text2": null}\n')
    assert f"{null}:1:" in load_error(null)


def test_parse_where():
    assert parse_where("label=entailment") == {"label": "entailment"}
    assert parse_where(" label = 1 ,lang=en") == {"label": "1", "lang": "en"}
    for bad in ["label", "=x", "label=", "a=1,a=2"]:
        with pytest.raises(ValueError, match=repr(bad)):
            parse_where(bad)


# ----------------------------------------------------------------------------- collator


class FakeTokenize:
    """Records every call; returns one row of ids per text, with the text's index as its id."""

    def __init__(self):
        self.calls = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return {"input_ids": torch.arange(len(texts))[:, None], "attention_mask": torch.ones(len(texts), 1)}


def test_collator_column_major_with_scores():
    ex = Examples([["a0", "a1", "a2"], ["b0", "b1", "b2"]], [0.1, 0.5, 0.9], "mem", ["s1", "s2"])
    tokenize = FakeTokenize()
    batch = TokenizingCollator(tokenize)([ex[2], ex[0]])
    assert tokenize.calls == [["a2", "a0", "b2", "b0"]]  # column 0 rows, then column 1 rows
    assert batch["n_columns"] == 2
    assert batch["features"]["input_ids"].shape == (4, 1)
    assert batch["labels"].dtype == torch.float32
    assert torch.equal(batch["labels"], torch.tensor([0.9, 0.1]))
    assert batch["texts"] == ["a2", "a0"]


def test_collator_triplets_without_scores():
    ex = Examples([["a0", "a1"], ["p0", "p1"], ["n0", "n1"]], None, "mem", ["anchor", "positive", "negative"])
    tokenize = FakeTokenize()
    batch = TokenizingCollator(tokenize)([ex[0], ex[1]])
    assert tokenize.calls == [["a0", "a1", "p0", "p1", "n0", "n1"]]
    assert batch["labels"] is None and batch["n_columns"] == 3


def test_collator_rejects_mixed_items():
    collate = TokenizingCollator(FakeTokenize())
    with pytest.raises(ValueError):
        collate([(("a", "b"), 0.5), (("c", "d"), None)])
    with pytest.raises(ValueError):
        collate([(("a", "b"), None), (("c", "d", "e"), None)])


def test_dataloader_end_to_end():
    n = 10
    scores = [i / n for i in range(n)]
    ex = Examples([[f"a{i}" for i in range(n)], [f"b{i}" for i in range(n)]], scores, "mem", ["x", "y"])
    sampler = BatchSampler(ex, batch_size=4, seed=3, drop_last=True)
    tokenize = FakeTokenize()
    loader = DataLoader(ex, batch_sampler=sampler, collate_fn=TokenizingCollator(tokenize))
    batches = list(loader)
    assert len(batches) == len(sampler) == 2 and len(tokenize.calls) == 2
    for batch, indices in zip(batches, sampler.batches(0)):
        assert batch["texts"] == [f"a{i}" for i in indices]
        assert torch.allclose(batch["labels"], torch.tensor([i / n for i in indices]))


# ----------------------------------------------------------------------------- batch sampler


def unique_examples(n):
    return Examples([[f"a{i}" for i in range(n)], [f"b{i}" for i in range(n)]], None, "mem", ["x", "y"])


def test_sampler_deterministic_per_seed_and_epoch():
    ex = unique_examples(50)
    a, b = BatchSampler(ex, 8, seed=1), BatchSampler(ex, 8, seed=1)
    assert a.batches(0) == b.batches(0)
    assert a.batches(0) != a.batches(1)
    assert a.batches(0) != BatchSampler(ex, 8, seed=2).batches(0)
    assert BatchSampler(ex, 8, seed=0).batches(1) != BatchSampler(ex, 8, seed=1).batches(0)
    a.set_epoch(1)
    assert list(a) == b.batches(1)


@pytest.mark.parametrize("avoid_duplicates", [False, True])
def test_sampler_covers_each_index_once(avoid_duplicates):
    ex = unique_examples(50)
    kept = BatchSampler(ex, 8, drop_last=False, avoid_duplicates=avoid_duplicates)
    batches = kept.batches(4)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(50)) and len(batches) == len(kept) == 7
    dropped = BatchSampler(ex, 8, drop_last=True, avoid_duplicates=avoid_duplicates)
    batches = dropped.batches(4)
    flat = [i for batch in batches for i in batch]
    assert len(set(flat)) == len(flat) == 48 and all(len(batch) == 8 for batch in batches)
    assert len(batches) == len(dropped) == 6


def repeated_examples(n=400, seed=0):
    # Anchors drawn from 60 texts and positives from 150, with some texts shared between the two
    # columns: plenty of clashes, as in AllNLI where each premise has several hypotheses.
    rng = random.Random(seed)
    anchors = [f"t{rng.randrange(60)}" for _ in range(n)]
    positives = [f"t{rng.randrange(40, 190)}" for _ in range(n)]
    return Examples([anchors, positives], None, "mem", ["anchor", "positive"])


def clashes(ex, batch):
    # Brute force: any two distinct examples of the batch sharing a text, in any columns.
    return [(i, j) for i, j in itertools.combinations(batch, 2) if set(ex[i][0]) & set(ex[j][0])]


def test_sampler_data_really_has_duplicates():
    ex = repeated_examples()
    batches = BatchSampler(ex, 16).batches(0)
    assert any(clashes(ex, batch) for batch in batches)


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_sampler_avoid_duplicates_brute_force(epoch):
    ex = repeated_examples()
    keep_all = BatchSampler(ex, 16, seed=5, drop_last=False, avoid_duplicates=True)
    batches = keep_all.batches(epoch)
    assert all(not clashes(ex, batch) for batch in batches)
    assert sorted(i for batch in batches for i in batch) == list(range(len(ex)))  # nothing lost

    full_only = BatchSampler(ex, 16, seed=5, drop_last=True, avoid_duplicates=True)
    batches = full_only.batches(epoch)
    flat = [i for batch in batches for i in batch]
    assert all(not clashes(ex, batch) for batch in batches)
    assert all(len(batch) == 16 for batch in batches) and len(set(flat)) == len(flat)
    # Deferring (not dropping) clashing examples loses at most the tail that cannot fill a batch.
    assert len(batches) >= len(ex) // 16 - 1 and len(batches) <= len(full_only)
    assert full_only.batches(epoch) == batches


def test_sampler_batch_larger_than_data():
    ex = unique_examples(5)
    with pytest.raises(ValueError, match="batch_size 8 is larger than the 5 examples"):
        BatchSampler(ex, 8)
    assert [len(batch) for batch in BatchSampler(ex, 8, drop_last=False).batches(0)] == [5]


def test_sampler_no_duplicate_free_batch():
    ex = Examples([["same"] * 6, [f"b{i}" for i in range(6)]], None, "mem", ["x", "y"])
    with pytest.raises(ValueError, match="without a repeated text"):
        BatchSampler(ex, 2, avoid_duplicates=True).batches(0)


# ----------------------------------------------------------------------------- real data


def test_real_files(shared_data):
    sts = load_examples(shared_data / "stsb" / "en-test.csv")
    assert len(sts) == 1379 and sts.n_columns == 2
    assert all(0.0 <= s <= 1.0 for s in sts.scores)
    triplets = load_examples(shared_data / "nli" / "allnli-triplets.csv")
    assert triplets.column_names == ["anchor", "positive", "negative"] and triplets.scores is None
    assert len(triplets) > 1000
    sampler = BatchSampler(triplets, 64, avoid_duplicates=True)
    batch = sampler.batches(0)[0]
    assert len(batch) == 64 and not clashes(triplets, batch)


# ----------------------------------------------------------------------------- length grouping


def _padded_tokens(batches, lengths):
    """Tokens a run computes when each batch is padded to its longest example."""
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_length_grouping_covers_every_index_once_and_cuts_padding():
    """Grouped batches are a partition of the data and pad far less than random batches."""
    rng = random.Random(0)
    n, batch = 1000, 16
    lengths = [rng.randint(5, 120) for _ in range(n)]
    ex = Examples([[f"t{i}" for i in range(n)]], None, "mem", ["text"])
    grouped = BatchSampler(ex, batch, seed=3, lengths=lengths).batches(0)
    plain = BatchSampler(ex, batch, seed=3).batches(0)
    flat = [i for b in grouped for i in b]
    assert len(flat) == len(set(flat)) == (n // batch) * batch
    assert _padded_tokens(grouped, lengths) < 0.6 * _padded_tokens(plain, lengths)
    # The batch order is shuffled, not long-to-short.
    longest = [max(lengths[i] for i in b) for b in grouped]
    assert longest != sorted(longest, reverse=True)
    assert BatchSampler(ex, batch, seed=3, lengths=lengths).batches(0) == grouped
    assert BatchSampler(ex, batch, seed=3, lengths=lengths).batches(1) != grouped


def test_length_grouping_keeps_batches_free_of_duplicates():
    """With avoid_duplicates, grouped batches still never repeat a text (brute-force check)."""
    rng = random.Random(1)
    anchors = [f"premise {rng.randrange(60)}" for _ in range(400)]
    ex = Examples([anchors, [f"hyp {i}" for i in range(400)]], None, "mem", ["a", "p"])
    lengths = [len(a) for a in anchors]
    for b in BatchSampler(ex, 8, seed=0, avoid_duplicates=True, lengths=lengths).batches(0):
        texts = [t for i in b for t in ex[i][0]]
        assert len(texts) == len(set(texts))


def test_lengths_must_match_the_examples():
    ex = Examples([["a", "b", "c"]], None, "mem", ["text"])
    with pytest.raises(ValueError, match="lengths"):
        BatchSampler(ex, 1, lengths=[1, 2])
