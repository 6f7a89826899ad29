"""The pooling table (mrl/pooling.py): each pooling against a per-row loop, its sentence-transformers
flag and its card code; and a pooling added to the table works everywhere (flags, encoder, saved
folder, card) with nothing else changed."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval.py lives in the repo root
import eval as eval_script  # noqa: E402
from mrl.card import EXAMPLE_SENTENCES, write_card  # noqa: E402
from mrl.config import build_parser  # noqa: E402
from mrl.model import Encoder  # noqa: E402
from mrl.pooling import (  # noqa: E402
    POOLING_MODES,
    POOLINGS,
    ST_POOLING_FLAGS,
    PoolingEntry,
    pool,
    pooling_from_st_config,
    st_pooling_flags,
)

MODES = ("mean", "cls", "max", "lasttoken")


# --------------------------------------------------------------------------------------------
# pool
# --------------------------------------------------------------------------------------------


def pool_reference(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-row python loop over the real (unmasked) tokens; hidden (N, S, D) -> (N, D)."""
    rows = []
    for i in range(hidden.shape[0]):
        positions = [s for s in range(hidden.shape[1]) if mask[i, s] == 1]
        tokens = hidden[i, positions]  # (n_i, D), real tokens only
        if mode == "mean":
            rows.append(tokens.sum(0) / len(positions))
        elif mode == "cls":
            rows.append(hidden[i, 0])
        elif mode == "max":
            rows.append(torch.stack([tokens[:, k].max() for k in range(tokens.shape[1])]))
        elif mode == "lasttoken":
            rows.append(hidden[i, positions[-1]])
    return torch.stack(rows)


def right_padded_mask(lengths: list[int], seq_len: int) -> torch.Tensor:
    return torch.tensor([[1] * n + [0] * (seq_len - n) for n in lengths])


def left_padded_mask(lengths: list[int], seq_len: int) -> torch.Tensor:
    return torch.tensor([[0] * (seq_len - n) + [1] * n for n in lengths])


@pytest.fixture
def hidden_and_mask():
    torch.manual_seed(0)
    lengths = [5, 1, 3, 5]
    hidden = torch.randn(len(lengths), 5, 6, dtype=torch.float64)  # (N, S, D)
    return hidden, right_padded_mask(lengths, 5)


@pytest.mark.parametrize("mode", MODES)
def test_pool_matches_per_row_loop(hidden_and_mask, mode):
    hidden, mask = hidden_and_mask
    torch.testing.assert_close(pool(hidden, mask, mode), pool_reference(hidden, mask, mode))


@pytest.mark.parametrize("mode", ["mean", "max", "lasttoken"])
def test_pool_left_padded_matches_loop(mode):
    torch.manual_seed(1)
    hidden = torch.randn(3, 6, 4, dtype=torch.float64)
    mask = left_padded_mask([6, 2, 4], 6)
    got = pool(hidden, mask, mode)
    torch.testing.assert_close(got, pool_reference(hidden, mask, mode))
    if mode == "lasttoken":  # left padding: the last real token is the last position for every row
        torch.testing.assert_close(got, hidden[:, -1])


def test_lasttoken_right_padded_picks_last_real_token():
    torch.manual_seed(2)
    hidden = torch.randn(3, 5, 4, dtype=torch.float64)
    lengths = [5, 2, 3]
    got = pool(hidden, right_padded_mask(lengths, 5), "lasttoken")
    torch.testing.assert_close(got, torch.stack([hidden[i, n - 1] for i, n in enumerate(lengths)]))


