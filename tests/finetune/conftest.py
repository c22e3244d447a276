"""Fixtures of the fine-tuning tests: small checkpoints with the real tokenizer, the sample dataset."""

from pathlib import Path

import pytest
import torch
import transformers

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sentiment"


def save_tiny_checkpoint(folder: Path, tokenizer, dropout: float) -> str:
    """A random 2-layer BERT (hidden 32) with the real vocabulary, saved with its tokenizer."""
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=72, max_position_embeddings=64,
                                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer) -> str:
    """No dropout: runs are comparable step by step."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), tokenizer, 0.0)


@pytest.fixture(scope="session")
def tiny_dropout_checkpoint(tmp_path_factory, tokenizer) -> str:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-dropout"), tokenizer, 0.1)


@pytest.fixture(scope="session")
def sample_train() -> str:
    return str(SAMPLE / "train.csv")


@pytest.fixture(scope="session")
def sample_dev() -> str:
    return str(SAMPLE / "dev.csv")
