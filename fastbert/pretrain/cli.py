"""``fastbert pretrain``: masked-LM pretraining, from scratch or continued on a domain corpus.

    fastbert pretrain --model DIR --train corpus.txt [--eval held-out.txt] --output out/
    fastbert pretrain --config config.json --tokenizer DIR --train ... --output ...   (from scratch)
    torchrun --nproc_per_node 8 -m fastbert.pretrain ... (the same, data-parallel)

The corpus is tokenized once into a memory-mapped cache (``--cache-dir``, default OUTPUT/cache) and packed:
several documents share a row of ``--max-length`` tokens, each attending only to itself, so there is no
padding. Masks are drawn anew each epoch; the masked-LM head runs on the masked positions only. Training
runs on fastbert's one loop (``fastbert finetune``'s): AdamW or LAMB, warmup then linear or cosine decay,
``--max-steps``, gradient accumulation, autocast, clipping, evaluation every ``--eval-steps`` (loss,
accuracy, perplexity), atomic checkpoints and exact ``--resume``, torchrun DDP, and ``--reference``.
With ``--nsp``, next-sentence prediction too (BERT's ``BertForPreTraining``; segment pairs, no packing).
Writes ``out/best`` and ``out/last`` (``save_pretrained`` masked-LM model + tokenizer: transformers,
``pipeline("fill-mask")`` and ``fastbert finetune --model`` load them) and ``out/metrics.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import asdict
from pathlib import Path

from fastbert import preflight
from fastbert.cli import ArgumentParser
from fastbert.finetune import checkpoint
from fastbert.finetune.cli import (InputError, _non_negative_float, _positive_int, _ratio, _summary, earlier_run,
                                   remove_earlier_run, write_record)


def _open_ratio(text: str) -> float:
    value = _ratio(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not strictly between 0 and 1")
    return value


def build_parser():
    """The options of ``fastbert pretrain`` (the training ones named as ``fastbert finetune``'s)."""
    p = ArgumentParser(prog="fastbert pretrain", description="Masked-LM pretraining of a BERT-family model, from "
                       "scratch or continued on your corpus; under torchrun, data-parallel.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a checkpoint folder or Hub id to continue pretraining (default: none; "
                        "--model or --config)")
    source.add_argument("--config", help="a config.json to pretrain from scratch, with --tokenizer (default: none; "
                        "--model or --config)")
    p.add_argument("--tokenizer", default=None, help="the tokenizer's folder (default: --model's)")
    p.add_argument("--train", nargs="+", required=True, help="corpus files: plain text (documents separated by "
                   "blank lines) or .jsonl")
    p.add_argument("--eval", nargs="+", default=None, help="held-out files, same format, for loss and perplexity "
                   "(default: none)")
    p.add_argument("--output", required=True, help="folder for best/, last/, metrics.json and the corpus cache")
    p.add_argument("--text-field", default=None, help="JSONL key of the text (default: text)")
    p.add_argument("--line-per-document", action="store_true", help="plain text: each line is a document")
    p.add_argument("--cache-dir", default=None, help="where the tokenized corpus is kept (default: OUTPUT/cache)")
    p.add_argument("--max-length", type=_positive_int, default=128, help="tokens per packed row")
    p.add_argument("--mlm-probability", type=_open_ratio, default=0.15, help="share of tokens masked")
    p.add_argument("--whole-word-mask", action="store_true", help="mask whole words, not single word pieces")
    p.add_argument("--nsp", action="store_true", help="also next-sentence prediction (BERT's BertForPreTraining "
                   "head): segment pairs, half of the second segments from another document; no packing")
    p.add_argument("--epochs", type=_positive_int, default=1, help="passes over the corpus (an upper bound with "
                   "--max-steps)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many optimizer steps (default: 0, "
                   "the epochs decide)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="rows per step and process")
    p.add_argument("--grad-accum", type=_positive_int, default=1, help="micro-batches per step (the batch's rows "
                   "split in that many)")
    p.add_argument("--eval-batch-size", type=_positive_int, default=None,
                   help="rows per evaluation step and process (default: 2x --batch-size)")
    p.add_argument("--optimizer", choices=["adamw", "lamb"], default="adamw", help="AdamW (fused) or LAMB")
    p.add_argument("--schedule", choices=["linear", "cosine"], default="linear", help="the decay after warmup")
    p.add_argument("--lr", type=_non_negative_float, default=1e-4, help="peak learning rate")
    p.add_argument("--weight-decay", type=_non_negative_float, default=0.01, help="on weight matrices only")
    p.add_argument("--warmup-ratio", type=_ratio, default=0.1, help="fraction of the steps with a rising lr")
    p.add_argument("--max-grad-norm", type=_non_negative_float, default=1.0,
                   help="gradient clipping norm; 0 turns clipping off")
    p.add_argument("--seed", type=int, default=42, help="seed of new weights, the row order, masks and dropout")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true", help="bf16 autocast")
    precision.add_argument("--fp16", action="store_true", help="fp16 autocast with a gradient scaler")
    p.add_argument("--eval-steps", type=int, default=0, help="also evaluate every N steps (default: 0, after "
                   "every epoch)")
    p.add_argument("--save-steps", type=int, default=0, help="also write last/ every N steps (default: 0, once "
                   "per epoch)")
    earlier = p.add_mutually_exclusive_group()
    earlier.add_argument("--resume", action="store_true", help="continue the earlier run in OUTPUT from OUTPUT/last")
    earlier.add_argument("--overwrite", action="store_true", help="replace the earlier run in OUTPUT")
    p.add_argument("--reference", action="store_true", help="then run transformers' own model on the same batches "
                   "and masks, and compare step time and tokens/s")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="where to train (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or evaluation lines")
    return p


def check(args) -> str:
    """The options against the files, the environment and ``--output``, before torch loads; returns the device."""
    if args.resume and args.reference:
        raise preflight.UsageError("--resume and --reference do not go together: the comparison needs a whole run")
    if args.max_steps < 0 or args.eval_steps < 0 or args.save_steps < 0:
        raise preflight.UsageError("--max-steps, --eval-steps and --save-steps must be >= 0")
    for option, files in (("--train", args.train), ("--eval", args.eval or [])):
        for path in files:
            preflight.input_file(option, path)
    if args.config is not None:
        preflight.input_file("--config", args.config)
        if args.tokenizer is None:
            raise preflight.UsageError("--config builds a new model: --tokenizer names its tokenizer")
    if args.tokenizer is not None:
        preflight.model_source("--tokenizer", args.tokenizer)
    if args.model is not None and not args.resume:
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


def _fingerprint(paths: list) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes() if Path(path).stat().st_size < 2**26 else
                      f"{Path(path).stat().st_size}|{Path(path).stat().st_mtime_ns}".encode())
    return digest.hexdigest()


