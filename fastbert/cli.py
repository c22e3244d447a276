"""The fastbert command line: fused-kernel BERT encoders, their checks, benchmarks and fine-tuning."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys

from fastbert import preflight


class HelpFormatter(argparse.HelpFormatter):
    """Help that ends each option's line with its default, except for flags, options without one (None)
    and options whose help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.nargs == 0 or action.required or action.default in (None, argparse.SUPPRESS)
                or "default" in text):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class ArgumentParser(argparse.ArgumentParser):
    """The commands' parser: :class:`HelpFormatter`, and errors in one line on stderr (exit status 2)."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _info(_args) -> int:
    preflight.backend_name()  # an unknown FASTBERT_BACKEND is an error, not a traceback
    import torch
    import transformers

    import fastbert
    from fastbert import ops, routing

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:  # triton is Linux-only
        triton_version = "not installed"
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "none"
    print(f"fastbert      {fastbert.__version__}")
    print(f"python        {platform.python_version()}")
    print(f"torch         {torch.__version__}")
    print(f"triton        {triton_version}")
    print(f"transformers  {transformers.__version__}")
    print(f"gpu           {gpu}")
    print(f"backend       FASTBERT_BACKEND={ops.backend_name()} -> {ops.resolve_backend(device)} on {device.type}")
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(0)
        where = f"{gpu} (sm_{capability[0]}{capability[1]})"
        bf16 = torch.cuda.is_bf16_supported(including_emulation=True)
    else:
        capability, where, bf16 = None, "cpu", True
    print(f"\nroutes of the fused ops on {where}, FASTBERT_BACKEND={ops.backend_name()}:")
    print(routing.routing_table(capability, ops.backend_name(), bf16))
    return 0


ALL_ARCHS = (75, 80, 86, 89, 90, 100, 120)  # fastbert.check_kernels.ALL_ARCHS, without importing torch


def _archs(text: str) -> tuple:
    if text.strip() == "all":
        return ALL_ARCHS
    try:
        archs = tuple(dict.fromkeys(int(a) for a in text.split(",") if a.strip()))
    except ValueError:
        archs = ()
    if not archs or any(a not in ALL_ARCHS for a in archs):
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list of {', '.join(map(str, ALL_ARCHS))}"
                                         " or 'all'")
    return archs


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _check_kernels(args) -> int:
    preflight.module_installed("triton", "check-kernels compiles the kernels with it")
    if "TRITON_INTERPRET" in os.environ:
        # @triton.jit made interpreter objects in this process; compile in one without TRITON_INTERPRET.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        done = subprocess.run([sys.executable, "-m", "fastbert.cli", *args.argv], env=env,
                              stdout=subprocess.PIPE, text=True)
        sys.stdout.write(done.stdout)
        return done.returncode
    from fastbert.check_kernels import check_kernels, format_counts, format_report, supported_archs

    missing = [a for a in args.arch if a not in supported_archs(args.arch)]
    if missing:
        import triton

        print(f"fastbert check-kernels: triton {triton.__version__} cannot compile for "
              f"{', '.join(f'sm_{a}' for a in missing)}", file=sys.stderr)
        return 2

    def progress(row, done, total):
        result = "OK" if row.ok else f"FAIL({row.error.splitlines()[0]})"
        print(f"[{done}/{total}] {row.kernel} {row.label} sm_{row.arch}: {result} ({row.seconds:.1f}s)",
              file=sys.stderr, flush=True)

    rows = check_kernels(args.arch, args.jobs, args.match, on_row=progress)
    if not rows:
        which = f" matching {args.match!r}" if args.match else ""
        print(f"no Triton kernel variants{which} are registered for AOT checks "
              "(see fastbert.check_kernels.register_aot)")
        return 2
    print(format_counts(rows) if args.counts else format_report(rows))
    return 0 if all(r.ok for r in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    """The ``fastbert`` parser; ``bench`` and ``finetune`` parse their own options (:func:`parsers`)."""
    from fastbert import __version__

    parser = ArgumentParser(prog="fastbert", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fastbert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, device and the backend the fused ops will use").set_defaults(run=_info)
    check = sub.add_parser("check-kernels", help="compile every registered Triton kernel for GPU architectures "
                           "without a GPU and report registers, spills, shared memory and tensor cores")
    check.add_argument("--arch", type=_archs, default=(80, 90),
                       help=f"comma-separated compute capabilities of {', '.join(map(str, ALL_ARCHS))}, or 'all' "
                       "(default: 80,90)")
    check.add_argument("--jobs", type=_positive, default=None, help="compile processes (default: CPU count)")
    check.add_argument("--match", default=None, help="only variants whose op, kernel or label contains this "
                       "(default: every variant)")
    check.add_argument("--counts", action="store_true", help="print only each variant's main-loop instruction "
                       "and tensor-core instruction counts, as benchmarks/results/instruction-counts-*.txt keep them")
    check.set_defaults(run=_check_kernels)
    sub.add_parser("bench", add_help=False, help="correctness and speed against transformers and "
                   "torch.compile on this device: tables, results.json and plots (--help for options)")
    sub.add_parser("embed", add_help=False, help="embed or score a whole corpus (texts, JSONL, CSV, Parquet), on "
                   "one device or under torchrun (--help for options)")
    sub.add_parser("pretrain", add_help=False, help="masked-LM pretraining, from scratch or continued on your "
                   "corpus, on one device or under torchrun (--help for options)")
    sub.add_parser("finetune", add_help=False, help="fine-tune a text classifier, a tagger (NER) or an extractive "
                   "question-answering model, on one device or under torchrun (--help for options)")
    return parser


def parsers() -> dict:
    """prog -> parser of every command: ``fastbert``, its subcommands, and the parsers of ``bench`` and
    ``finetune`` (in place of their stand-ins); none of them imports torch."""
    from fastbert.benchmarks.command import build_parser as bench_parser
    from fastbert.finetune.cli import build_parser as finetune_parser
    from fastbert.embed.cli import build_parser as embed_parser
    from fastbert.pretrain.cli import build_parser as pretrain_parser

    top = build_parser()
    subcommands = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    found = {"fastbert": top, **{p.prog: p for p in subcommands.choices.values()}}
    for parser in (bench_parser(), finetune_parser(), pretrain_parser(), embed_parser()):
        found[parser.prog] = parser
    return found


def main(argv=None) -> int:
    """Entry point of the ``fastbert`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its own parser (benchmarks/command.py) takes every option after it
        from fastbert.benchmarks.command import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["finetune"]:  # its own parser (fastbert/finetune/cli.py)
        from fastbert.finetune.cli import main as finetune_main

        return finetune_main(argv[1:])
    if argv[:1] == ["embed"]:  # its own parser (fastbert/embed/cli.py)
        from fastbert.embed.cli import main as embed_main

        return embed_main(argv[1:])
    if argv[:1] == ["pretrain"]:  # its own parser (fastbert/pretrain/cli.py)
        from fastbert.pretrain.cli import main as pretrain_main

        return pretrain_main(argv[1:])
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.run(args)
    except preflight.UsageError as err:
        print(f"fastbert {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
