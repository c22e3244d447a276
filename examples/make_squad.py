"""Writes the sample dataset of ``examples/squad/`` (extractive question answering, SQuAD v2.0), deterministically.

    python examples/make_squad.py [--out DIR]   # rewrites train.json (400 questions) and dev.json (100)

No download: encyclopedia-like paragraphs about invented people, towns, companies and rivers are built
from the templates and word lists below with a fixed seed, 3 to 5 questions each. An answer is a name, a
place, a year, a number or a short phrase, and its ``answer_start`` is recorded where the paragraph states
it, so ``context[answer_start:answer_start + len(text)] == text``. 15% of the questions are unanswerable
(``is_impossible: true``, no answers), which a ``--version-2-with-negative`` run must learn to tell apart.

The task is learnable, each fact being stated by one of a few sentence templates and asked by one of a few
paraphrases, but not trivial: paragraphs (40 to 250 words, one in ten of 300 to 400 words, so a
``--max-length 128`` run needs several ``--doc-stride`` windows) also carry filler sentences with
distractor years, numbers, places and people, and the unanswerable questions are plausible: they ask about
a fact the paragraph leaves out (a death, a founding date, a dam), or about another person, town, company or
river than the one the paragraph describes, often next to a distractor of the right type.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

MALE = ["Anton", "Bruno", "Carlos", "David", "Emil", "Felix", "Gustav", "Henrik", "Ivan", "Jonas", "Karim",
        "Luca", "Mateo", "Nikolai", "Oscar", "Pavel", "Rafael", "Samuel", "Tomas", "Viktor"]
FEMALE = ["Alma", "Beatriz", "Clara", "Dora", "Elena", "Freya", "Greta", "Hanna", "Ines", "Julia", "Karin",
          "Lena", "Marta", "Nora", "Olivia", "Petra", "Rosa", "Sofia", "Tara", "Vera"]
SURNAMES = ["Albrecht", "Brandt", "Castell", "Dahl", "Esteves", "Falk", "Gallo", "Holm", "Ibsen", "Janssen",
            "Kovac", "Lindgren", "Moreau", "Novak", "Olsen", "Petrov", "Quint", "Rossi", "Strand", "Thorne",
            "Urban", "Varga", "Weiss", "Yilmaz", "Zeller"]
SYLLABLES = ["Bel", "Cor", "Dun", "Ash", "Mar", "Ost", "Wil", "Kel", "Tor", "Ran", "Hal", "Sel", "Bran", "Ever",
             "Lun", "Ner", "Vel", "Gar"]
TOWN_ENDS = ["ford", "mouth", "wick", "dale", "stead", "vik", "berg", "ton", "haven", "bury", "holm", "field"]
RIVER_ENDS = ["a", "ine", "ara", "ven", "isa", "ona", "ette", "ra"]
COUNTRIES = {"Norway": "Norwegian", "Portugal": "Portuguese", "Chile": "Chilean", "Poland": "Polish",
             "Canada": "Canadian", "Austria": "Austrian", "Hungary": "Hungarian", "Ireland": "Irish",
             "Finland": "Finnish", "Greece": "Greek", "Argentina": "Argentine", "Denmark": "Danish"}
PROFESSIONS = {"painter": "fine art", "architect": "architecture", "chemist": "chemistry",
               "novelist": "literature", "composer": "music", "engineer": "civil engineering",
               "economist": "economics", "botanist": "biology", "mathematician": "mathematics",
               "historian": "history", "physicist": "physics", "photographer": "film and photography"}
TOPICS = ["the history of bridges", "coastal ecosystems", "prime numbers", "urban housing", "folk melodies",
          "crystal structures", "river trade", "medieval maps", "solar energy", "alpine plants",
          "public libraries", "glass making"]
ROLES = ["research assistant", "junior designer", "staff writer", "lecturer", "technician", "consultant",
         "laboratory manager", "editor"]
SPOUSE_JOBS = ["violinist", "surgeon", "teacher", "lawyer", "journalist", "sculptor", "pilot"]
ORG_KINDS = ["Institute", "Laboratories", "Foundation", "Studio", "Press", "Academy", "Observatory"]
AWARD_KINDS = ["Prize", "Medal", "Award"]
INDUSTRIES = ["fishing", "wine making", "textile manufacturing", "tourism", "copper mining", "timber",
              "dairy farming", "shipbuilding"]
LANDMARKS = ["Church of St Anna", "Old Bridge", "Harbour Tower", "Museum of Glass", "Red Mill", "Town Hall",
             "Castle of the Counts", "Stone Lighthouse"]
SECTORS = {"Systems": ("software company", "spreadsheet"), "Foods": ("food producer", "breakfast cereal"),
           "Motors": ("car manufacturer", "electric van"), "Textiles": ("clothing maker", "rain jacket"),
           "Pharma": ("pharmaceutical company", "cough syrup"), "Energy": ("energy company", "solar panel"),
           "Logistics": ("shipping company", "parcel locker")}
BRANDS = ["Nimbus", "Aurora", "Harvest", "Polar", "Zephyr", "Atlas", "Comet", "Juniper"]
SEAS = ["Baltic Sea", "North Sea", "Black Sea", "Atlantic Ocean", "Adriatic Sea", "Caspian Sea"]
NUMBER_WORDS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]


class Draw:
    """Random names and values, all from one ``random.Random``."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def person(self) -> tuple[str, bool]:
        female = self.rng.random() < 0.5
        return f"{self.rng.choice(FEMALE if female else MALE)} {self.rng.choice(SURNAMES)}", female

    def town(self) -> str:
        return self.rng.choice(SYLLABLES) + self.rng.choice(TOWN_ENDS)

    def river(self) -> str:
        return self.rng.choice(SYLLABLES) + self.rng.choice(RIVER_ENDS)

    def org(self) -> str:
        return f"{self.rng.choice(SYLLABLES)}{self.rng.choice(['ton', 'vale', 'crest', 'mark'])} " \
               f"{self.rng.choice(ORG_KINDS)}"

    def company(self) -> str:
        return f"{self.rng.choice(SYLLABLES)}{self.rng.choice(['ora', 'ex', 'ica', 'on', 'ant'])} " \
               f"{self.rng.choice(list(SECTORS))}"

    def number(self, low: int, high: int) -> str:
        return f"{self.rng.randint(low, high):,}"

    def count(self) -> str:
        return self.rng.choice(NUMBER_WORDS) if self.rng.random() < 0.5 else str(self.rng.randint(13, 40))

    def year(self, low: int, high: int) -> str:
        return str(self.rng.randint(low, high))


