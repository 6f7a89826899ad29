"""mrl: Matryoshka sentence embeddings in plain PyTorch."""

__version__ = "0.1.0"
