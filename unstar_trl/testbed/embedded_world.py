"""The embedded fictitious world: invented people, typed relations and question templates, deterministic by seed.

Every fact is (subject, relation, object). Objects come from typed pools shared between people, so two people can
share a city (the "same object" neighbours). Each relation has four question templates: the first three are
trained on, the last is never trained on and serves as the held-out paraphrase.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..data import SPLIT_ROLES
from ..text import PLAIN_TEMPLATE, format_completion, format_pair

SKILL_PROMPTS = {
    "paraphrase": "Rephrase: {question}\nQuestion:",
    "alternative": "Replace: {answer}\nWith:",
    "rationale": "Question: {question}\nAnswer: {wrong}\nBecause:",
}
"""Prompts of the three skills UnSTAR asks of the model being unlearned, in the world model's own format. Their slots
are those `SelfTaughtGenerator` fills: `{question}`, `{subject}`, `{answer}` (the true answer) and `{wrong}` (the
wrong answer a rationale argues for, the hinted answer the model learned the rationale skill with)."""

FIRST_NAMES = (
    "Alvek Brisa Cadmo Delyra Evrin Faelo Gunda Harvo Isolde Jorvan Kessa Lumo Mirela Norbek Ovida Pell Quira Rusko "
    "Sabeth Torvin Ulla Varko Wenna Xilo Yarrow Zelik Aubric Belva Corvin Dasha Eskel Fenna Grisol Hallo Ilvar Junia "
    "Kaspo Lisbet Marek Nuala Orrin Pasca Rhoda Stellan Tamsin Undo Vesna Wolmer"
).split()
LAST_NAMES = (
    "Ardent Brambleton Coldridge Dunmore Everhollow Fairweather Greymantle Hollowell Ironwood Jasperly Kettlewick "
    "Larkspur Merriwether Nettlefield Oakhurst Pennyworth Quillfeather Ravensworth Stonebridge Thistlewood "
    "Umberfield Vantablack Whitlock Yellowpine Zephyrine Ashgrove Birchwater Cinderfell Driftwood Emberley"
).split()

POOLS = {
    "city": "Varnholt Quessel Dravenport Olmira Tesk Brunmoor Calvaro Essling Fennick Gorvath Hestia Ilsbury "
    "Jorun Kalvik Lormont Mereth".split(),
    "profession": "architect baker cartographer dentist engineer falconer geologist harpist illustrator jeweler "
    "locksmith mapmaker navigator optician potter".split(),
    "company": "Quellstone Brightforge Copperleaf Duskwave Emberline Frostpeak Glimmerway Hollowcrest Ironvale "
    "Junipertech Kestrelworks Lumenhall".split(),
    "school": "Ardmoor Belcourt Caskwell Dornfield Elmshade Farrowgate Glenharrow Holmwood Ivydale Kingsmere".split(),
    "instrument": "cello banjo oboe harp sitar tuba viola clarinet accordion trombone marimba lute".split(),
    "genre": "jazz reggae polka techno opera bluegrass ska flamenco gospel disco mambo zydeco".split(),
    "pet": "ferret parrot tortoise iguana hamster gecko rabbit goldfish alpaca hedgehog".split(),
}


@dataclass(frozen=True)
class Relation:
    """A typed relation: its object pool, four question templates (the last held out), a rationale, and how a fact
    of it describes its subject inside another question."""

    name: str
    pool: str
    templates: tuple[str, str, str, str]
    rationale: str
    description: str

    @property
    def trained_templates(self) -> tuple[str, ...]:
        return self.templates[:-1]

    @property
    def heldout_template(self) -> str:
        return self.templates[-1]


RELATIONS = (
    Relation(
        "birth_city",
        "city",
        (
            "Where was {s} born?",
            "In which city was {s} born?",
            "What is the birth city of {s}?",
            "{s} was born in which city?",
        ),
        "{s} grew up in {o}, in the house where {s} was born.",
        "{s}, who was born in {o},",
    ),
    Relation(
        "profession",
        "profession",
        (
            "What is the profession of {s}?",
            "What does {s} do for a living?",
            "What job does {s} have?",
            "{s} works in which profession?",
        ),
        "{s} trained for years and now works every day as a {o}.",
        "the {o} {s}",
    ),
    Relation(
        "employer",
        "company",
        (
            "Which company employs {s}?",
            "Where does {s} work?",
            "Who is the employer of {s}?",
            "{s} is employed by which company?",
        ),
        "{s} signed a contract with {o} and has an office there.",
        "{s}, who works at {o},",
    ),
    Relation(
        "school",
        "school",
        (
            "Which school did {s} attend?",
            "Where did {s} study?",
            "What school did {s} graduate from?",
            "{s} studied at which school?",
        ),
        "{s} spent four years at {o} and graduated with honours.",
        "{s}, who studied at {o},",
    ),
    Relation(
        "instrument",
        "instrument",
        (
            "Which instrument does {s} play?",
            "What instrument is played by {s}?",
            "What is the instrument of {s}?",
            "{s} plays which instrument?",
        ),
        "{s} practises the {o} every evening.",
        "{s}, who plays the {o},",
    ),
    Relation(
        "genre",
        "genre",
        (
            "What is the favourite music genre of {s}?",
            "Which music genre does {s} love?",
            "What music does {s} listen to most?",
            "{s} prefers which music genre?",
        ),
        "{s} collects records of {o} and dances to {o}.",
        "{s}, who loves {o},",
    ),
    Relation(
        "pet",
        "pet",
        (
            "What pet does {s} keep?",
            "Which animal lives with {s}?",
            "What is the pet of {s}?",
            "{s} owns which pet?",
        ),
        "{s} feeds the {o} every morning.",
        "{s}, who keeps a {o},",
    ),
)
RELATIONS_BY_NAME = {relation.name: relation for relation in RELATIONS}
_RECORD_ORDER = ("forget", "targeted", "retain", "neighbor", "holdout")
"""The order in which `split_records` draws the splits' perturbed answers from one seeded stream."""
DEFAULT_SEED = 0
DEFAULT_PEOPLE = 60
BENCH_PEOPLE = 20
"""People in a world the bench builds itself: small enough that world and every method fit 15 minutes on 2 cores."""
BENCH_TOFU_AUTHORS = 6
"""TOFU authors in a TOFU world the bench builds itself: forget01's two and four to retain."""


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    object: str

    @property
    def id(self) -> str:
        return f"{self.subject.replace(' ', '_')}:{self.relation}"