# cls reads position 0, which left padding moves by definition: right padding only for it.
@pytest.mark.parametrize(
    ("mode", "side"), [(m, "right") for m in MODES] + [(m, "left") for m in MODES if m != "cls"]
)
def test_pool_invariant_to_extra_padding(mode, side):
    """Extra padding columns holding garbage (huge values of either sign) change nothing."""
    torch.manual_seed(3)
    lengths = [4, 2, 3]
    hidden = torch.randn(3, 4, 5, dtype=torch.float64)
    make_mask = right_padded_mask if side == "right" else left_padded_mask
    mask = make_mask(lengths, 4)
    garbage = 1e6 * torch.randn(3, 3, 5, dtype=torch.float64)
    if side == "right":
        padded_hidden = torch.cat([hidden, garbage], dim=1)
        padded_mask = torch.cat([mask, torch.zeros(3, 3, dtype=mask.dtype)], dim=1)
    else:
        padded_hidden = torch.cat([garbage, hidden], dim=1)
        padded_mask = torch.cat([torch.zeros(3, 3, dtype=mask.dtype), mask], dim=1)
    torch.testing.assert_close(pool(padded_hidden, padded_mask, mode), pool(hidden, mask, mode))


def test_pool_garbage_inside_padding_of_short_rows():
    """Garbage in the padded positions of the shorter rows is ignored too (not only extra columns)."""
    torch.manual_seed(4)
    hidden = torch.randn(3, 5, 4, dtype=torch.float64)
    mask = right_padded_mask([5, 2, 3], 5)
    noisy = hidden.clone()
    noisy[mask == 0] = 1e6
    for mode in MODES:
        torch.testing.assert_close(pool(noisy, mask, mode), pool(hidden, mask, mode))


def test_mean_pool_all_padding_row_is_zero_not_nan():
    hidden = torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    out = pool(hidden, mask, "mean")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], torch.zeros(4))


def test_max_pool_does_not_mutate_input(hidden_and_mask):
    hidden, mask = hidden_and_mask
    hidden_before, mask_before = hidden.clone(), mask.clone()
    pool(hidden, mask, "max")
    assert torch.equal(hidden, hidden_before)
    assert torch.equal(mask, mask_before)


@pytest.mark.parametrize("mode", MODES)
def test_pool_broadcasts_leading_layer_axis(mode):
    torch.manual_seed(5)
    hidden = torch.randn(3, 4, 6, 5, dtype=torch.float64)  # (L, N, S, D)
    mask = right_padded_mask([6, 1, 4, 3], 6)  # (N, S)
    got = pool(hidden, mask, mode)
    assert got.shape == (3, 4, 5)
    for layer in range(3):
        torch.testing.assert_close(got[layer], pool_reference(hidden[layer], mask, mode))


def test_pool_unknown_mode_raises():
    with pytest.raises(ValueError, match="pooling"):
        pool(torch.zeros(1, 2, 3), torch.ones(1, 2), "median")


# --------------------------------------------------------------------------------------------
# The table: sentence-transformers flags and the card's code
# --------------------------------------------------------------------------------------------


def test_built_in_poolings_are_the_table():
    assert tuple(POOLING_MODES) == MODES


def test_st_flags_of_the_built_in_poolings():
    """1_Pooling/config.json as sentence-transformers writes it: all six flags in its order, only
    ours true; and each flag reads back as its pooling."""
    ours = {
        "mean": "pooling_mode_mean_tokens",
        "cls": "pooling_mode_cls_token",
        "max": "pooling_mode_max_tokens",
        "lasttoken": "pooling_mode_lasttoken",
    }
    for mode, flag in ours.items():
        flags = st_pooling_flags(mode)
        assert list(flags) == list(ST_POOLING_FLAGS)
        assert [name for name, on in flags.items() if on] == [flag]
        assert pooling_from_st_config({"word_embedding_dimension": 8, **flags}) == mode
    # No flag, a flag we do not implement, or two flags at once: not ours to guess.
    assert pooling_from_st_config({}) is None
    assert pooling_from_st_config({"pooling_mode_weightedmean_tokens": True}) is None
    two = {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}
    assert pooling_from_st_config(two) is None


@pytest.mark.parametrize("mode", MODES)
def test_card_code_computes_the_pooling(hidden_and_mask, mode):
    """The card's plain-torch version of each pooling gives the same vectors (right padding)."""
    hidden, mask = hidden_and_mask
    namespace = {"torch": torch}
    exec(POOLINGS[mode].card_code, namespace)  # noqa: S102 (our own table)
    torch.testing.assert_close(namespace["pool"](hidden, mask), pool(hidden, mask, mode))


