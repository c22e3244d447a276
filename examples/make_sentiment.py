"""Writes the sample dataset of ``examples/sentiment/`` (review sentences, 3 string labels), deterministically.

    python examples/make_sentiment.py [--out DIR]   # rewrites train.csv (480 rows) and dev.csv (120 rows)

No download: sentences are drawn from the word lists below with a fixed seed. The task is easy on
purpose (the README example and the tests fine-tune on it in seconds) but not trivial: the label depends
on the opinion phrase, never on the subject, and one in six sentences has a negation that flips it.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

SUBJECTS = ["the movie", "this phone", "the service", "our hotel room", "the new album", "that restaurant",
            "the delivery", "this laptop", "the concert", "the customer support", "the coffee", "the app",
            "the train ride", "this novel", "the museum tour", "the headphones"]
POSITIVE = ["was wonderful", "exceeded every expectation", "made my day", "is worth every penny",
            "was a real pleasure", "works beautifully", "felt warm and friendly", "was excellent"]
NEGATIVE = ["was a waste of money", "broke after a week", "was painfully slow", "ruined the evening",
            "felt cold and rude", "is a total disappointment", "was awful", "kept crashing"]
NEUTRAL = ["arrived on a tuesday", "comes in a blue box", "was about two hours long", "is sold in most shops",
           "was on the second floor", "has a printed manual", "started at eight", "was described in the email"]
OPENERS = ["", "honestly, ", "to be fair, ", "as expected, ", "well, ", "I think ", "my friend said "]
ENDINGS = [".", "!", ", nothing more to say.", " this time.", ", as far as I can tell."]
NEGATED = {"positive": ("was not wonderful", "negative"), "negative": ("was not awful", "positive")}


def sentence(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(["positive", "negative", "neutral"])
    phrase = rng.choice({"positive": POSITIVE, "negative": NEGATIVE, "neutral": NEUTRAL}[label])
    if label != "neutral" and rng.random() < 1 / 6:
        phrase, label = NEGATED[label]
    text = f"{rng.choice(OPENERS)}{rng.choice(SUBJECTS)} {phrase}{rng.choice(ENDINGS)}"
    return text[0].upper() + text[1:], label


def write(path: Path, rows: int, rng: random.Random) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for _ in range(rows):
            writer.writerow(sentence(rng))


def main(argv=None) -> int:
    """Writes ``train.csv`` and ``dev.csv`` into ``--out`` (default: ``examples/sentiment/``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "sentiment",
                        help="the folder to write train.csv and dev.csv into (default: examples/sentiment)")
    folder = parser.parse_args(argv).out
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    write(folder / "train.csv", 480, rng)
    write(folder / "dev.csv", 120, rng)
    print(f"wrote {folder}/train.csv and dev.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
