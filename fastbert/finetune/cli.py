"""``fastbert finetune``: text classification (single texts or pairs), token classification (NER) and
extractive question answering, on one training loop.

    fastbert finetune --model PATH_OR_ID --train train.csv --eval dev.csv --output out/
    fastbert finetune --task token-classification --model ... --train train.conll --eval dev.conll --output ...
    fastbert finetune --task question-answering --model ... --train train.json --eval dev.json --output ...
    torchrun --nproc_per_node 8 -m fastbert.finetune --model ... (the same, data-parallel)

Writes ``out/best`` (``save_pretrained`` model + tokenizer: transformers, its pipelines, sentence-transformers
and fastbert load it), ``out/last`` (+ the training state ``--resume`` continues from) and
``out/metrics.json`` (per-step losses, per-epoch evaluations, speed; with ``--reference`` the same for
transformers' own model run through the identical loop). Every option, file and the environment are
checked before torch loads where they can; an ``out/`` holding an earlier run is refused unless
``--resume`` continues it or ``--overwrite`` replaces it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

# No torch here: it loads in run() (with transformers and the training loop), so --help and option errors
# answer at once.
from fastbert import preflight
from fastbert.cli import ArgumentParser
from fastbert.families import longest_sequence
from fastbert.finetune import checkpoint
from fastbert.finetune import tasks
from fastbert.finetune.data import Encoded

if TYPE_CHECKING:
    from fastbert.finetune.distributed import Context
    from fastbert.finetune.loop import Result, Settings
    from fastbert.finetune.tasks.base import Task


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number >= 0")
    return value


def _ratio(text: str) -> float:
    value = _non_negative_float(text)
    if value > 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not in [0, 1]")
    return value


# What a run writes into --output (the atomic folders also as checkpoint.find finds them mid-swap).
RUN_FOLDERS = ("best", "last", "reference")
RUN_FILES = ("best/", "last/", "reference/", "metrics.json")


# --task -> its own options and their defaults (None in the parser: given for another task is an error)
TASK_OPTIONS = {
    "sequence-classification": {"text_column": "text", "text_pair_column": None, "label_column": "label"},
    "token-classification": {"tokens_column": "tokens", "tags_column": "tags", "label_all_tokens": False},
    "question-answering": {"doc_stride": 128, "version_2_with_negative": False, "n_best_size": 20,
                           "max_answer_length": 30, "null_score_diff_threshold": 0.0},
}


def build_parser() -> argparse.ArgumentParser:
    """The options of ``fastbert finetune``."""
    p = ArgumentParser(prog="fastbert finetune", description="Fine-tune a BERT-family model: text classification "
                       "(CSV, TSV, JSONL), token classification (CoNLL, JSONL) or extractive question answering "
                       "(SQuAD JSON, JSONL); under torchrun, data-parallel.")
    p.add_argument("--task", choices=list(tasks.TASKS), default="sequence-classification",
                   help="what to train (default: sequence-classification)")
    p.add_argument("--model", required=True, help="a checkpoint folder or Hub id of a supported model type")
    p.add_argument("--train", required=True, help="training file: .csv, .tsv (header row) or .jsonl; "
                   ".conll/.txt or .jsonl for token classification; .json (SQuAD) or .jsonl for questions")
    p.add_argument("--eval", default=None, help="evaluation file, same format, evaluated after every epoch "
                   "(default: none; best/ is then the last epoch)")
    p.add_argument("--output", required=True, help="folder for best/, last/ and metrics.json")
    p.add_argument("--max-length", type=_positive_int, default=128, help="tokens per example or window, special "
                   "ones included")
    p.add_argument("--epochs", type=_positive_int, default=3, help="passes over the training file")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="examples (windows) per step and process")
    p.add_argument("--eval-batch-size", type=_positive_int, default=None,
                   help="examples per evaluation step and process (default: 2x --batch-size)")
    p.add_argument("--lr", type=_non_negative_float, default=5e-5, help="peak learning rate of AdamW")
    p.add_argument("--weight-decay", type=_non_negative_float, default=0.01,
                   help="AdamW's weight decay, on weight matrices only")
    p.add_argument("--warmup-ratio", type=_ratio, default=0.1, help="fraction of the steps with a rising lr")
    p.add_argument("--max-grad-norm", type=_non_negative_float, default=1.0,
                   help="gradient clipping norm; 0 turns clipping off")
    p.add_argument("--seed", type=int, default=42, help="seed of the head's initial weights, the "
                   "batch order and dropout")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true", help="bf16 autocast")
    precision.add_argument("--fp16", action="store_true", help="fp16 autocast with a gradient scaler")
    metrics = sorted({m for names in tasks.METRICS.values() for m in names})
    p.add_argument("--metric", choices=metrics, default=None, help="which evaluation picks best/, per task: " +
                   "; ".join(f"{task} {'|'.join(names)}" for task, names in tasks.METRICS.items()) +
                   " (default: the task's first)")
    p.add_argument("--save-steps", type=int, default=0, help="also write last/ every N steps; 0: once per epoch")
    earlier = p.add_mutually_exclusive_group()  # what to do with an earlier run in --output
    earlier.add_argument("--resume", action="store_true", help="continue the earlier run in OUTPUT from "
                         "OUTPUT/last")
    earlier.add_argument("--overwrite", action="store_true", help="replace the earlier run in OUTPUT (its " +
                         ", ".join(RUN_FILES[:-1]) + f" and {RUN_FILES[-1]} are deleted when training starts)")
    p.add_argument("--reference", action="store_true",
                   help="then run the identical loop on transformers' own model and compare speed")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="where to train (default: cuda when available)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")

    group = p.add_argument_group("sequence-classification")
    group.add_argument("--text-column", default=None, help="column or key of the text (default: text)")
    group.add_argument("--text-pair-column", default=None, help="second text of a pair, e.g. an NLI hypothesis "
                       "(default: single texts)")
    group.add_argument("--label-column", default=None, help="string or integer labels (default: label)")
    group = p.add_argument_group("token-classification")
    group.add_argument("--tokens-column", default=None, help="JSONL key of the words (default: tokens)")
    group.add_argument("--tags-column", default=None, help="JSONL key of the tags (default: tags)")
    group.add_argument("--label-all-tokens", action="store_const", const=True, default=None,
                       help="train on every sub-token of a word (B- becomes I- after the first), not the first only")
    group = p.add_argument_group("question-answering")
    group.add_argument("--doc-stride", type=_positive_int, default=None,
                       help="tokens by which a long context's windows overlap (default: 128, lowered with a note "
                       "when --max-length leaves less room)")
    group.add_argument("--version-2-with-negative", action="store_const", const=True, default=None,
                       help="SQuAD v2.0: some questions have no answer in their context")
    group.add_argument("--n-best-size", type=_positive_int, default=None,
                       help="start and end candidates per window (default: 20)")
    group.add_argument("--max-answer-length", type=_positive_int, default=None,
                       help="longest answer in tokens (default: 30)")
    group.add_argument("--null-score-diff-threshold", type=float, default=None,
                       help="v2.0: answer nothing when the no-answer score beats the best span's by more than "
                       "this (default: 0.0)")
    return p


def resolve_task_options(args) -> None:
    """Refuses an option of another task; fills in the task's defaults and ``--metric``'s."""
    for task, options in TASK_OPTIONS.items():
        for name, default in options.items():
            given = getattr(args, name)
            if task != args.task and given is not None:
                raise preflight.UsageError(f"--{name.replace('_', '-')} is an option of --task {task}, "
                                           f"not of --task {args.task}")
            if task == args.task and given is None:
                setattr(args, name, default)
    choices = tasks.METRICS[args.task]
    if args.metric is None:
        args.metric = choices[0]
    elif args.metric not in choices:
        raise preflight.UsageError(f"--metric {args.metric}: --task {args.task} scores {', '.join(choices)}")


class InputError(ValueError):
    """Bad input found before training: the message names the file and line, or the option."""


def earlier_run(output) -> list[str]:
    """What an earlier run left in ``output`` (names of :data:`RUN_FILES`, as found; empty for none)."""
    output = Path(output)
    found = [f"{folder.name}/" for folder in (checkpoint.find(output / name) for name in RUN_FOLDERS) if folder]
    return found + (["metrics.json"] if (output / "metrics.json").exists() else [])


def check(args) -> str:
    """Checks the options against the files, the environment and ``--output`` without loading anything
    (torch only to look for a GPU); returns the device to train on. Raises
    :class:`~fastbert.preflight.UsageError` naming the option and its value."""
    resolve_task_options(args)
    if args.resume and args.reference:
        raise preflight.UsageError("--resume and --reference do not go together: the comparison needs a whole run")
    preflight.input_file("--train", args.train)
    if args.eval:
        preflight.input_file("--eval", args.eval)
    if not args.resume:  # a resumed run loads OUTPUT/last, not --model
        preflight.model_source("--model", args.model)
    preflight.output_folder("--output", args.output)
    earlier = earlier_run(args.output)
    if args.resume and checkpoint.find(Path(args.output) / "last") is None:
        raise preflight.UsageError(f"--resume: no checkpoint in {Path(args.output) / 'last'}")
    if earlier and not (args.resume or args.overwrite):
        raise preflight.UsageError(f"--output {args.output}: holds an earlier run ({', '.join(earlier)}); "
                                   "--resume continues it, --overwrite replaces it")
    preflight.backend_name()
    device = preflight.device("--device", args.device)
    preflight.backend_runs_on(device)
    return device


def remove_earlier_run(output) -> None:
    """Deletes what an earlier run wrote into ``output`` (:data:`RUN_FILES`), and nothing else."""
    output = Path(output)
    for name in RUN_FOLDERS:
        while (folder := checkpoint.find(output / name)) is not None:
            shutil.rmtree(folder)
    (output / "metrics.json").unlink(missing_ok=True)


@dataclass
class Prepared:
    """Everything a run needs, checked before any training starts."""

    source: str  # where the model and tokenizer load from (OUTPUT/last when resuming)
    resume: Optional[Path]
    task: Task
    config_kwargs: dict  # what the model's config takes from the data (labels)
    tokenizer: object
    train: Encoded
    evaluation: Optional[Encoded]
    settings: Settings
    fingerprint: dict


def prepare(args, ctx: Context) -> Prepared:
    """Reads and checks the data, the model's limits and the resume state; raises ValueError (a
    :class:`~fastbert.finetune.data.DataError` for a file problem) with the file and line."""
    from transformers import AutoConfig

    from fastbert.finetune.loop import Settings, load_state

    task = tasks.load(args.task)(args)
    train = task.read(args.train)
    evaluation = task.read(args.eval) if args.eval else None
    resume = None
    if args.resume:
        resume = checkpoint.find(Path(args.output) / "last")
        if resume is None:
            raise ValueError(f"--resume: no checkpoint in {Path(args.output) / 'last'}")
    source = str(resume or args.model)
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as err:  # not a model, or not reachable: transformers' first line says which
        option = "--resume" if resume else "--model"
        raise ValueError(f"{option} {source}: {str(err).strip().splitlines()[0]}") from None
    if args.max_length > longest_sequence(config):
        raise ValueError(f"--max-length {args.max_length} is beyond the {longest_sequence(config)} tokens the "
                         f"model's positions take (max_position_embeddings={config.max_position_embeddings})")
    config_kwargs = task.config_kwargs(train, config, resume is not None)
    tokenizer = task.tokenizer(source)
    train_data = task.encode(train, tokenizer, args.train, config)
    eval_data = task.encode(evaluation, tokenizer, args.eval, config) if evaluation is not None else None
    if ctx.is_main:
        for note in task.notes():
            print(f"note: {note}", file=sys.stderr)
    settings = Settings(
        epochs=args.epochs, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size or 2 * args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
        max_grad_norm=args.max_grad_norm, seed=args.seed,
        precision="bf16" if args.bf16 else "fp16" if args.fp16 else "fp32", metric=args.metric,
        save_steps=max(0, args.save_steps), num_workers=max(0, args.num_workers), progress=not args.no_progress)
    # What must not change between a run and its --resume (the rest, e.g. --eval-batch-size, may).
    trajectory = ("epochs", "batch_size", "lr", "weight_decay", "warmup_ratio", "max_grad_norm", "seed", "precision",
                  "metric")
    fingerprint = {"train file sha256": hashlib.sha256(Path(args.train).read_bytes()).hexdigest(),
                   "processes": ctx.world, "max_length": args.max_length,
                   **{k: getattr(settings, k) for k in trajectory}, **task.fingerprint()}
    if resume is not None:
        load_state(resume, fingerprint)  # refuse now, not after loading the model
    return Prepared(source, resume, task, config_kwargs, tokenizer, train_data, eval_data, settings, fingerprint)


def _summary(result: Result) -> dict:
    return {"losses": result.history.losses, "evals": result.history.evals, "speed": result.speed.as_dict(),
            "steps": result.position.step}


def comparison_table(runs: dict) -> str:
    """A markdown table of time per step, tokens/s, peak memory and the last evaluation of each run."""
    names = list(runs)
    def timed(value, fmt):
        return "-" if value is None else fmt.format(value)

    rows = [("time per step", [timed(r["speed"]["seconds_per_step"], "{:.4f} s") for r in runs.values()]),
            ("tokens/s", [timed(r["speed"]["tokens_per_second"], "{:.0f}") for r in runs.values()]),
            ("peak memory", [f"{r['speed']['peak_memory_bytes'] / 2**20:.0f} MiB"
                             if r["speed"]["peak_memory_bytes"] is not None else "n/a (CPU)" for r in runs.values()]),
            ("final training loss", [f"{r['losses'][-1]:.4f}" if r["losses"] else "-" for r in runs.values()])]
    if all(r["evals"] for r in runs.values()):
        last = next(iter(runs.values()))["evals"][-1]
        for key in (k for k, v in last.items() if isinstance(v, float)):
            rows.append((f"eval {key}", [f"{r['evals'][-1][key]:.4f}" for r in runs.values()]))
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    a, b = (runs[n]["speed"]["seconds_per_step"] for n in names) if len(names) == 2 else (None, None)
    if a and b:
        lines.append(f"\n{names[0]} is {b / a:.2f}x as fast per step as {names[1]}.")
    return "\n".join(lines)


def write_record(output: Path, record: dict, reference: bool) -> None:
    """Writes ``output/metrics.json``, prints the side-by-side table (with ``--reference``) and where the
    best model is (process 0, at the end of a run)."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.json").write_text(json.dumps(record, indent=2))
    if reference:
        print(comparison_table(record["runs"]))
    print(f"best model: {output / 'best'}")


