"""``fastbert embed``: embed or score a whole corpus, on one device or many.

    fastbert embed --model DIR --input texts.txt --output embeddings.npy
    fastbert embed --model CLASSIFIER --task classify --input rows.csv --text-column review --output scores.jsonl
    torchrun --nproc_per_node 8 -m fastbert.embed ...   (each process takes its share of the chunks)

Texts are sorted by length, batched by a token budget (``--max-tokens-per-batch``) and run padding-free on
fastbert's kernels; tokenization runs in a background thread ahead of the model; each chunk of
``--chunk-texts`` texts is written to ``OUTPUT.parts/`` when done, so a run that stops resumes from its
finished chunks when started again with the same options, and the results are merged in input order.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from fastbert import preflight
from fastbert.cli import ArgumentParser
from fastbert.finetune.cli import InputError, _positive_int

OUTPUTS = (".npy", ".jsonl", ".parquet")


def build_parser() -> argparse.ArgumentParser:
    """The options of ``fastbert embed``."""
    p = ArgumentParser(prog="fastbert embed", description="Embed or score a corpus with a sentence-transformers "
                       "model, a transformers encoder or a classifier; under torchrun, on many devices.")
    p.add_argument("--model", required=True, help="a sentence-transformers folder, a transformers encoder or a "
                   "sequence classifier (folder or Hub id)")
    p.add_argument("--input", nargs="+", required=True, help="texts: .txt (one a line), .jsonl, .csv, .tsv or "
                   ".parquet")
    p.add_argument("--output", required=True, help=".npy (float32 rows in input order), .jsonl or .parquet (with "
                   "an id column)")
    p.add_argument("--task", choices=["embed", "classify"], default="embed",
                   help="embeddings, or a classifier's label and scores")
    p.add_argument("--text-column", default="text", help="column or key of the text")
    p.add_argument("--pair-column", default=None, help="a second text, for classifiers and cross-encoders "
                   "(default: single texts)")
    p.add_argument("--id-column", default=None, help="the id written with each result (default: the row number)")
    p.add_argument("--pooling", choices=["mean", "cls", "max"], default=None,
                   help="pooling over a plain encoder's tokens (default: a sentence-transformers folder's own; "
                   "mean for others)")
    p.add_argument("--normalize", action="store_true", help="L2-normalize the embeddings")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="of the .npy rows")
    p.add_argument("--max-length", type=_positive_int, default=None,
                   help="truncate texts to this many tokens (default: the model's maximum)")
    p.add_argument("--max-tokens-per-batch", type=_positive_int, default=None,
                   help="padded tokens (rows x longest) per model call (default: 4096 on a CPU, where larger "
                   "batches run slower, 32768 on a GPU)")
    p.add_argument("--chunk-texts", type=_positive_int, default=4096,
                   help="texts per chunk: the unit that is written, resumed and shared between processes")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="where to run (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output (and its unfinished parts)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def check(args) -> str:
    """The options against the files and the environment, before torch loads; returns the device."""
    for path in args.input:
        preflight.input_file("--input", path)
    output = Path(args.output)
    if output.suffix.lower() not in OUTPUTS:
        raise preflight.UsageError(f"--output {output}: write .npy, .jsonl or .parquet, not {output.suffix!r}")
    if args.dtype == "float16" and output.suffix.lower() != ".npy":
        raise preflight.UsageError("--dtype float16 is for .npy outputs")
    if args.task == "classify" and (args.pooling or args.normalize):
        raise preflight.UsageError("--pooling and --normalize are for --task embed")
    if output.suffix.lower() == ".parquet":
        preflight.module_installed("pyarrow", "writing Parquet")
    preflight.output_folder("--output", output.parent if str(output.parent) else ".")
    if output.exists() and not args.overwrite:
        raise preflight.UsageError(f"--output {output}: exists; --overwrite replaces it")
    preflight.backend_name()
    device = preflight.device("--device", args.device)
    preflight.backend_runs_on(device)
    return device


def fingerprint(args) -> dict:
    """What makes an unfinished run's parts the ones this run would write."""
    files = [{"path": str(Path(p).resolve()), "size": Path(p).stat().st_size, "mtime": Path(p).stat().st_mtime_ns}
             for p in args.input]
    options = ("model", "task", "text_column", "pair_column", "pooling", "normalize", "max_length", "chunk_texts")
    return {"inputs": files, **{k: getattr(args, k) for k in options}}