def run(args) -> dict:
    """Pretrains as ``args`` say; returns what metrics.json holds. Raises :class:`InputError` for bad input,
    found before training."""
    try:
        device = check(args)
    except ValueError as err:
        raise InputError(str(err)) from err
    import torch
    import transformers

    import fastbert
    from fastbert.families import longest_sequence
    from fastbert.finetune import distributed
    from fastbert.finetune.loop import FineTuner, Settings, load_state
    from fastbert.pretrain.corpus import build_corpus
    from fastbert.pretrain.nsp import NextSentencePrediction, PreTrainingObjective, cut_into_chunks
    from fastbert.pretrain.rows import pack_documents
    from fastbert.pretrain.task import MaskedLM, MaskedLMObjective

    ctx = distributed.setup(device)
    try:
        output = Path(args.output)
        resume = checkpoint.find(output / "last") if args.resume else None
        try:
            source = str(resume) if resume is not None else args.model
            config = (transformers.AutoConfig.from_pretrained(source) if source is not None else
                      transformers.AutoConfig.from_pretrained(args.config))
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(resume) if resume is not None else
                                                                   args.tokenizer or args.model)
            if not tokenizer.is_fast:
                raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: pretraining needs its word "
                                 "ids (whole-word masking) and batch speed")
            if tokenizer.mask_token_id is None:
                raise ValueError(f"the tokenizer {type(tokenizer).__name__} has no mask token: masked-LM "
                                 "pretraining needs one")
            if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
                raise ValueError("the tokenizer has no CLS and SEP tokens to frame each document")
            if args.max_length > longest_sequence(config):
                raise ValueError(f"--max-length {args.max_length} is beyond the {longest_sequence(config)} tokens "
                                 f"the model's positions take (max_position_embeddings="
                                 f"{config.max_position_embeddings})")
            if len(tokenizer) > config.vocab_size:
                raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, the model's vocabulary "
                                 f"{config.vocab_size} (config.vocab_size)")
            cache = Path(args.cache_dir) if args.cache_dir else output / "cache"

            def corpora():
                return [build_corpus(files, tokenizer, cache, args.text_field, args.line_per_document)
                        if files else None for files in (args.train, args.eval)]

            failed = None
            if ctx.is_main:  # one process builds the cache (or finds the input bad), then the others open it
                try:
                    train_corpus, eval_corpus = corpora()
                except ValueError as err:
                    failed = str(err)
            failed = ctx.gather(failed)[0]
            if failed is not None:
                raise ValueError(failed)
            if not ctx.is_main:
                train_corpus, eval_corpus = corpora()
            if args.nsp and config.model_type != "bert":
                raise ValueError(f"--nsp needs a BERT model (BertForPreTraining's next-sentence head); this one is "
                                 f"{config.model_type!r}")
            if args.nsp and args.whole_word_mask:
                raise ValueError("--nsp masks single word pieces: --whole-word-mask does not go with it")
            layout = cut_into_chunks if args.nsp else pack_documents
            train = layout(train_corpus, args.max_length, tokenizer.cls_token_id, tokenizer.sep_token_id)
            evaluation = (layout(eval_corpus, args.max_length, tokenizer.cls_token_id, tokenizer.sep_token_id)
                          if eval_corpus is not None else None)
            settings = Settings(
                epochs=args.epochs, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size or
                2 * args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
                max_grad_norm=args.max_grad_norm, seed=args.seed,
                precision="bf16" if args.bf16 else "fp16" if args.fp16 else "fp32", metric="loss",
                save_steps=args.save_steps, progress=not args.no_progress, max_steps=args.max_steps,
                eval_steps=args.eval_steps, grad_accum=args.grad_accum, optimizer=args.optimizer,
                schedule=args.schedule)
            task = (NextSentencePrediction if args.nsp else MaskedLM)(
                tokenizer.mask_token_id, config.vocab_size, args.mlm_probability, args.whole_word_mask, args.seed,
                tokenizer.pad_token_id or 0)
            trajectory = ("epochs", "batch_size", "lr", "weight_decay", "warmup_ratio", "max_grad_norm", "seed",
                          "precision", "max_steps", "grad_accum", "optimizer", "schedule")
            fingerprint = {"train files sha256": _fingerprint(args.train), "processes": ctx.world,
                           "max_length": args.max_length, "corpus cache": train_corpus.folder.name,
                           **{k: getattr(settings, k) for k in trajectory}, **task.fingerprint()}
            if resume is not None:
                load_state(resume, fingerprint)
            torch.manual_seed(args.seed)
            auto = getattr(fastbert, task.auto_class)
            model = auto.from_pretrained(source) if source is not None else auto.from_config(config)
        except ValueError as err:  # a corpus problem (DataError: file:line), or a model fastbert cannot run
            raise InputError(str(err)) from err
        model = model.to(ctx.device)
        if args.overwrite and ctx.is_main:
            remove_earlier_run(output)
        ctx.barrier()
        if ctx.is_main:
            print(f"corpus: {len(train_corpus)} documents, {train_corpus.num_tokens} tokens in {len(train)} "
                  f"{'segment pairs' if args.nsp else 'rows'} of at most {args.max_length}", file=sys.stderr)
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()} if args.reference else None
        runs = {}
        torch.manual_seed(args.seed + ctx.rank)
        objective = PreTrainingObjective if args.nsp else MaskedLMObjective
        tuner = FineTuner(objective(model), tokenizer, train, evaluation, settings, ctx, output,
                          fingerprint, name="fastbert", task=task)
        runs["fastbert"] = _summary(tuner.run(resume))
        if args.reference:
            reference = getattr(transformers, task.auto_class).from_config(model.config).to(ctx.device)
            reference.load_state_dict(initial)
            del model, tuner
            torch.manual_seed(args.seed + ctx.rank)
            runs["transformers"] = _summary(FineTuner(
                objective(reference, reference=True), tokenizer, train, evaluation, settings, ctx,
                output / "reference", fingerprint, name="transformers", task=task).run())
        record = {"runs": runs, "settings": asdict(settings), "task": task.name, "processes": ctx.world,
                  "device": str(ctx.device), "corpus": {"documents": len(train_corpus),
                                                        "tokens": train_corpus.num_tokens, "rows": len(train)}}
        if ctx.is_main:
            write_record(output, record, args.reference)
        return record
    finally:
        distributed.teardown()


def main(argv=None) -> int:
    """Entry point of ``fastbert pretrain`` and ``python -m fastbert.pretrain``."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except InputError as err:
        print(f"fastbert pretrain: error: {err}", file=sys.stderr)
        return 2
    return 0