# --------------------------------------------------------------------------------------------
# A new pooling is one table entry
# --------------------------------------------------------------------------------------------


def sqrt_len_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sum of the real tokens over the square root of their count: (..., N, S, D) -> (..., N, D)."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (N, S, 1)
    return (hidden * mask).sum(-2) / mask.sum(-2).clamp(min=1).sqrt()


SQRT_LEN = PoolingEntry(
    sqrt_len_pool,
    "pooling_mode_mean_sqrt_len_tokens",
    """def pool(tokens, attention_mask):  # (N, S, D), (N, S) -> (N, D): sum / sqrt(count)
    mask = attention_mask.unsqueeze(-1).to(tokens.dtype)  # (N, S, 1)
    return (tokens * mask).sum(1) / mask.sum(1).clamp(min=1).sqrt()""",
)


def test_a_pooling_added_to_the_table_works_everywhere(tiny_model_dir, tmp_path, monkeypatch):
    """Register a pooling (as a fork adds one entry to POOLINGS) and nothing else: the command
    lines accept it, the encoder pools with it, the saved folder names it by its
    sentence-transformers flag (and is read back by that flag alone), and the card writes it out."""
    monkeypatch.setitem(POOLINGS, "sqrtlen", SQRT_LEN)

    # --pooling: the parsers are built after the entry was added, and read the table's keys.
    assert "sqrtlen" in POOLING_MODES
    assert build_parser().parse_args(["--pooling", "sqrtlen"]).pooling == "sqrtlen"
    eval_args = eval_script.build_parser().parse_args(["--model", "m", "--pooling", "sqrtlen"])
    assert eval_args.pooling == "sqrtlen"

    # The encoder: its pooled vectors are the entry's function of the model's token states.
    encoder = Encoder(tiny_model_dir, pooling="sqrtlen")
    features = encoder.tokenize(EXAMPLE_SENTENCES)
    encoder.eval()
    with torch.no_grad():
        tokens = encoder.model(**features).last_hidden_state  # (N, S, D)
        mask = features["attention_mask"]
        by_hand = torch.stack(
            [tokens[i, mask[i] == 1].sum(0) / mask[i].sum().sqrt() for i in range(len(mask))]
        )
        torch.testing.assert_close(encoder(features), by_hand)

    # Saved: the sentence-transformers flag of the entry, and read back from that flag alone.
    folder = tmp_path / "model"
    encoder.save(folder, {"dims": [32, 16]})
    config = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert [key for key, value in config.items() if value is True and key.startswith("pooling_mode")] == [
        "pooling_mode_mean_sqrt_len_tokens"
    ]
    assert Encoder(folder).pooling == "sqrtlen"  # from mrl_config.json

    # The card: the entry's code, and the snippet gives the encoder's vectors.
    write_card(folder)
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert SQRT_LEN.card_code in card
    snippet = re.search(r"```python\n(.*?)```", card[card.index("### transformers") :], re.S).group(1)
    namespace: dict = {}
    exec(compile(snippet, "<card snippet>", "exec"), namespace)  # noqa: S102 (the card's own code)
    raw = Encoder(folder).encode(EXAMPLE_SENTENCES, normalize=False)
    torch.testing.assert_close(namespace["embeddings"], raw, atol=1e-5, rtol=1e-5)

    # Without our metadata file, the sentence-transformers flag alone names the pooling.
    (folder / "mrl_config.json").unlink()
    assert Encoder(folder).pooling == "sqrtlen"


def test_an_unregistered_pooling_is_refused_everywhere(tiny_model_dir):
    """The same name without its entry: not a --pooling choice, not an encoder's pooling."""
    assert "sqrtlen" not in POOLING_MODES
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--pooling", "sqrtlen"])
    with pytest.raises(ValueError, match="pooling must be one of"):
        Encoder(tiny_model_dir, pooling="sqrtlen")