def run(args) -> dict:
    """Trains as ``args`` say; returns what metrics.json holds. Raises :class:`InputError` for bad input,
    found before training (options, files and the environment before torch loads where it can)."""
    try:
        device = check(args)
    except ValueError as err:
        raise InputError(str(err)) from err
    import torch
    import transformers

    import fastbert
    from fastbert.finetune import distributed
    from fastbert.finetune.loop import FineTuner

    ctx = distributed.setup(device)
    try:
        try:
            prepared = prepare(args, ctx)
            torch.manual_seed(args.seed)  # the new classifier's initial weights: the same in every process
            model = getattr(fastbert, prepared.task.auto_class).from_pretrained(
                prepared.source, ignore_mismatched_sizes=prepared.resume is None,
                **prepared.config_kwargs).to(ctx.device)
        except ValueError as err:  # a data problem, or a checkpoint fastbert cannot run
            raise InputError(str(err)) from err
        output = Path(args.output)
        if args.overwrite and ctx.is_main:
            remove_earlier_run(output)
        ctx.barrier()
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()} if args.reference else None
        runs = {}
        torch.manual_seed(args.seed + ctx.rank)  # dropout: each process its own masks
        tuner = FineTuner(model, prepared.tokenizer, prepared.train, prepared.evaluation, prepared.settings, ctx,
                          output, prepared.fingerprint, name="fastbert", task=prepared.task)
        runs["fastbert"] = _summary(tuner.run(prepared.resume))
        if args.reference:
            reference = getattr(transformers, prepared.task.auto_class).from_config(model.config).to(ctx.device)
            reference.load_state_dict(initial)
            del model, tuner
            torch.manual_seed(args.seed + ctx.rank)
            # The identical loop, checkpoints included (into OUTPUT/reference), on transformers' own model.
            runs["transformers"] = _summary(FineTuner(
                reference, prepared.tokenizer, prepared.train, prepared.evaluation, prepared.settings, ctx,
                output / "reference", prepared.fingerprint, name="transformers", task=prepared.task).run())
        labels = prepared.config_kwargs.get("id2label", {})
        record = {"runs": runs, "settings": asdict(prepared.settings), "task": args.task,
                  "labels": [labels[i] for i in sorted(labels)],
                  "processes": ctx.world, "device": str(ctx.device)}
        if ctx.is_main:
            write_record(output, record, args.reference)
        return record
    finally:
        distributed.teardown()


def main(argv=None) -> int:
    """Entry point of ``fastbert finetune`` and ``python -m fastbert.finetune``."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except InputError as err:
        print(f"fastbert finetune: error: {err}", file=sys.stderr)
        return 2
    return 0
