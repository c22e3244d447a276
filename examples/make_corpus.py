"""Writes the sample pretraining corpus of ``examples/corpus/``, deterministically.

    python examples/make_corpus.py [--out DIR]   # rewrites train.txt (400 documents) and held-out.txt (60)

No download: short encyclopedia-like documents (blank lines between them) drawn from the word lists below
with a fixed seed. The domain is narrow on purpose, so continued masked-LM pretraining lowers the held-out
loss within minutes on a CPU: the same phrasings recur with other names, places and numbers, and a
document's later sentences repeat its subject.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

FIRST = ["Anna", "Jonas", "Maria", "Pedro", "Lena", "Tomas", "Ingrid", "Marco", "Sofia", "Karl", "Elena", "Oskar",
         "Nadia", "Viktor", "Clara", "Henrik", "Ayla", "Felix", "Greta", "Mateo"]
LAST = ["Berg", "Silva", "Novak", "Lindqvist", "Moreau", "Kowalski", "Duarte", "Hansen", "Rossi", "Weber",
        "Okafor", "Tanaka", "Petrov", "Costa", "Fischer", "Laine"]
TOWNS = ["Valmora", "Eskerby", "Tarnow Creek", "Lindholm", "Sorrento Bay", "Haverfield", "Northgate", "Kestrel Point",
         "Almsund", "Brightwater", "Ravensholm", "Port Ellis"]
RIVERS = ["Sava", "Elmer", "Tolva", "Brenn", "Aurel", "Kessa"]
FIELDS = ["chemistry", "botany", "architecture", "mathematics", "astronomy", "music", "medicine", "geology"]
INSTRUMENTS = ["violin", "cello", "piano", "flute", "guitar"]
INDUSTRIES = ["fishing", "timber", "textiles", "shipbuilding", "wine", "paper"]

PERSON = [
    "{name} was born in {town} in {year}.",
    "{first} studied {field} at the university of {town2}.",
    "In {year2}, {first} moved to {town2} and opened a small workshop.",
    "{first} is best known for work on {field} and for playing the {instrument}.",
    "Later in life {first} returned to {town} and taught {field} there.",
    "{first} died in {town2} in {year3}.",
    "A street in {town} is named after {name}.",
]
TOWN = [
    "{town} is a town on the river {river}.",
    "It has about {people} inhabitants.",
    "The economy of {town} is based on {industry} and, since {year}, on tourism.",
    "{town} was founded in {year0} as a trading post on the {river}.",
    "The old bridge over the {river} was built in {year2}.",
    "Every summer {town} holds a festival of {field}.",
    "The nearest larger town is {town2}, {distance} kilometres to the north.",
]


def document(rng: random.Random, held_out: bool) -> str:
    town, town2 = rng.sample(TOWNS, 2)
    year = rng.randint(1850, 1990)
    values = dict(first=rng.choice(FIRST), town=town, town2=town2, year=year, year0=rng.randint(1100, 1700),
                  year2=year + rng.randint(15, 30), year3=year + rng.randint(60, 95), field=rng.choice(FIELDS),
                  instrument=rng.choice(INSTRUMENTS), river=rng.choice(RIVERS), industry=rng.choice(INDUSTRIES),
                  people=f"{rng.randint(2, 90) * 1000:,}", distance=rng.randint(8, 120))
    values["name"] = f"{values['first']} {rng.choice(LAST)}"
    templates = PERSON if rng.random() < 0.5 else TOWN
    count = rng.randint(3, len(templates)) if not held_out else len(templates) - 1
    chosen = [templates[0]] + sorted(rng.sample(templates[1:], count - 1), key=templates.index)
    sentences = [t.format(**values) for t in chosen]
    lines, line = [], []
    for sentence in sentences:  # a document's sentences wrapped over lines, as text files hold them
        line.append(sentence)
        if len(" ".join(line)) > 70:
            lines.append(" ".join(line))
            line = []
    return "\n".join(lines + ([" ".join(line)] if line else []))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write the sample pretraining corpus (train.txt, held-out.txt).")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "corpus"),
                        help="folder to write into (default: examples/corpus)")
    args = parser.parse_args(argv)
    rng = random.Random(17)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, count, held_out in (("train.txt", 400, False), ("held-out.txt", 60, True)):
        (out / name).write_text("\n\n".join(document(rng, held_out) for _ in range(count)) + "\n")
        print(f"wrote {out / name} ({count} documents)")


if __name__ == "__main__":
    main()