def run(args) -> dict:
    """Embeds or scores as ``args`` say; returns a summary. Raises :class:`InputError` for bad input, found
    before any model runs."""
    try:
        device = check(args)
        from fastbert.embed.inputs import read_texts

        texts = read_texts(args.input, args.text_column, args.pair_column, args.id_column)
    except ValueError as err:
        raise InputError(str(err)) from err
    import numpy as np

    from fastbert.embed.encoders import load_encoder
    from fastbert.embed.run import Progress, default_batch_tokens, merge, plan_chunks, run_chunks, write_output
    from fastbert.finetune import distributed

    ctx = distributed.setup(device)
    try:
        output = Path(args.output)
        parts = output.with_name(output.name + ".parts")
        stamp = fingerprint(args)
        refused = None
        if ctx.is_main:  # every process learns whether process 0 refused, so none waits for the others
            if args.overwrite:
                shutil.rmtree(parts, ignore_errors=True)
            if (parts / "meta.json").exists() and json.loads((parts / "meta.json").read_text()) != stamp:
                refused = (f"--output {output}: {parts} holds an unfinished run with other inputs or options; "
                           "--overwrite starts over")
            else:
                parts.mkdir(parents=True, exist_ok=True)
                (parts / "meta.json").write_text(json.dumps(stamp, indent=2))
        refused = ctx.gather(refused)[0]
        if refused is not None:
            raise InputError(refused)
        try:
            encoder = load_encoder(args.model, args.task, args.pooling, args.normalize, ctx.device, args.max_length)
        except (OSError, ValueError) as err:
            raise InputError(f"--model {args.model}: {str(err).strip().splitlines()[0]}") from None
        if texts.pairs is not None and args.task == "embed" and not hasattr(encoder, "tokenizer"):
            raise InputError("--pair-column: a sentence-transformers embedding model takes single texts")
        chunks = plan_chunks(texts, args.chunk_texts)
        mine = list(range(ctx.rank, len(chunks), ctx.world))
        done = sum((parts / f"chunk-{k:05d}.npy").exists() for k in mine)
        if done and ctx.is_main:
            print(f"note: resuming: {done} of {len(mine)} chunks of this process are done", file=sys.stderr)
        progress = Progress(sum(len(chunks[k]) for k in mine), ctx.is_main and not args.no_progress)
        started = time.perf_counter()
        budget = args.max_tokens_per_batch or default_batch_tokens(ctx.device)
        run_chunks(encoder, texts, chunks, parts, mine, budget, progress)
        progress.close()
        seconds = time.perf_counter() - started
        ctx.barrier()
        summary = {"texts": len(texts), "chunks": len(chunks), "processes": ctx.world, "seconds": seconds,
                   "tokens": progress.tokens}
        if ctx.is_main:
            results = merge(chunks, parts, len(texts), np.float16 if args.dtype == "float16" else np.float32)
            labels = encoder.labels if args.task == "classify" else None
            write_output(output, results, texts.ids, labels)
            shutil.rmtree(parts, ignore_errors=True)
            print(f"wrote {output}: {len(texts)} rows of {results.shape[1] if results.ndim > 1 else 1} "
                  f"({seconds:.1f} s, {len(texts) / max(seconds, 1e-9):.0f} texts/s on this process)",
                  file=sys.stderr)
        return summary
    finally:
        distributed.teardown()


def main(argv=None) -> int:
    """Entry point of ``fastbert embed`` and ``python -m fastbert.embed``."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except InputError as err:
        print(f"fastbert embed: error: {err}", file=sys.stderr)
        return 2
    return 0

