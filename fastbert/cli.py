"""The ``fastbert`` command line."""

from __future__ import annotations

import argparse
import platform
import sys


def _info(_args) -> int:
    import torch
    import transformers

    import fastbert
    from fastbert import ops

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
    return 0


def main(argv=None) -> int:
    """Entry point of the ``fastbert`` console script."""
    parser = argparse.ArgumentParser(prog="fastbert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, device and the backend the fused ops will use").set_defaults(run=_info)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
