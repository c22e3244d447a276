"""``fastbert bench``'s "embed a corpus" case: ``fastbert embed``'s runner against ``SentenceTransformer.encode``
on the same model and the same mixed-length texts, texts/s and their ratio, and how far apart the embeddings are.

The texts (:func:`mixed_texts`) are drawn with a fixed seed, 3 to 560 words, log-normally (median 25), so a
corpus holds many short texts and a long tail. The model is the checkpoint where one is given (a
sentence-transformers folder, such as all-MiniLM-L6-v2, runs as a ``SentenceTransformer``), else random
weights at MiniLM-L6's geometry with a word-level vocabulary of the texts' words, mean pooling and
normalization. Both sides run in float32 after a warm-up; fastbert runs :func:`fastbert.embed.run.encode_texts`
with ``fastbert embed``'s default batch budget (what the command runs, without its part files);
sentence-transformers runs ``encode`` with its default 32 texts a batch. Where sentence-transformers is not
installed, the baseline is its ``encode`` loop done with transformers: length-sorted batches of 32, padded,
mean-pooled and normalized.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

WORDS = ("the of and to in is was for on that with as by at from his an were are which this be has or had first one "
         "new after who their its also two time they been not but more other school city world river town music "
         "history university language national century people system team league").split()
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def mixed_texts(count: int, seed: int = 0) -> list[str]:
    """``count`` texts of 3 to 560 words (log-normal, median about 25), the same for the same seed."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        words = max(3, min(560, int(rng.lognormvariate(3.2, 0.8))))
        texts.append(" ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + ".")
    return texts


def random_model_folder(folder: Path, layers: int | None = None) -> Path:
    """A transformers folder at MiniLM-L6's geometry with random weights (``layers`` layers where given) and a
    WordPiece tokenizer over :data:`WORDS`, written without a download."""
    from .suite import random_geometry

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join([*SPECIAL_TOKENS, ".", *WORDS]) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab=str(vocab), do_lower_case=True, model_max_length=512)
    torch.manual_seed(0)
    config = transformers.BertConfig(**random_geometry("MiniLM-L6", layers, vocab_size=len(SPECIAL_TOKENS) + 1 +
                                                       len(WORDS)))
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _sentence_transformers():
    try:
        import sentence_transformers
        import sentence_transformers.models  # noqa: F401  (a submodule the package does not import itself)
    except ImportError:
        return None
    return sentence_transformers


def baseline(model: str, device: torch.device, max_length: int):
    """``(name, encode(texts) -> (n, dim) float32 array)``: ``SentenceTransformer.encode`` on ``model`` (its own
    modules for a sentence-transformers folder; mean pooling and normalization for a plain encoder), or
    without sentence-transformers the same loop on transformers."""
    st = _sentence_transformers()
    if st is not None:
        if (Path(model) / "modules.json").is_file():
            encoder = st.SentenceTransformer(model, device=str(device))
        else:
            word = st.models.Transformer(model, max_seq_length=max_length)
            dim = word.get_embedding_dimension() if hasattr(word, "get_embedding_dimension") else \
                word.get_word_embedding_dimension()
            encoder = st.SentenceTransformer(modules=[word, st.models.Pooling(dim, pooling_mode="mean"),
                                                      st.models.Normalize()], device=str(device))
        return "SentenceTransformer.encode", lambda texts: encoder.encode(texts, batch_size=32, convert_to_numpy=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    network = transformers.AutoModel.from_pretrained(model).to(device).eval()

    @torch.inference_mode()
    def encode(texts: list[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), network.config.hidden_size), dtype=np.float32)
        for start in range(0, len(order), 32):
            rows = order[start:start + 32]
            features = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                                 return_tensors="pt").to(device)
            hidden = network(**features).last_hidden_state
            mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[rows] = torch.nn.functional.normalize(pooled, dim=1).float().cpu().numpy()
        return out

    return "transformers, 32 length-sorted texts a batch (sentence-transformers not installed)", encode


def _timed(encode, texts: list[str], device: torch.device) -> tuple[np.ndarray, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = encode(texts)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - started


def embed_section(model_path: str | None, device: torch.device, count: int, layers: int | None = None) -> dict:
    """The case on ``count`` :func:`mixed_texts`: texts/s of fastbert and of the baseline, their ratio, the real
    and padded-to-batch tokens, and the largest difference between the two sides' embeddings."""
    from fastbert.embed.encoders import load_encoder
    from fastbert.embed.inputs import Texts
    from fastbert.embed.run import default_batch_tokens, encode_texts

    texts = mixed_texts(count)
    with tempfile.TemporaryDirectory(prefix="fastbert-bench-embed-") as scratch:
        model = model_path or str(random_model_folder(Path(scratch) / "model", layers))
        plain = not (Path(model) / "modules.json").is_file()
        if not plain and _sentence_transformers() is None:
            return {"skipped": "a sentence-transformers folder, and sentence-transformers is not installed"}
        ours = load_encoder(model, "embed", "mean" if plain else None, plain, device, None)
        name, theirs = baseline(model, device, ours.max_length)
        budget = default_batch_tokens(device)

        def fastbert_encode(batch):
            return encode_texts(ours, Texts(texts=batch, ids=list(range(len(batch)))), max_tokens=budget)

        warmup = texts if device.type == "cuda" else texts[:32]  # a GPU compiles and tunes kernels per shape
        fastbert_encode(warmup), theirs(warmup)
        want, their_s = _timed(theirs, texts, device)
        got, our_s = _timed(fastbert_encode, texts, device)
        real = int(sum(int(m.sum()) for m in _masks(ours, texts)))
    return {"model": model_path or "random MiniLM-L6 geometry (mean pooling, normalized)", "baseline": name,
            "texts": count, "tokens": real, "max_tokens_per_batch": budget,
            "fastbert_texts_per_s": count / our_s, "baseline_texts_per_s": count / their_s,
            "speedup": their_s / our_s, "max_abs_diff": float(np.abs(got - want).max())}


def _masks(encoder, texts: list[str], step: int = 512):
    """The attention masks of ``texts`` as ``encoder`` tokenizes them, ``step`` texts at a time."""
    for start in range(0, len(texts), step):
        yield encoder.tokenize(texts[start:start + step])["attention_mask"]
