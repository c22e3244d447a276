"""Writes the sample dataset of ``examples/ner/`` (CoNLL-2003 style named entities, BIO tags), deterministically.

    python examples/make_ner.py [--out DIR]   # rewrites train.conll (600 sentences) and dev.conll (150)

No download: sentences are drawn from the templates and word lists below with a fixed seed. Each token line
is ``word POS chunk NER`` (the POS and chunk columns are simple placeholders derived from a small lexicon),
each document starts with ``-DOCSTART- -X- -X- O`` and a blank line (a new document every 15 to 25
sentences), sentences are separated by blank lines, and the tags are IOB2 over PER, LOC, ORG and MISC.

The task is learnable, the entity type following from the words and their context ("X was born in Y",
"X works for Z", "the German striker X"), but not trivial: entities span up to four words ("Maria de
Souza", "Bank of New York"), several words change type with the context ("Ford" the surname, "Ford Motor
Company" the organisation; "Jordan" the person and the country; "Oxford" the city and "University of
Oxford" the organisation), sentences run from 3 to about 40 tokens, and one in forty joins several clauses
into 60 to 90 tokens, so a ``--max-length 64`` run has to split it into windows. The dev set draws from
the same lists plus, one name in four, names that never occur in train.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

FIRST = ["John", "Maria", "Ahmed", "Elena", "Peter", "Yuki", "Carlos", "Anna", "David", "Fatima", "Lars",
         "Sophie", "Ivan", "Grace", "Kenji", "Olga", "Michael", "Laura", "Pedro", "Nadia", "Thomas", "Ingrid",
         "Jordan", "Morgan", "Chelsea", "Lincoln"]
LAST = ["Smith", "Garcia", "Kowalski", "Tanaka", "Muller", "Rossi", "Johnson", "Petrov", "Okafor", "Lindqvist",
        "Dubois", "Novak", "Silva", "Haddad", "Brown", "Jensen", "Ford", "Morgan", "Wells", "Jordan", "Lincoln",
        "Washington", "Dell", "Chase", "Hilton", "Sterling", "Souza", "Berg"]
PARTICLES = ["de", "van der", "da", "von", "Al", "bin"]
LOC = ["London", "Paris", "Berlin", "Madrid", "Tokyo", "Lagos", "Cairo", "Lima", "Oslo", "Warsaw", "Moscow",
       "Sydney", "Toronto", "Chicago", "Boston", "Oxford", "Jordan", "Washington", "Lincoln", "Chelsea",
       "New York", "Los Angeles", "Buenos Aires", "Hong Kong", "San Francisco", "Rio de Janeiro", "South Africa",
       "Brazil", "Germany", "Japan", "France", "Kenya", "Canada", "the United States", "New Zealand"]
ORG = ["Acme Corp", "Ford Motor Company", "Morgan Stanley", "Wells Fargo", "Dell Technologies", "Hilton Hotels",
       "Lincoln Financial", "Washington Post", "Chase Bank", "Sterling Group", "Reuters", "Siemens", "Toyota",
       "United Nations", "European Union", "Red Cross", "University of Oxford", "Bank of New York",
       "Real Madrid", "Chelsea FC", "Boston Celtics", "Tokyo Electric", "Global Foods Inc", "Northwind Traders",
       "World Health Organization", "Greenpeace", "Interpol", "Nordic Air", "Atlas Mining", "Lagos Ports Authority"]
NATIONALITY = ["German", "French", "Japanese", "Brazilian", "Kenyan", "Canadian", "Polish", "Italian", "Russian",
               "Egyptian", "Norwegian", "Spanish", "Australian", "American", "British"]
LANGUAGE = ["English", "French", "Spanish", "Portuguese", "Japanese", "Arabic", "Russian", "Swahili", "German"]
EVENT = ["World Cup", "Olympic Games", "Nobel Prize", "Tour de France", "Champions League", "Grand Prix",
         "Super Bowl", "Venice Film Festival", "Wimbledon"]
PRODUCT = ["Boeing 747", "Windows", "iPhone", "Model T", "PlayStation", "Walkman"]

# Names the dev set may use and train never does (one name in four in dev).
UNSEEN = {
    "FIRST": ["Amara", "Bjorn", "Chiara", "Dmitri", "Esther", "Farid", "Greta", "Hiroshi"],
    "LAST": ["Achebe", "Bergstrom", "Castillo", "Delacroix", "Eriksen", "Fujimoto", "Gonzaga", "Horvath"],
    "LOC": ["Nairobi", "Santiago", "Helsinki", "Kyoto", "Cape Town", "Mexico City", "Portugal", "Vietnam"],
    "ORG": ["Baltic Shipping", "Ford Foundation", "Orion Software", "Pacific Rail", "University of Lima",
            "Bank of Canada", "Helsinki Energy"],
    "NATIONALITY": ["Chilean", "Finnish", "Vietnamese", "Mexican"],
    "EVENT": ["Asian Games", "Davis Cup", "Booker Prize"],
}

# Templates: tokens separated by spaces; PER, LOC, ORG, NAT (MISC nationality), LANG, EVENT and PRODUCT
# (both MISC) are slots. A trailing "." is dropped when the template becomes a clause of a longer sentence.
TEMPLATES = [
    "PER was born in LOC .",
    "PER , who was born in LOC in 1975 , works for ORG .",
    "PER works for ORG in LOC .",
    "PER joined ORG last year .",
    "ORG hired PER as chief executive .",
    "PER said on Tuesday that ORG would open an office in LOC .",
    "PER resigned .",
    "PER scored twice .",
    "ORG lost .",
    "Rain hit LOC .",
    "ORG shares fell 3 percent in LOC trading .",
    "The NAT striker PER signed for ORG on a three-year contract .",
    "PER won the EVENT in 2004 .",
    "PER speaks LANG and LANG .",
    "Police in LOC arrested PER on Monday .",
    "PER , a spokesman for ORG , declined to comment .",
    "ORG , based in LOC , reported a profit of 12 million dollars .",
    "The NAT government said PER would visit LOC next week .",
    "PER met PER in LOC to discuss the NAT proposal .",
    "Fans of ORG gathered outside the stadium in LOC .",
    "PER told ORG that the talks had failed .",
    "PER moved from LOC to LOC in 1998 .",
    "PER studied law at ORG .",
    "PER is the founder of ORG .",
    "The NAT film was shown in LOC .",
    "PER finished second at the EVENT behind PER .",
    "ORG will build a new factory near LOC .",
    "PER , the NAT foreign minister , arrived in LOC on Sunday .",
    "Officials from ORG and ORG met in LOC .",
    "PER bought a PRODUCT in LOC .",
    "The EVENT will be held in LOC .",
    "ORG launched the PRODUCT in 1994 .",
    "PER , 34 , has played for ORG since 2010 .",
    "Mr PER said the NAT economy would grow .",
    "PER and PER were married in LOC .",
    "A court in LOC fined ORG 2 million euros .",
    "PER flew from LOC to LOC to meet officials of ORG .",
    "Speaking in LANG , PER thanked the people of LOC .",
    "PER , chairman of ORG , said profits rose .",
    "Exports from LOC to LOC rose 8 percent .",
    "PER lives in LOC with PER .",
    "ORG appointed PER , a former NAT diplomat , as its new director .",
    "The NAT team beat LOC 2-1 in the EVENT final .",
    "PER wrote a book about LOC .",
    "LOC and LOC signed a trade agreement .",
    "Prices rose sharply in the first quarter .",
    "The talks will resume next week .",
    "No one was injured in the accident .",
    "The company did not give details .",
    "Shares closed higher on Friday .",
    "It was the third win in a row for the team , the coach said .",
]
CONNECTORS = [", and", ", while", "; meanwhile ,", ", but", ", after", "; earlier ,"]

LEXICON = {
    "the": "DT", "a": "DT", "an": "DT", "its": "PRP$", "his": "PRP$", "her": "PRP$", "it": "PRP", "he": "PRP",
    "she": "PRP", "no": "DT", "one": "CD", "in": "IN", "for": "IN", "at": "IN", "of": "IN", "from": "IN",
    "on": "IN", "as": "IN", "near": "IN", "behind": "IN", "about": "IN", "since": "IN", "after": "IN",
    "with": "IN", "outside": "IN", "that": "IN", "who": "WP", "to": "TO", "and": "CC", "but": "CC",
    "while": "IN", "meanwhile": "RB", "earlier": "RB", "sharply": "RB", "higher": "RBR", "not": "RB",
    "twice": "RB", "next": "JJ", "last": "JJ", "new": "JJ", "former": "JJ", "first": "JJ", "third": "JJ",
    "second": "JJ", "three-year": "JJ", "chief": "JJ", "foreign": "JJ", "mr": "NNP", "will": "MD",
    "would": "MD", "had": "VBD", "is": "VBZ", "was": "VBD", "were": "VBD", "has": "VBZ", "did": "VBD",
    "be": "VB", "give": "VB", "meet": "VB", "discuss": "VB", "build": "VB", "grow": "VB", "resume": "VB",
    "visit": "VB", "open": "VB", "played": "VBN", "born": "VBN", "based": "VBN", "held": "VBN",
    "shown": "VBN", "injured": "VBN", "married": "VBN", "failed": "VBN", "speaking": "VBG",
    "rose": "VBD", "fell": "VBD", "hit": "VBD", "lost": "VBD", "won": "VBD", "met": "VBD", "said": "VBD",
    "told": "VBD", "moved": "VBD", "studied": "VBD", "finished": "VBD", "arrived": "VBD", "bought": "VBD",
    "launched": "VBD", "thanked": "VBD", "appointed": "VBD", "beat": "VBD", "wrote": "VBD", "signed": "VBD",
    "fined": "VBD", "flew": "VBD", "gathered": "VBD", "arrested": "VBD", "declined": "VBD", "joined": "VBD",
    "hired": "VBD", "resigned": "VBD", "scored": "VBD", "reported": "VBD", "closed": "VBD", "works": "VBZ",
    "speaks": "VBZ", "lives": "VBZ", "comment": "VB", "shares": "NNS", "profits": "NNS", "prices": "NNS",
    "exports": "NNS", "fans": "NNS", "officials": "NNS", "talks": "NNS", "details": "NNS", "people": "NNS",
    "dollars": "NNS", "euros": "NNS", "police": "NNS", "monday": "NNP", "tuesday": "NNP", "friday": "NNP",
    "sunday": "NNP", ".": ".", ",": ",", ";": ":",
}
NOUN_PHRASE = {"DT", "PRP$", "PRP", "JJ", "CD", "NN", "NNS", "NNP"}


def pos_of(word: str) -> str:
    if word[0].isdigit():
        return "CD"
    return LEXICON.get(word.lower(), "NN")


class Names:
    """Draws entity names; ``unseen`` > 0 mixes in the dev-only names with that probability."""

    def __init__(self, rng: random.Random, unseen: float = 0.0):
        self.rng, self.unseen = rng, unseen

    def pick(self, key: str, pool: list[str]) -> str:
        if key in UNSEEN and self.rng.random() < self.unseen:
            return self.rng.choice(UNSEEN[key])
        return self.rng.choice(pool)

    def person(self) -> str:
        roll = self.rng.random()
        last = self.pick("LAST", LAST)
        if roll < 0.25:
            return last
        first = self.pick("FIRST", FIRST)
        if roll < 0.85:
            return f"{first} {last}"
        return f"{first} {self.rng.choice(PARTICLES)} {last}"

    def fill(self, slot: str) -> tuple[str, str] | None:
        """(name, entity type) for a slot, None for an ordinary word."""
        if slot == "PER":
            return self.person(), "PER"
        if slot == "LOC":
            return self.pick("LOC", LOC), "LOC"
        if slot == "ORG":
            return self.pick("ORG", ORG), "ORG"
        if slot == "NAT":
            return self.pick("NATIONALITY", NATIONALITY), "MISC"
        if slot == "LANG":
            return self.rng.choice(LANGUAGE), "MISC"
        if slot == "EVENT":
            return self.pick("EVENT", EVENT), "MISC"
        if slot == "PRODUCT":
            return self.rng.choice(PRODUCT), "MISC"
        return None


def clause(template: str, names: Names) -> list[tuple[str, str, str]]:
    """The template's tokens as (word, POS, NER) triples, slots filled with BIO-tagged names."""
    out = []
    for slot in template.split():
        filled = names.fill(slot)
        if filled is None:
            out.append((slot, pos_of(slot), "O"))
            continue
        name, kind = filled
        words = name.split()
        for i, word in enumerate(words):
            tag = ("B-" if i == 0 else "I-") + kind
            out.append((word, {"the": "DT", "of": "IN"}.get(word, "NNP"), tag))
    return out