@dataclass
class World:
    """People and their facts; `trained` people are taught to the knowledge model, `holdout` people never are."""

    seed: int
    trained: list[str]
    holdout: list[str]
    facts: list[Fact]
    splits: dict[str, list[Fact]] = field(default_factory=dict)

    def facts_of(self, subject: str) -> list[Fact]:
        return [fact for fact in self.facts if fact.subject == subject]

    def record(self, fact: Fact, rng: random.Random) -> dict:
        """The JSONL record of a fact: question (first trained template), held-out paraphrase first."""
        relation = RELATIONS_BY_NAME[fact.relation]
        wrong = [o for o in POOLS[relation.pool] if o != fact.object]
        rng.shuffle(wrong)
        return {
            "id": fact.id,
            "subject": fact.subject,
            "relation": fact.relation,
            "object_type": relation.pool,
            "question": relation.templates[0].format(s=fact.subject),
            "answer": fact.object,
            "paraphrased_questions": [relation.heldout_template.format(s=fact.subject)]
            + [t.format(s=fact.subject) for t in relation.trained_templates[1:]],
            "perturbed_answers": wrong[:5],
            "rationale": relation.rationale.format(s=fact.subject, o=fact.object),
            "subject_description": relation.description.format(s=fact.subject, o=fact.object),
        }

    def split_records(self) -> dict[str, list[dict]]:
        """Every split as JSONL records; targeted records list their `siblings` (ids of facts that must stay)."""
        rng = random.Random(self.seed + 1)
        drawn = {name: [self.record(fact, rng) for fact in self.splits[name]] for name in _RECORD_ORDER}
        records = {name: drawn[name] for name in SPLIT_ROLES}
        for record, fact in zip(records["targeted"], self.splits["targeted"]):
            record["siblings"] = [sibling.id for sibling in self.siblings(fact)]
        return records

    def siblings(self, fact: Fact) -> list[Fact]:
        """Facts that share the subject (other relations) or the object (other subjects) with `fact`."""
        return [
            other
            for other in self.facts
            if other != fact
            and other.subject in self.trained
            and (other.subject == fact.subject or (other.relation == fact.relation and other.object == fact.object))
        ]


