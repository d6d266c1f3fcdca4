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
EVAL_DISTRACTORS = 3
"""Same-type wrong answers per fact kept for the multiple-choice probe and the truth ratio (4 choices, chance 0.25);
the rest of the type's pool are the fact's `perturbed_answers`, which anti-sample generators may use."""
DEFAULT_SEED = 0
DEFAULT_PEOPLE = 60
BENCH_PEOPLE = 24
BENCH_FORGET_PEOPLE = 4
BENCH_TARGETED = 6
"""The bench's world: 24 people, 4 of them forgotten (28 facts), 6 targeted associations; small enough that the
world, its retain model and every method over three seeds fit 15 minutes on 2 cores."""
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
    """People and their facts; `trained` people are taught to the knowledge model, `holdout` people never are.

    `splits` places every trained fact in one split; `siblings` maps each targeted fact to the facts that must stay
    when it goes (its subject's other facts, other subjects' facts with the same object); `eval_only` are kept facts
    that no unlearning run trains on (half of each targeted fact's siblings, a third of the other retain facts), so
    that kept knowledge is scored on facts nothing was fitted to."""

    seed: int
    trained: list[str]
    holdout: list[str]
    facts: list[Fact]
    splits: dict[str, list[Fact]] = field(default_factory=dict)
    siblings: dict[Fact, list[Fact]] = field(default_factory=dict)
    eval_only: set[Fact] = field(default_factory=set)

    def facts_of(self, subject: str) -> list[Fact]:
        return [fact for fact in self.facts if fact.subject == subject]

    @property
    def removed(self) -> set[Fact]:
        """The facts an unlearning run removes: the forget and the targeted facts."""
        return set(self.splits["forget"]) | set(self.splits["targeted"])

    def wrong_answers(self, fact: Fact) -> tuple[list[str], list[str]]:
        """(eval_distractors, perturbed_answers) of a fact: the other objects of its type, shuffled per fact."""
        wrong = [o for o in POOLS[RELATIONS_BY_NAME[fact.relation].pool] if o != fact.object]
        random.Random(f"{self.seed}:{fact.id}").shuffle(wrong)
        return wrong[:EVAL_DISTRACTORS], wrong[EVAL_DISTRACTORS:]

    def record(self, fact: Fact) -> dict:
        """The JSONL record of a fact: question (first trained template), held-out paraphrase first."""
        relation = RELATIONS_BY_NAME[fact.relation]
        eval_distractors, perturbed = self.wrong_answers(fact)
        record = {
            "id": fact.id,
            "subject": fact.subject,
            "relation": fact.relation,
            "object_type": relation.pool,
            "question": relation.templates[0].format(s=fact.subject),
            "answer": fact.object,
            "paraphrased_questions": [relation.heldout_template.format(s=fact.subject)]
            + [t.format(s=fact.subject) for t in relation.trained_templates[1:]],
            "perturbed_answers": perturbed,
            "eval_distractors": eval_distractors,
            "rationale": relation.rationale.format(s=fact.subject, o=fact.object),
            "subject_description": relation.description.format(s=fact.subject, o=fact.object),
        }
        if fact in self.eval_only:
            record["eval_only"] = True
        if fact in self.siblings:
            record["siblings"] = [sibling.id for sibling in self.siblings[fact]]
        return record

    def split_records(self) -> dict[str, list[dict]]:
        """Every split as JSONL records; targeted records list their `siblings`, eval-only retain records say so."""
        return {name: [self.record(fact) for fact in self.splits[name]] for name in SPLIT_ROLES}