def chunks(tokens: list[tuple[str, str, str]]) -> list[str]:
    """Placeholder chunk tags: runs of noun-phrase POS are NP (a name is one NP), verbs VP, prepositions PP,
    the rest O."""
    out, previous = [], None
    for _, pos, tag in tokens:
        if pos in NOUN_PHRASE or tag.startswith("I-"):
            group = "NP"
        elif pos.startswith("VB") or pos in ("MD", "TO"):
            group = "VP"
        else:
            group = "PP" if pos == "IN" else None
        if group is None:
            out.append("O")
        else:
            inside = group == previous and (group != "PP" or tag.startswith("I-"))
            out.append(("I-" if inside else "B-") + group)
        previous = group
    return out


def inner(tokens: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """A clause inside a sentence: its first word lower-cased unless it is a name (or "Mr")."""
    word, pos, tag = tokens[0]
    if tag == "O" and word != "Mr":
        tokens[0] = (word.lower(), pos, tag)
    return tokens


def sentence(rng: random.Random, names: Names) -> list[tuple[str, str, str]]:
    roll = rng.random()
    if roll < 0.025:  # 60 to 90 tokens: several clauses joined
        while True:
            target, tokens = rng.randint(62, 88), []
            while len(tokens) < target:
                part = clause(rng.choice(TEMPLATES), names)[:-1]
                if tokens:
                    tokens += [(w, pos_of(w), "O") for w in rng.choice(CONNECTORS).split()] + inner(part)
                else:
                    tokens = part
            if len(tokens) <= 89:
                return tokens + [(".", ".", "O")]
    if roll < 0.2:  # two clauses, up to about 40 tokens
        first, second = clause(rng.choice(TEMPLATES), names)[:-1], clause(rng.choice(TEMPLATES), names)
        return first + [(w, pos_of(w), "O") for w in rng.choice(CONNECTORS).split()] + inner(second)
    return clause(rng.choice(TEMPLATES), names)


def write(path: Path, sentences: int, rng: random.Random, unseen: float) -> None:
    names = Names(rng, unseen)
    lines, left_in_doc = [], 0
    for _ in range(sentences):
        if left_in_doc == 0:
            lines += ["-DOCSTART- -X- -X- O", ""]
            left_in_doc = rng.randint(15, 25)
        tokens = sentence(rng, names)
        word, pos, tag = tokens[0]
        tokens[0] = (word[0].upper() + word[1:], pos, tag)
        for (word, pos, tag), chunk in zip(tokens, chunks(tokens)):
            lines.append(f"{word} {pos} {chunk} {tag}")
        lines.append("")
        left_in_doc -= 1
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    """Writes ``train.conll`` and ``dev.conll`` into ``--out`` (default: ``examples/ner/``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "ner",
                        help="the folder to write train.conll and dev.conll into (default: examples/ner)")
    folder = parser.parse_args(argv).out
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(11)
    write(folder / "train.conll", 600, rng, unseen=0.0)
    write(folder / "dev.conll", 150, rng, unseen=0.25)
    print(f"wrote {folder}/train.conll and dev.conll")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