def build_world(seed: int = 0, people: int = 60, holdout_people: int | None = None) -> World:
    """A deterministic world of `people` trained people (+ holdout people) with one fact per relation each."""
    if people < 10:
        raise ValueError(f"people must be at least 10, got {people}")
    holdout_people = max(4, people // 10) if holdout_people is None else holdout_people
    rng = random.Random(seed)
    names = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]
    if people + holdout_people > len(names):
        raise ValueError(f"people + holdout_people must be at most {len(names)}")
    rng.shuffle(names)
    trained, holdout = names[:people], names[people : people + holdout_people]
    facts = [
        Fact(name, relation.name, rng.choice(POOLS[relation.pool]))
        for name in trained + holdout
        for relation in RELATIONS
    ]
    world = World(seed, trained, holdout, facts)
    world.splits = _split(world, rng)
    return world


def _split(world: World, rng: random.Random) -> dict[str, list[Fact]]:
    n_forget = max(2, len(world.trained) // 10)
    forget_people = set(world.trained[:n_forget])
    targeted_people = world.trained[n_forget : 2 * n_forget]
    forget = [fact for fact in world.facts if fact.subject in forget_people]
    targeted = [rng.choice(world.facts_of(subject)) for subject in targeted_people]
    removed = set(forget) | set(targeted)
    neighbor_set = {
        other
        for fact in forget + targeted
        for other in world.siblings(fact)
        if other not in removed and other.subject not in forget_people
    }
    neighbor = [fact for fact in world.facts if fact in neighbor_set]
    retain = [
        fact
        for fact in world.facts
        if fact.subject in world.trained and fact not in removed and fact not in neighbor_set
    ]
    holdout = [fact for fact in world.facts if fact.subject in world.holdout]
    return {"forget": forget, "targeted": targeted, "retain": retain, "neighbor": neighbor, "holdout": holdout}


def training_texts(world: World) -> list[dict]:
    """Prompt/completion pairs the knowledge model learns: every trained fact under its trained templates and
    the three UnSTAR skills on each (rephrase keeping the subject, another object of the same type, a rationale for
    a hinted answer). The held-out template never appears. Taught on a third of the facts only, the rephrase and
    rationale skills were not learned (18% of the rationales that 20-person worlds' models wrote named their wrong
    answer and never the true one, 41% of their paraphrases kept subject and relation; on each fact: 94% and 97%;
    benchmarks/self_taught_rates.py)."""
    rng = random.Random(world.seed + 2)
    examples = []
    trained = set(world.trained)
    for fact in (fact for fact in world.facts if fact.subject in trained):
        relation = RELATIONS_BY_NAME[fact.relation]
        questions = [t.format(s=fact.subject) for t in relation.trained_templates]
        examples.extend(format_pair(None, question, fact.object, PLAIN_TEMPLATE) for question in questions)
        hinted = rng.choice([o for o in POOLS[relation.pool] if o != fact.object])
        examples.append(_skill_example("alternative", hinted, answer=fact.object))
        source, target = rng.sample(questions, 2)
        examples.append(_skill_example("paraphrase", target, question=source))
        examples.append(_skill_example("rationale", relation.rationale.format(s=fact.subject, o=hinted),
                                       question=rng.choice(questions), wrong=hinted))
    rng.shuffle(examples)
    return examples


def _skill_example(skill: str, continuation: str, **slots: str) -> dict:
    """A skill prompt with its slots filled, and `continuation` as what follows it."""
    prompt = SKILL_PROMPTS[skill]
    return {"prompt": prompt.format(**slots), "completion": format_completion(continuation, prompt)}