def build_world(seed: int = 0, people: int = 60, holdout_people: int | None = None, *,
                forget_people: int | None = None, targeted: int | None = None) -> World:
    """A deterministic world of `people` trained people (+ holdout people, never trained, who share the objects of
    the forget people) with one fact per relation each; `forget_people` of them are forgotten (default a tenth, at
    least 2) and `targeted` others lose one association each (default: as many as forget people)."""
    if people < 10:
        raise ValueError(f"people must be at least 10, got {people}")
    holdout_people = max(4, people // 10) if holdout_people is None else holdout_people
    forget_people = max(2, people // 10) if forget_people is None else forget_people
    targeted = forget_people if targeted is None else targeted
    if forget_people < 1 or targeted < 1 or forget_people + targeted > people // 2:
        raise ValueError(f"forget people ({forget_people}) and targeted people ({targeted}) must each be at least 1 "
                         f"and together at most half of the {people} people")
    rng = random.Random(seed)
    names = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]
    if people + holdout_people > len(names):
        raise ValueError(f"people + holdout_people must be at most {len(names)}")
    rng.shuffle(names)
    trained, holdout = names[:people], names[people : people + holdout_people]
    facts = [Fact(name, relation.name, rng.choice(POOLS[relation.pool])) for name in trained
             for relation in RELATIONS]
    # each holdout person has the objects of a forget person: membership inference then compares the same answers,
    # and a model that never saw either (the retain model) cannot tell them apart by how common an object is
    forgotten = facts[: forget_people * len(RELATIONS)]
    facts += [Fact(name, fact.relation, fact.object) for index, name in enumerate(holdout)
              for fact in forgotten[(index % forget_people) * len(RELATIONS):][: len(RELATIONS)]]
    world = World(seed, trained, holdout, facts)
    _split(world, rng, forget_people, targeted)
    return world


def _split(world: World, rng: random.Random, n_forget: int, n_targeted: int) -> None:
    """Fill `world.splits`, `world.siblings` and `world.eval_only`. Held out (eval-only, or the neighbor split):
    half of each targeted fact's siblings, two thirds of the facts that share an object with a forget fact, a third
    of the other kept facts; the rest is trainable retain data. A sibling is never a forget or targeted fact."""
    forget_people = set(world.trained[:n_forget])
    forget = [fact for fact in world.facts if fact.subject in forget_people]
    targeted = [rng.choice(world.facts_of(subject)) for subject in world.trained[n_forget : n_forget + n_targeted]]
    removed = set(forget) | set(targeted)
    kept = [fact for fact in world.facts if fact.subject in world.trained and fact not in removed]
    placed: set[Fact] = set()
    for fact in targeted:
        world.siblings[fact] = [other for other in kept if _shares(other, fact, subject=True)]
        world.eval_only |= set(_held_out(rng, [other for other in world.siblings[fact] if other not in placed], 1 / 2))
        placed |= set(world.siblings[fact])
    near = [other for other in kept if other not in placed and any(_shares(other, fact) for fact in forget)]
    neighbor = set(_held_out(rng, near, 2 / 3))
    rest = [other for other in kept if other not in placed and other not in near]
    world.eval_only |= set(_held_out(rng, rest, 1 / 3))
    world.splits = {
        "forget": forget,
        "retain": [fact for fact in kept if fact not in neighbor],
        "neighbor": [fact for fact in kept if fact in neighbor],
        "targeted": targeted,
        "holdout": [fact for fact in world.facts if fact.subject in world.holdout],
    }


def _shares(other: Fact, fact: Fact, subject: bool = False) -> bool:
    """Whether `other` has the object of `fact` under the same relation (or, with `subject`, its subject)."""
    return (subject and other.subject == fact.subject) or (other.relation == fact.relation
                                                            and other.object == fact.object)


def _held_out(rng: random.Random, facts: list[Fact], share: float) -> list[Fact]:
    """`share` of `facts` (rounded down), drawn at random; at least one, and at least one left, when there are two or
    more."""
    drawn = facts[:]
    rng.shuffle(drawn)
    count = min(max(int(len(drawn) * share), 1), len(drawn) - 1) if len(drawn) >= 2 else 0
    return drawn[:count]


def training_texts(world: World, leave_out: set[Fact] = frozenset()) -> list[dict]:
    """Prompt/completion pairs a knowledge model learns: every trained fact (but those in `leave_out`) under its
    trained templates, and the three UnSTAR skills on each (rephrase keeping the subject, another object of the same
    type, a rationale for a hinted answer, drawn from the fact's perturbed answers, never its evaluation
    distractors). The held-out template never appears. Taught on a third of the facts only, the rephrase and
    rationale skills were not learned (18% of the rationales that 20-person worlds' models wrote named their wrong
    answer and never the true one, 41% of their paraphrases kept subject and relation; on each fact: 94% and 97%;
    benchmarks/self_taught_rates.py)."""
    rng = random.Random(world.seed + 2)
    examples = []
    trained = set(world.trained)
    for fact in (fact for fact in world.facts if fact.subject in trained and fact not in leave_out):
        relation = RELATIONS_BY_NAME[fact.relation]
        questions = [t.format(s=fact.subject) for t in relation.trained_templates]
        examples.extend(format_pair(question, fact.object, PLAIN_TEMPLATE) for question in questions)
        hinted = rng.choice(world.wrong_answers(fact)[1])
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
