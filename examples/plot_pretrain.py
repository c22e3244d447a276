"""Plots a ``fastbert pretrain`` run's loss curve from its metrics.json (matplotlib, from the dev extra).

    python examples/plot_pretrain.py out/pretrain/metrics.json docs/pretrain-loss.png

Training loss per step and held-out loss at each evaluation, for fastbert and, with ``--reference``,
transformers' model on the same batches and masks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Plot a fastbert pretrain run's losses.")
    parser.add_argument("metrics", help="the run's metrics.json")
    parser.add_argument("png", help="the PNG to write")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record = json.loads(Path(args.metrics).read_text())
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for (name, run), color in zip(record["runs"].items(), ("tab:blue", "tab:orange")):
        steps = range(1, len(run["losses"]) + 1)
        ax.plot(steps, run["losses"], color=color, alpha=0.6, lw=1, label=f"{name}: training loss")
        if run["evals"]:
            ax.plot([e["step"] for e in run["evals"]], [e["loss"] for e in run["evals"]], "o-", color=color,
                    ms=4, label=f"{name}: held-out loss")
    corpus = record.get("corpus", {})
    ax.set_title(f"masked-LM loss, {corpus.get('documents', '?')} documents, {corpus.get('tokens', '?')} tokens")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per masked token (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
