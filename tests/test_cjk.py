"""Chinese text (no spaces between words) through our tokenising, pooling and lower-casing.

A tiny BERT with a WordPiece vocabulary that holds some CJK characters: BERT's basic tokenizer
puts every CJK character in a token of its own, so mean pooling averages one vector per
character (plus [CLS] and [SEP]); lower-casing, ours (``do_lower_case``) or the tokenizer's,
leaves Chinese characters alone. Expected ids are read from the vocabulary file, and the pooled
vector is recomputed by a plain loop over the model's token states.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from mrl.model import Encoder

CJK = list("我爱北京天安门一个男人在弹吉他。")
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CJK, *"abcdefghijklmnopqrstuvwxyz", "cat", "##s"]


@pytest.fixture(scope="module")
def cjk_model(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    path = tmp_path_factory.mktemp("cjk_bert")
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(path / "vocab.txt"), model_max_length=32)  # uncased, like most
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def vocab_ids(tokens: list[str]) -> list[int]:
    return [VOCAB.index(t) for t in tokens]


def test_every_chinese_character_is_its_own_token(cjk_model):
    encoder = Encoder(cjk_model)
    ids = encoder.tokenize(["我爱北京天安门", "一个男人在弹吉他。"])["input_ids"].tolist()
    assert ids[0][:9] == vocab_ids(["[CLS]", *"我爱北京天安门", "[SEP]"])
    assert ids[1] == vocab_ids(["[CLS]", *"一个男人在弹吉他。", "[SEP]"])
    # Latin words inside Chinese text stay words; a character missing from the vocabulary is
    # one [UNK] and leaves its neighbours intact.
    assert encoder.token_ids(["我爱cats"])[0] == vocab_ids(["[CLS]", "我", "爱", "cat", "##s", "[SEP]"])
    assert encoder.token_ids(["我爱龙门"])[0] == vocab_ids(["[CLS]", "我", "爱", "[UNK]", "门", "[SEP]"])


def test_mean_pooling_covers_every_character(cjk_model):
    encoder = Encoder(cjk_model).eval()
    texts = ["北京", "一个男人在弹吉他。"]  # the first is padded to the second's length
    emb = encoder.encode(texts, normalize=False)  # (2, 16)
    for text, vector in zip(texts, emb):
        ids = torch.tensor([vocab_ids(["[CLS]", *text, "[SEP]"])])  # no padding at all
        with torch.no_grad():
            states = encoder.model(input_ids=ids).last_hidden_state[0]  # (len(text) + 2, 16)
        total = torch.zeros(16)
        for position in range(states.shape[0]):  # every character, [CLS] and [SEP]
            total += states[position]
        torch.testing.assert_close(vector, total / states.shape[0], atol=1e-5, rtol=1e-5)


def test_lower_casing_leaves_chinese_alone(cjk_model):
    from transformers import BertTokenizer

    plain = Encoder(cjk_model)
    lowered = Encoder(cjk_model, do_lower_case=True)  # our own str.lower() before the tokenizer
    text = "我爱北京天安门。"
    assert lowered.token_ids([text]) == plain.token_ids([text])
    assert lowered.token_ids(["我爱CATS"]) == plain.token_ids(["我爱cats"])
    torch.testing.assert_close(lowered.encode([text]), plain.encode([text]))
    # The tokenizer's own lower-casing (which also strips accents) keeps every Chinese character.
    cased = BertTokenizer(str(cjk_model / "vocab.txt"), do_lower_case=False)
    uncased = BertTokenizer(str(cjk_model / "vocab.txt"), do_lower_case=True)
    assert uncased(text)["input_ids"] == cased(text)["input_ids"] == vocab_ids(["[CLS]", *text, "[SEP]"])


@pytest.mark.integration
def test_real_tokenizer_splits_chinese_into_characters(minilm_dir, shared_data):
    """The packaged all-MiniLM-L6-v2 (English uncased vocabulary) on Chinese STS-B: every CJK
    character becomes one token of its own, often [UNK] (see experiments/2026-11-30_chinese_*)."""
    with open(shared_data / "stsb" / "zh-dev.csv", encoding="utf-8") as f:
        texts = [row["sentence1"] for row in csv.DictReader(f)][:200]
    encoder = Encoder(minilm_dir)
    for text, ids in zip(texts, encoder.token_ids(texts)):
        han = [ch for ch in text if "\u4e00" <= ch <= "\u9fff"]
        tokens = encoder.tokenizer.convert_ids_to_tokens(ids)
        assert len([t for t in tokens if t == "[UNK]" or "\u4e00" <= t[-1:] <= "\u9fff"]) >= len(han)
        assert all(sum("\u4e00" <= ch <= "\u9fff" for ch in t) <= 1 for t in tokens)  # one character each
