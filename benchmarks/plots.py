"""The tables (markdown) and PNG plots of a ``fastbert bench`` record."""

from __future__ import annotations

from pathlib import Path


def correctness_table(rows: list) -> list[str]:
    """Markdown rows: per case, backend and dtype, fastbert's error next to transformers'."""
    lines = ["| case | backend | dtype | hidden: fastbert / transformers | pooled: fastbert / transformers "
             "| gradients: fastbert / transformers |", "|---|---|---|---|---|---|"]
    keyed = {(r["case"], r["backend"], r["dtype"], r["impl"]): r for r in rows}
    for case, backend, dtype in dict.fromkeys((r["case"], r["backend"], r["dtype"]) for r in rows):
        ours, theirs = keyed[(case, backend, dtype, "fastbert")], keyed[(case, backend, dtype, "transformers")]
        cells = [f"{ours[k]:.2g} / {theirs[k]:.2g}" for k in ("hidden", "pooled", "grad")]
        lines.append(f"| {case} | {backend} | {dtype} | " + " | ".join(cells) + " |")
    return lines


def speed_table(rows: list, keys: tuple) -> list[str]:
    """Markdown rows: one per case (the values of ``keys``), one column per implementation with its time and
    speed-up. Rows from several models (a ``model`` key with more than one value) get a model column."""
    keys = case_keys(rows, keys)
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    lines = ["| " + " | ".join(keys) + " | " + " | ".join(impls) + " |",
             "|" + "---|" * (len(keys) + len(impls))]
    cases = dict.fromkeys(tuple(r[k] for k in keys) for r in rows)
    for case in cases:
        cells = []
        for impl in impls:
            r = next(r for r in rows if tuple(r[k] for k in keys) == case and r["impl"] == impl)
            cells.append(f"{r['ms']:.1f} ms ({r['speedup']:.2f}x)")
        lines.append("| " + " | ".join(str(c) for c in case) + " | " + " | ".join(cells) + " |")
    return lines


def case_keys(rows: list, keys: tuple) -> tuple:
    """``keys``, led by ``model`` when the rows come from more than one model."""
    if len({r.get("model") for r in rows}) > 1:
        return ("model", *keys)
    return tuple(keys)


def memory_table(memory: dict) -> list[str]:
    """Markdown rows of :func:`benchmarks.suite.memory_section`'s record."""
    return ["| transformers | fastbert | ratio (goal <= 0.6) |", "|---|---|---|",
            f"| {memory['transformers_bytes']:.0f} | {memory['fastbert_bytes']:.0f} | {memory['ratio']:.2f} |"]


def peak_memory_line(training_rows: list) -> list[str]:
    """One line with each training row's peak device memory (CUDA runs), or nothing."""
    peaks = [r for r in training_rows if r.get("peak_bytes")]
    if not peaks:
        return []
    return ["Peak device memory of a training step: " + ", ".join(
        f"{r['impl']} {r['lengths']} {r['peak_bytes'] / 2**20:.0f} MiB" for r in peaks)]


def markdown(record: dict) -> str:
    """The report's tables: correctness, inference, training step, memory."""
    env = record["environment"]
    lines = [f"# fastbert bench: {env['device_name']} ({env['device']}), torch {env['torch']}, "
             f"transformers {env['transformers']}, {env['date']}{' (quick)' if record['quick'] else ''}", "",
             *([f"Model: {record['model']}", ""] if record.get("model") else []),
             "## Correctness: max abs error against float64 (gradients: relative to the largest)", "",
             *correctness_table(record["correctness"]), "",
             "## Inference: time per forward (speed-up against transformers sdpa)", "",
             *([] if record.get("compiled", True) else
               ["torch.compile is left out of quick runs on the CPU (minutes of compiling per graph).", ""]),
             *speed_table(record["inference"], ("batch", "max_len", "lengths")), "",
             "## Training step: forward, backward, AdamW at BERT-base geometry", "",
             *speed_table(record["training"], ("layers", "batch", "max_len", "lengths")), "",
             "## Memory: bytes kept for backward per token and layer (BERT-base geometry, bf16, dropout on)", "",
             *memory_table(record["memory"]), ""]
    peaks = peak_memory_line(record["training"])
    if peaks:
        lines += [*peaks, ""]
    for name, kernel in record.get("kernels", {}).items():
        lines += [f"## Kernel: {name} ({kernel['device']})", "", *kernel_table(kernel), ""]
    return "\n".join(lines)


def kernel_table(kernel: dict) -> list[str]:
    """A kernel benchmark's rows as they were recorded (every figure, one column each)."""
    rows = kernel["results"]
    keys = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    return lines


def write_plots(record: dict, folder: Path) -> list[Path]:
    """``speedup.png`` (inference speed-up against transformers sdpa per case) and ``correctness.png``
    (fastbert's error next to transformers' per case and dtype); returns their paths."""
    folder = Path(folder)
    return [speedup_plot(record["inference"], f"inference, {record['environment']['device_name']}",
                         folder / "speedup.png"),
            correctness_plot(record["correctness"], folder / "correctness.png")]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def speedup_plot(rows: list, title: str, path: Path) -> Path:
    """Bars of each implementation's speed-up against transformers sdpa per inference case, into ``path``."""
    plt = _pyplot()
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    keys = case_keys(rows, ("batch", "max_len", "lengths"))
    cases = list(dict.fromkeys(tuple(r[k] for k in keys) for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(cases)), 4))
    width = 0.8 / len(impls)
    for i, impl in enumerate(impls):
        values = [next(r["speedup"] for r in rows if tuple(r[k] for k in keys) == c and r["impl"] == impl)
                  for c in cases]
        ax.bar([x + i * width for x in range(len(cases))], values, width, label=impl)
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(cases))])
    ax.set_xticklabels([_case_label(dict(zip(keys, c))) for c in cases], fontsize=7)
    ax.set_ylabel("speed-up vs transformers sdpa")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _case_label(case: dict) -> str:
    label = f"b{case['batch']} L{case['max_len']}\n{case['lengths']}"
    return f"{case['model']}\n{label}" if "model" in case else label


def correctness_plot(rows: list, path: Path) -> Path:
    """Bars (log scale) of fastbert's and transformers' max error of the hidden states against float64, per
    case, backend and dtype, into ``path``."""
    plt = _pyplot()
    groups = list(dict.fromkeys((r["case"], r["backend"], r["dtype"]) for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups)), 4))
    for i, impl in enumerate(("fastbert", "transformers")):
        values = [next(r["hidden"] for r in rows if (r["case"], r["backend"], r["dtype"]) == g and r["impl"] == impl)
                  for g in groups]
        ax.bar([x + i * 0.4 for x in range(len(groups))], values, 0.4, label=impl)
    ax.set_yscale("log")
    ax.set_xticks([x + 0.2 for x in range(len(groups))])
    ax.set_xticklabels([f"{c}\n{b} {d}" for c, b, d in groups], fontsize=7)
    ax.set_ylabel("max abs error of hidden states vs float64")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