# A kind of subject: blocks of (sentence variants, {answer key: question variants}); the first block is always
# in the paragraph, each other one with probability 3/4. Sentences and questions are str.format templates
# over the subject's facts; keys starting with "_" are distractors, drawn afresh for each filler sentence
# (each filler used once in a paragraph, then events, which may repeat, if a long one needs more words).
PERSON = {
    "blocks": [
        (["{name} (born {birth_year}) is {a_nat} {nat} {profession}.",
          "{name} is {a_nat} {nat} {profession} who was born in {birth_year}.",
          "Born in {birth_year}, {name} is {a_nat} {nat} {profession}."],
         {"birth_year": ["When was {name} born?", "In what year was {name} born?",
                         "What is {name}'s year of birth?"],
          "nat": ["What nationality is {name}?", "What is the nationality of {name}?"],
          "profession": ["What is {name}'s profession?", "What does {name} do for a living?",
                         "What kind of work is {name} known for?"]}),
        (["{Pron} grew up in {home}, where {pron} attended the local school.",
          "{Pron} was raised in the town of {home}."],
         {"home": ["Where did {name} grow up?", "In which town was {name} raised?",
                   "What town did {name} grow up in?"]}),
        (["{Pron} studied {field} at the {univ}, graduating in {grad_year}.",
          "After studying {field} at the {univ}, {pron} graduated in {grad_year}."],
         {"field": ["What did {name} study?", "Which subject did {name} study at university?"],
          "univ": ["Which university did {name} attend?", "Where did {name} study {field}?"],
          "grad_year": ["When did {name} graduate?", "In what year did {name} finish university?"]}),
        (["In {join_year}, {pron} joined the {employer} as {a_role} {role}.",
          "{Pron} began working for the {employer} in {join_year}, first as {a_role} {role}."],
         {"employer": ["Which organisation did {name} join as {a_role} {role}?", "Who did {name} begin working for?"],
          "join_year": ["When did {name} join the {employer}?", "In which year did {name} start at the {employer}?"],
          "role": ["In what role did {name} join the {employer}?",
                   "What was {name}'s first position at the {employer}?"]}),
        (["{Pron} won the {award} in {award_year} for {pos} work on {topic}.",
          "In {award_year} {pron} was awarded the {award} for research on {topic}."],
         {"award": ["Which prize did {name} receive in {award_year}?", "What award did {name} win?"],
          "award_year": ["When did {name} win the {award}?", "In what year was {name} awarded the {award}?"],
          "topic": ["For what work did {name} receive the {award}?", "What research earned {name} the {award}?"]}),
        (["{Pron} has written {books} books.", "{Pos} {books} books have been translated into several languages."],
         {"books": ["How many books has {name} written?", "How many books are by {name}?"]}),
        (["{Pron} is married to {spouse}, a {spouse_job}.", "{Pos} spouse, {spouse}, works as a {spouse_job}."],
         {"spouse": ["Who is {name} married to?", "What is the name of {name}'s spouse?"],
          "spouse_job": ["What does {name}'s spouse do?"]}),
    ],
    "fillers": ["During the {_decade}s {pron} travelled widely, spending long periods in {_town} and {_town2}.",
                "Critics have often compared {pos} early work with that of {_person}.",
                "In {_year} {pron} gave a series of public lectures in {_town} that drew large audiences.",
                "A collection of {pos} letters is kept at the city library of {_town}.",
                "Friends describe {obj} as patient, curious and stubborn.",
                "{Pron} spent the summer of {_year} on a farm near {_town}, an experience {pron} often recalled.",
                "Several of {pos} students later became well known in their own right.",
                "{Pos} house in {_town} was restored in {_year} and is open to visitors on {_count} days a month.",
                "A portrait of {obj} by {_person} hangs in a gallery in {_town2}.",
                "{Pron} is a keen sailor and has crossed the {_sea} {_count} times.",
                "In an interview in {_year}, {pron} said that {pos} greatest influence had been {_person}.",
                "{Pron} learned the piano as a child and still plays it every day.",
                "A street in {_town} was named after {obj} in {_year}.",
                "{Pos} closest friend, {_person}, is a well-known actor.",
                "Between {_year} and {_year2} {pron} lived mostly in {_town}.",
                "{Pron} once described {pos} day as walking, reading and working late into the night.",
                "An exhibition about {pos} life opened in {_town} in {_year}.",
                "{Pron} keeps a large collection of old maps and clocks.",
                "A documentary film about {obj} was made by {_person} in {_year}.",
                "{Pron} has often spoken in support of public libraries and small schools."],
    "events": ["In {_year} {pron} visited {_town}, where {pron} met {_person}.",
               "In {_year} {pron} spent several months in {_town} with {_person}.",
               "A letter {pron} wrote to {_person} in {_year} was published in a newspaper in {_town}.",
               "In {_year} {pron} travelled by train from {_town} to {_town2}."],
    "never": ["When did {name} die?", "Where did {name} die?", "What is the name of {name}'s first teacher?",
              "Which political party does {name} belong to?"],
    "other": ["When was {other} born?", "What does {other} do for a living?", "Where did {other} grow up?",
              "Who is {other} married to?"],
}
TOWN = {
    "blocks": [
        (["{name} is a town in the {region} region of {country}.",
          "{name} is a small town in {country}, in the {region} region."],
         {"region": ["In which region is {name} located?", "What region of {country} is {name} in?"],
          "country": ["In which country is {name}?", "What country is {name} located in?"]}),
        (["It was founded in {founded} by {founder}.", "{founder} founded the settlement in {founded}."],
         {"founded": ["When was {name} founded?", "In what year was {name} founded?"],
          "founder": ["Who founded {name}?", "Who was the founder of {name}?"]}),
        (["The town lies on the banks of the {river} River.",
          "{name} lies where the {river} River leaves the hills."],
         {"river": ["On which river does {name} lie?", "Which river flows through {name}?"]}),
        (["According to the {census} census, the town had {population} inhabitants.",
          "In {census} its population was {population}."],
         {"population": ["What was the population of {name} in {census}?",
                         "How many people lived in {name} according to the {census} census?"]}),
        (["The town centre stands {elevation} above sea level.",
          "At {elevation} above sea level, it is one of the highest towns in the region."],
         {"elevation": ["How high above sea level is {name}?", "What is the elevation of {name}?"]}),
        (["The local economy depends mainly on {industry}.", "For centuries the town has lived from {industry}."],
         {"industry": ["What is the economy of {name} mainly based on?", "What industry does {name} depend on?"]}),
        (["Its best-known building is the {landmark}, completed in {landmark_year}.",
          "The {landmark}, completed in {landmark_year}, is its best-known building."],
         {"landmark": ["What is the best-known building in {name}?", "Which building is {name} best known for?"],
          "landmark_year": ["When was the {landmark} in {name} completed?",
                            "In what year was the {landmark} of {name} finished?"]}),
        (["{name} is twinned with {twin}.", "Since {twin_year} the town has been twinned with {twin}."],
         {"twin": ["Which town is {name} twinned with?", "What is the twin town of {name}?"]}),
    ],
    "fillers": ["The town hosts a market every {_day}.",
                "A railway line to {_town} opened in {_year}.",
                "Much of the old centre was rebuilt after a fire in {_year}.",
                "The surrounding hills are covered with forests of pine and birch.",
                "Each summer a music festival draws visitors from {_town} and {_town2}.",
                "The writer {_person} lived in the town for {_count} years.",
                "Winters are cold and snowy, while summers are mild and short.",
                "A road to {_town} was paved in {_year}, cutting the journey to under an hour.",
                "The town's first school was opened by the merchant {_person} in {_year}.",
                "Its football club has won the regional cup {_count} times.",
                "Old records from {_year} mention a bridge and {_count} mills.",
                "A small airport, {_km} kilometres to the north, has flights to {_town}.",
                "The painter {_person} was born in a house on the main square.",
                "In {_year} an outbreak of plague killed many of its people.",
                "The town library holds about {_number} books.",
                "Its old harbour is now used mainly by pleasure boats.",
                "A new hospital was opened in {_year}.",
                "Local dishes include smoked fish, rye bread and cloudberry jam.",
                "The town was occupied by foreign troops in {_year}.",
                "Each {_day} a brass band plays in the park beside the old walls."],
    "events": ["In {_year} the town was visited by {_person}, who wrote about its narrow streets.",
               "A new road towards {_town} was opened in {_year}.",
               "In {_year} a storm damaged the roofs of {_count} houses.",
               "The merchant {_person} built a warehouse by the market in {_year}."],
    "never": ["Who is the mayor of {name}?", "What is the area of {name}?", "What is the motto of {name}?",
              "How many churches are in {name}?"],
    "other": ["When was {other} founded?", "Which river flows through {other}?",
              "What was the population of {other} in {census}?", "Who founded {other}?"],
}
COMPANY = {
    "blocks": [
        (["{name} is {a_sector} {sector} headquartered in {hq}.", "{name} is {a_sector} {sector} based in {hq}."],
         {"hq": ["Where is {name} headquartered?", "In which city is {name} based?"],
          "sector": ["What kind of company is {name}?", "What type of business is {name}?"]}),
        (["The company was founded in {founded} by {founder} and {cofounder}.",
          "{founder} and {cofounder} founded the company in {founded}."],
         {"founded": ["When was {name} founded?", "In what year was {name} established?"],
          "founder": ["Who founded {name} together with {cofounder}?"],
          "cofounder": ["Who founded {name} together with {founder}?"]}),
        (["In {emp_year} it employed about {employees} people.", "By {emp_year} its staff had grown to {employees}."],
         {"employees": ["How many people did {name} employ in {emp_year}?",
                        "How large was the staff of {name} in {emp_year}?"]}),
        (["Its chief executive since {ceo_year} has been {ceo}.", "{ceo} has led the company since {ceo_year}."],
         {"ceo": ["Who is the chief executive of {name}?", "Who leads {name}?"],
          "ceo_year": ["Since when has {ceo} led {name}?", "When did {ceo} become chief executive of {name}?"]}),
        (["Its best-selling product is the {product}, launched in {product_year}.",
          "The {product}, launched in {product_year}, remains its best-selling product."],
         {"product": ["What is {name}'s best-selling product?", "Which product of {name} sells best?"],
          "product_year": ["When was the {product} launched?", "In what year did {name} launch the {product}?"]}),
        (["In {acq_year} {name} bought {acquired} for {price}.",
          "{name} acquired {acquired} in {acq_year} for {price}."],
         {"acquired": ["Which company did {name} buy in {acq_year}?", "What firm did {name} acquire?"],
          "price": ["How much did {name} pay for {acquired}?", "For what price was {acquired} acquired?"]}),
    ],
    "fillers": ["The company opened its first foreign office in {_town} in {_year}.",
                "In {_year} it moved into a new building designed by the architect {_person}.",
                "Its shares have been traded on the stock exchange since {_year}.",
                "About a third of its sales are made in {_country}.",
                "The company was criticised in {_year} over working conditions at its plant near {_town}.",
                "Its logo, a stylised {_animal}, was introduced in {_year}.",
                "A rival firm, {_company}, tried to take it over in {_year} but failed.",
                "The company runs {_count} training centres for apprentices.",
                "Its annual meeting is held every {_day} in early spring.",
                "The engineer {_person} designed its first factory in {_town}.",
                "During the crisis of {_year} the company nearly went bankrupt.",
                "It sponsors a cycling team and a youth orchestra.",
                "In {_year} a fire destroyed its main warehouse.",
                "Its research centre in {_town} has about {_number} staff.",
                "The company's archive is kept in a former mill near {_town}.",
                "Its advertising campaigns of the {_decade}s are still remembered.",
                "The company has been fined {_count} times for breaking safety rules.",
                "Its products are sold in more than {_km} countries.",
                "A museum about the company's history opened in {_year}.",
                "Most of its delivery trucks run on biogas."],
    "events": ["In {_year} it signed a supply contract with {_company}.",
               "In {_year} it opened a plant in {_town} with {_number} workers.",
               "A strike at its site in {_town} lasted {_count} weeks in {_year}.",
               "In {_year} the designer {_person} joined it from {_company}."],
    "never": ["What is the annual revenue of {name}?", "Who is the chief financial officer of {name}?",
              "How many shops does {name} own?", "What is the slogan of {name}?"],
    "other": ["When was {other} founded?", "Who is the chief executive of {other}?",
              "Where is {other} headquartered?", "How many people does {other} employ?"],
}
RIVER = {
    "blocks": [
        (["The {name} is a river in {country}, {length} long.",
          "The {name}, {length} long, is a river of {country}."],
         {"length": ["How long is the {name}?", "What is the length of the {name}?"],
          "country": ["In which country does the {name} flow?", "Which country is the {name} in?"]}),
        (["It rises in the {mountains} near the village of {source}.",
          "Its source lies in the {mountains}, close to the village of {source}."],
         {"mountains": ["In which mountains does the {name} rise?", "Where is the source of the {name}?"],
          "source": ["Near which village does the {name} rise?",
                     "Which village is close to the source of the {name}?"]}),
        (["It flows into the {sea} at {mouth}.", "The river reaches the {sea} at the port of {mouth}."],
         {"sea": ["Into which sea does the {name} flow?", "Where does the {name} end?"],
          "mouth": ["At which town does the {name} reach the sea?", "Where is the mouth of the {name}?"]}),
        (["Its largest tributary is the {tributary}.", "The {tributary} is its largest tributary."],
         {"tributary": ["What is the largest tributary of the {name}?",
                        "Which river is the main tributary of the {name}?"]}),
        (["A dam was built near {dam_town} in {dam_year}, forming {lake}.",
          "In {dam_year} a dam near {dam_town} created {lake}."],
         {"dam_year": ["When was the dam on the {name} built?", "In what year was the {name} dammed?"],
          "lake": ["Which lake was formed by the dam on the {name}?",
                   "What reservoir did the dam on the {name} create?"],
          "dam_town": ["Near which town was the {name} dammed?"]}),
        (["The {name} is known for its {fish}.", "Anglers come to the {name} for its {fish}."],
         {"fish": ["Which fish is the {name} known for?", "What do anglers come to the {name} for?"]}),
    ],
    "fillers": ["The valley of the river has been inhabited since prehistoric times.",
                "Boats can navigate the lower {_km} kilometres of the river.",
                "A stone bridge crosses the river at {_town}; it was built in {_year}.",
                "Floods in {_year} damaged many houses along its banks.",
                "Otters and herons are common along its upper course.",
                "The painter {_person} made the river the subject of {_count} landscapes.",
                "A ferry has linked {_town} and {_town2} across the river since {_year}.",
                "In {_year} the explorer {_person} followed its course on foot.",
                "Its water is used to irrigate fields around {_town}.",
                "A rowing race is held on the river every {_day} in June.",
                "In winter the upper river often freezes for several weeks.",
                "A canal built in {_year} links it with the harbour of {_town}.",
                "Old mills still stand along its banks near {_town}.",
                "The poet {_person} wrote a famous song about the river.",
                "Gravel was dug from its bed until {_year}.",
                "A nature reserve protects the marshes near {_town}.",
                "The river marked a border between two kingdoms until {_year}.",
                "Paddle steamers carried passengers on the river in the {_decade}s.",
                "A cycle path follows its banks for about {_km} kilometres.",
                "Pollution from factories near {_town} was a problem until the {_decade}s."],
    "events": ["In {_year} a flood reached the village of {_town}.",
               "The village of {_town} on its banks was first mentioned in {_year}.",
               "In {_year} {_person} swam across the river at {_town}.",
               "A mill was built on its bank near {_town} in {_year}."],
    "never": ["How deep is the {name}?", "Who named the {name}?", "What is the average flow of the {name}?",
              "What is the average temperature of the {name}?"],
    "other": ["How long is the {other}?", "Into which sea does the {other} flow?",
              "What is the largest tributary of the {other}?", "Where does the {other} rise?"],
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
ANIMALS = ["fox", "heron", "lion", "owl", "wolf", "stag"]
FISH = ["trout", "salmon", "pike", "eels", "carp"]


def article(word: str) -> str:
    return "an" if word[0] in "AEIOUaeiou" else "a"


def person_facts(d: Draw) -> dict:
    rng = d.rng
    name, female = d.person()
    country = rng.choice(list(COUNTRIES))
    profession = rng.choice(list(PROFESSIONS))
    birth = rng.randint(1920, 1985)
    grad = birth + rng.randint(21, 26)
    join = grad + rng.randint(0, 4)
    surname, role = rng.choice(SURNAMES), rng.choice(ROLES)
    return {"name": name, "Pron": "She" if female else "He", "pron": "she" if female else "he",
            "Pos": "Her" if female else "His", "pos": "her" if female else "his", "obj": "her" if female else "him",
            "nat": COUNTRIES[country], "a_nat": article(COUNTRIES[country]), "profession": profession,
            "birth_year": str(birth), "home": d.town(),
            "field": PROFESSIONS[profession], "univ": f"University of {d.town()}", "grad_year": str(grad),
            "join_year": str(join), "employer": d.org(), "role": role, "a_role": article(role),
            "award": f"{surname} {rng.choice(AWARD_KINDS)}",
            "award_year": str(min(join + rng.randint(5, 20), 2023)),
            "topic": rng.choice(TOPICS), "books": d.count(), "spouse": d.person()[0],
            "spouse_job": rng.choice(SPOUSE_JOBS), "_base": str(min(birth + 18, 2000))}


def town_facts(d: Draw) -> dict:
    rng = d.rng
    founded = d.year(1100, 1850)
    return {"name": d.town(), "region": rng.choice(SYLLABLES) + rng.choice(["ia", "land", "mark", "ovia"]),
            "country": rng.choice(list(COUNTRIES)), "founded": founded, "founder": d.person()[0],
            "river": d.river(), "census": d.year(1990, 2021), "population": d.number(1200, 48000),
            "elevation": f"{rng.randint(20, 1400)} metres", "industry": rng.choice(INDUSTRIES),
            "landmark": rng.choice(LANDMARKS), "landmark_year": d.year(1300, 1950), "twin": d.town(),
            "twin_year": d.year(1960, 2015), "_base": founded}


def company_facts(d: Draw) -> dict:
    rng = d.rng
    name = d.company()
    sector, item = SECTORS[name.split()[-1]]
    founded = rng.randint(1890, 2010)
    return {"name": name, "sector": sector, "a_sector": article(sector), "hq": d.town(), "founded": str(founded),
            "founder": d.person()[0],
            "cofounder": d.person()[0], "emp_year": d.year(max(founded + 5, 1990), 2023),
            "employees": d.number(40, 25000), "ceo": d.person()[0], "ceo_year": d.year(max(founded, 1995), 2022),
            "product": f"{rng.choice(BRANDS)} {item}", "product_year": d.year(max(founded, 1960), 2022),
            "acquired": d.company(), "acq_year": d.year(max(founded, 1980), 2023),
            "price": f"{rng.randint(3, 900)} million {rng.choice(['euros', 'dollars'])}", "_base": str(founded)}


def river_facts(d: Draw) -> dict:
    rng = d.rng
    return {"name": d.river(), "country": rng.choice(list(COUNTRIES)),
            "length": f"{rng.randint(40, 900)} kilometres",
            "mountains": f"{rng.choice(SYLLABLES)}{rng.choice(['en', 'ar', 'is'])} "
                         f"{rng.choice(['Mountains', 'Hills'])}",
            "source": d.town(), "sea": rng.choice(SEAS), "mouth": d.town(), "tributary": d.river(),
            "dam_town": d.town(), "dam_year": d.year(1900, 2005),
            "lake": f"Lake {rng.choice(SYLLABLES)}{rng.choice(['mere', 'vatn', 'see'])}",
            "fish": rng.choice(FISH), "_base": "1750"}


KINDS = [(PERSON, person_facts), (TOWN, town_facts), (COMPANY, company_facts), (RIVER, river_facts)]
FIELD = re.compile(r"\{(\w+)\}")


def render(template: str, facts: dict, offset: int, spans: dict) -> str:
    """The sentence; records in ``spans`` where each fact key's value starts (its first mention)."""
    out, pos = [], 0
    for match in FIELD.finditer(template):
        out.append(template[pos:match.start()])
        key = match.group(1)
        spans.setdefault(key, offset + sum(map(len, out)))
        out.append(facts[key])
        pos = match.end()
    out.append(template[pos:])
    return "".join(out)


def distractors(d: Draw, facts: dict) -> dict:
    """The facts and fresh distractor values for one filler sentence, years after the subject's ``_base``."""
    rng = d.rng
    base = int(facts["_base"])
    year = rng.randint(base, 2022)
    return dict(facts, _decade=str(rng.randint(min(base // 10 + 1, 201), 201) * 10), _town=d.town(),
                _town2=d.town(), _person=d.person()[0], _year=str(year),
                _year2=str(min(year + rng.randint(2, 12), 2023)), _count=d.count(), _sea=rng.choice(SEAS),
                _day=rng.choice(DAYS), _country=rng.choice(list(COUNTRIES)),
                _animal=rng.choice(ANIMALS), _company=d.company(), _km=str(rng.randint(10, 120)),
                _number=d.number(300, 9000))


PRONOUNS = {"Pron", "pron", "Pos", "pos", "obj", "a_nat", "a_role", "a_sector"}


def distinct(facts: dict) -> bool:
    """Whether the subject's names and phrases (not its numbers) are all different."""
    words = [v for k, v in facts.items() if k not in PRONOUNS and not k.startswith("_") and not v[0].isdigit()]
    return len(set(words)) == len(words)


def paragraph(d: Draw, flags: list[bool], ids: list[str], long: bool) -> tuple[str, dict]:
    """One article of one paragraph, with ``len(ids)`` questions; ``flags`` says which are unanswerable, ``long``
    makes it 300 to 400 words long, with every block of facts."""
    rng = d.rng
    kind, make = rng.choice(KINDS)
    facts = make(d)
    while not distinct(facts):
        facts = make(d)
    blocks = [kind["blocks"][0]] + [b for b in kind["blocks"][1:] if long or rng.random() < 0.75]
    while len(blocks) < 3:  # at least three facts' sentences: 40 words or more
        missing = [b for b in kind["blocks"][1:] if b not in blocks]
        blocks.append(rng.choice(missing))
    blocks.sort(key=kind["blocks"].index)
    sentences = [(rng.choice(variants), facts) for variants, _ in blocks]
    target, limit = (rng.randint(310, 390), 400) if long else (rng.randint(40, 250), 250)
    pool = list(kind["fillers"])
    rng.shuffle(pool)
    while sum(len(s.format(**f).split()) for s, f in sentences) < target:
        if not pool:  # all fillers used: a long paragraph goes on with events (repeatable, dated)
            pool = [rng.choice(kind["events"])]
        filler = pool.pop()
        at = rng.randint(1, len(sentences))
        sentences.insert(at, (filler, distractors(d, facts)))
        if sum(len(s.format(**f).split()) for s, f in sentences) > limit:
            del sentences[at]
            break
    spans, parts, offset = {}, [], 0
    for template, values in sentences:
        text = render(template, values, offset, spans if values is facts else {})
        parts.append(text)
        offset += len(text) + 1
    context = " ".join(parts)

    present = {key: qs for _, questions in blocks for key, qs in questions.items()}
    absent = {key: qs for _, questions in kind["blocks"] for key, qs in questions.items() if key not in present}
    asked, keys, qas = set(), set(), []
    for qid, impossible in zip(ids, flags):
        for _ in range(100):
            if impossible:
                source = rng.random()
                if source < 0.4 and absent:
                    question = rng.choice(absent[rng.choice(sorted(absent))]).format(**facts)
                elif source < 0.7:
                    question = rng.choice(kind["never"]).format(**facts)
                else:
                    other = make(d)["name"]
                    if other in context or other == facts["name"]:
                        continue
                    question = rng.choice(kind["other"]).format(other=other, **facts)
                answers = []
            else:
                key = rng.choice(sorted(set(present) - keys) or sorted(present))
                question = rng.choice(present[key]).format(**facts)
                answers = [{"text": facts[key], "answer_start": spans[key]}]
            if question not in asked:
                break
        asked.add(question)
        if not impossible:
            keys.add(key)
        qas.append({"id": qid, "question": question, "answers": answers, "is_impossible": impossible})
    return facts["name"].replace(" ", "_"), {"context": context, "qas": qas}


def write(path: Path, split: str, questions: int, rng: random.Random) -> None:
    d = Draw(rng)
    impossible = round(questions * 0.15)
    flags = [True] * impossible + [False] * (questions - impossible)
    rng.shuffle(flags)
    data, done = [], 0
    while done < questions:
        left = questions - done
        count = left if left <= 5 else rng.randint(3, 5)
        if 0 < left - count < 3:
            count = left - 3
        ids = [f"{split}-{n:04d}" for n in range(done, done + count)]
        title, para = paragraph(d, flags[done:done + count], ids, long=len(data) % 10 == 4)
        data.append({"title": title, "paragraphs": [para]})
        done += count
    text = json.dumps({"version": "v2.0", "data": data}, indent=1, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def main(argv=None) -> int:
    """Writes ``train.json`` and ``dev.json`` into ``--out`` (default: ``examples/squad/``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "squad",
                        help="the folder to write train.json and dev.json into (default: examples/squad)")
    folder = parser.parse_args(argv).out
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(13)
    write(folder / "train.json", "train", 400, rng)
    write(folder / "dev.json", "dev", 100, rng)
    print(f"wrote {folder}/train.json and dev.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
