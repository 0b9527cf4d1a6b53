"""A seeded closed world of multiple-choice questions that need one short reasoning step (docs/miniature.md,
"The world").

Three templates, each question with four options (one correct) and a thinking text that states the intermediate
step (the ``<think>`` part of the systhink answer, ``trainer.prompts.systhink_answer``):

- ``arithmetic``: "Ann has 3 apples and buys 4 more. How many apples does Ann have now?" (thinking
  "3 plus 4 is 7."); sums and differences of numbers 2..9; options the aligned block of four numbers holding
  the answer (4, 5, 6, 7).
- ``comparison``: "Tom has 7 coins and Sue has 4 coins. Who has more coins?" (thinking "Tom has 7 and Sue has
  4, and 7 is more than 4, so Tom has more."); two people, counts 2..9; options four names, one per name slot.
- ``knowledge``: a generated table puts each invented town in a region (north, south, east, west) and gives
  each region an animal, a roof colour, a tree and a fruit. "Ann lives in the town of Brill. Which animal lives
  there?" needs the town's region first (thinking "Brill lies in the north, and the fox lives in the north.");
  options the attribute's four values. The model learns the table only from the training questions.

Splits are held out by question values, a key per template (``Item.holdout``): the numbers and object of an
arithmetic problem (or only the numbers, ``arithmetic_holdout='numbers'``), the pair of people of a
comparison, the (town, attribute) pair of a knowledge question. A key is in exactly one split, so no test
question's values occur in training. The knowledge split is structured so that the test stays answerable from
training: each town has exactly one attribute held out (so its region is learned from its other attributes),
and every (region, attribute) value is asked in training through other towns.

Options are listed in a canonical order (``_canonical``), so a letter is a fixed function of the answer.

Everything is a pure function of ``WorldConfig`` (``random.Random`` seeded with strings, which Python hashes
with SHA-512: the same on every machine and run). The word list is closed (the constants below), so a small
tokenizer covers it.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Literal, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from scripts.dataset_building.mmlu import build_prompt_for_tts
from trainer import prompts
from trainer.schema import LETTERS

SPLITS = ('train', 'validation', 'test')
TEMPLATES = ('arithmetic', 'comparison', 'knowledge')
SOURCE = 'miniature'
N_OPTIONS = 4

# --- the closed word list -------------------------------------------------------------------------------------
NAMES = ('Ann', 'Tom', 'Sue', 'Max', 'Ben', 'Eve', 'Sam', 'Kim', 'Joe', 'Amy', 'Dan', 'Liz', 'Meg', 'Ned',
         'Rob', 'Tess')
OBJECTS = ('apples', 'eggs', 'cups', 'books', 'pens', 'shells', 'coins', 'hats')
NUMBERS = tuple(range(2, 10))   # operands; no "1 apples", and every sum and difference stays below 20
ADD_VERBS = ('buys', 'finds', 'gets')
SUB_VERBS = ('gives', 'loses', 'sells')   # "gives 3 to Tom", "loses 3", "sells 3"
TOWNS = ('Brill', 'Dorn', 'Fenn', 'Galt', 'Holm', 'Kell', 'Lorn', 'Mabb', 'Nesk', 'Pell', 'Quill', 'Rask',
         'Sorn', 'Tove', 'Vell', 'Wick', 'Yarr', 'Zell', 'Barrow', 'Corrin', 'Dunmere', 'Elwick', 'Farrow',
         'Gorse', 'Hatter', 'Ivel', 'Jesk', 'Kirrin', 'Lusk', 'Morrow', 'Nettle', 'Ossett')
REGIONS = ('north', 'south', 'east', 'west')
ATTRIBUTES: Dict[str, Tuple[str, ...]] = {   # one value per region (a seeded permutation decides which)
    'animal': ('fox', 'bear', 'owl', 'deer'),
    'colour': ('red', 'blue', 'green', 'yellow'),
    'tree': ('oak', 'pine', 'elm', 'birch'),
    'fruit': ('plums', 'figs', 'limes', 'grapes'),
}
KNOWLEDGE_LEADS = ('{name} lives in the town of {town}.', '{name} visits the town of {town}.')
KNOWLEDGE_QUESTIONS = {
    'animal': 'Which animal lives there?',
    'colour': 'What colour are the roofs there?',
    'tree': 'Which tree grows there?',
    'fruit': 'Which fruit do people grow there?',
}
KNOWLEDGE_FACTS = {   # the second half of the thinking text
    'animal': 'the {value} lives in the {region}',
    'colour': 'roofs in the {region} are {value}',
    'tree': 'the {value} grows in the {region}',
    'fruit': 'people in the {region} grow {value}',
}

HoldoutKey = Tuple[str, ...]

# --- configuration and results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldConfig:
    """Everything that shapes the world; the same config gives the same items.

    n_test: 1200 by default, enough for a 95 % interval of at most +-2.9 points at 50 % accuracy
    (1.96 * sqrt(0.25 / 1200)); the items of a split are spread evenly over the templates.
    test_fraction, validation_fraction: the share of each template's hold-out keys in those splits (the
    knowledge template holds out one attribute per town instead and divides those keys in the same ratio).
    """
    seed: int = 0
    n_train: int = 6000
    n_validation: int = 300
    n_test: int = 1200
    n_towns: int = 24
    test_fraction: float = 0.2
    validation_fraction: float = 0.1
    arithmetic_holdout: Literal['numbers_object', 'numbers'] = 'numbers_object'
    # the generator's version, part of every cache key built from the config (tokenizer, model, datasets):
    # bump it when the rendering changes. 2: canonical option order, two-person comparisons; 3: the comparison's
    # thinking names whether the question asks the statement's word or its opposite; 4: the two words side by side;
    # 5: the thinking restates the fact with the comparative instead; 6: comparisons of counts.
    version: int = 6

    def __post_init__(self) -> None:
        if not 8 <= self.n_towns <= len(TOWNS) or self.n_towns % len(REGIONS):
            raise ValueError(f"WorldConfig: n_towns={self.n_towns} must be a multiple of {len(REGIONS)} "
                             f"in 8..{len(TOWNS)}")
        if not (0 < self.test_fraction and 0 < self.validation_fraction
                and self.test_fraction + self.validation_fraction < 1):
            raise ValueError(f"WorldConfig: test_fraction={self.test_fraction} and validation_fraction="
                             f"{self.validation_fraction} must be positive with a sum below 1")
        if min(self.n_train, self.n_validation, self.n_test) < len(TEMPLATES):
            raise ValueError(f"WorldConfig: every split needs at least {len(TEMPLATES)} items")
        if self.arithmetic_holdout not in ('numbers_object', 'numbers'):
            raise ValueError(f"WorldConfig: arithmetic_holdout={self.arithmetic_holdout!r} is not "
                             f"'numbers_object' or 'numbers'")

    def size(self, split: str) -> int:
        """The number of items of split."""
        return {'train': self.n_train, 'validation': self.n_validation, 'test': self.n_test}[split]


@dataclass(frozen=True)
class KnowledgeTable:
    """The facts of the knowledge template: town -> region, and attribute -> region -> value."""
    town_region: Mapping[str, str]
    values: Mapping[str, Mapping[str, str]]

    def region_of(self, town: str) -> str:
        """The region the town lies in."""
        return self.town_region[town]

    def value(self, attribute: str, region: str) -> str:
        """The attribute's value in the region (e.g. value('animal', 'north') -> 'fox')."""
        return self.values[attribute][region]


@dataclass(frozen=True)
class Item:
    """One question of the world. answer_index is 0-based into options; holdout is the split's key."""
    key: str
    split: str
    template: str
    question: str
    options: Tuple[str, ...]
    answer_index: int
    thinking: str
    holdout: HoldoutKey

    @property
    def answer(self) -> str:
        """The correct option's text."""
        return self.options[self.answer_index]

    @property
    def letter(self) -> str:
        """The correct option's letter (A-D)."""
        return LETTERS[self.answer_index]

    @property
    def prompt_for_tts(self) -> str:
        """Question and lettered options: the text prompt and what the speech says (as every builder)."""
        return build_prompt_for_tts(self.question, self.options)

    @property
    def systhink_answer(self) -> str:
        """The assistant answer in the systhink format: the thinking, then "The answer is X."."""
        return prompts.systhink_answer(self.thinking, self.letter)


@dataclass(frozen=True)
class World:
    """The generated world: its config, the knowledge table and the items of each split."""
    config: WorldConfig
    table: KnowledgeTable
    splits: Mapping[str, Tuple[Item, ...]] = field(repr=False)

    def items(self) -> Iterator[Item]:
        """Every item, split by split (train, validation, test)."""
        for split in SPLITS:
            yield from self.splits[split]


# --- question specifications (the values of one question) ---------------------------------------------------


class ArithmeticSpec(NamedTuple):
    """op 'add' or 'sub'; a, b the operands (sub: a > b); other: the receiver of "gives" (else '')."""
    op: str
    a: int
    b: int
    obj: str
    name: str
    verb: str
    other: str = ''


class ComparisonSpec(NamedTuple):
    """Two people (in the order of the question) with a and b of obj (a != b); phrasing: which question sentence."""
    first: str
    second: str
    a: int
    b: int
    obj: str
    phrasing: int


class KnowledgeSpec(NamedTuple):
    """The town asked about, the attribute asked for, the person of the lead sentence and its phrasing."""
    town: str
    attribute: str
    name: str
    lead: int


Spec = Union[ArithmeticSpec, ComparisonSpec, KnowledgeSpec]
Rendered = Tuple[str, Tuple[str, ...], int, str]   # question, options, answer_index, thinking


def _canonical(answer: str, options: Sequence[str]) -> Tuple[Tuple[str, ...], int]:
    """The options in their canonical order (as given) and the answer's index.

    Every template lists its options in a fixed order of the world (numbers ascending in an aligned block of
    four, names by slot, attribute values in the table's order), so an answer's letter is a fixed function of
    the answer: the small model need not learn an in-context lookup of the option list, which it did not learn
    in 77 000 examples with shuffled options (docs/miniature.md). The letters stay uniform over the questions."""
    options = tuple(options)
    if len(options) != N_OPTIONS or len(set(options)) != N_OPTIONS or answer not in options:
        raise ValueError(f"options must be {N_OPTIONS} distinct strings holding the answer {answer!r}, "
                         f"got {options}")
    return options, options.index(answer)


def name_slot(name: str) -> int:
    """A name's option slot (its letter whenever it is an option): its place in NAMES modulo four."""
    return NAMES.index(name) % N_OPTIONS


def arithmetic_answer(spec: ArithmeticSpec) -> int:
    """The number the question asks for."""
    return spec.a + spec.b if spec.op == 'add' else spec.a - spec.b


def render_arithmetic(spec: ArithmeticSpec, rng: random.Random) -> Rendered:
    """Question, options, answer index and thinking of an arithmetic problem.

    The options are the aligned block of four numbers that holds the answer (4..7 for 6, 16..19 for 17), in
    ascending order: the distractors are the answer's neighbours, and the letter is the answer modulo four."""
    ans = arithmetic_answer(spec)
    if spec.op == 'add':
        event, step = f"{spec.verb} {spec.b} more", f"{spec.a} plus {spec.b} is {ans}."
    else:
        event = f"gives {spec.b} to {spec.other}" if spec.verb == 'gives' else f"{spec.verb} {spec.b}"
        step = f"{spec.a} minus {spec.b} is {ans}."
    question = (f"{spec.name} has {spec.a} {spec.obj} and {event}. "
                f"How many {spec.obj} does {spec.name} have now?")
    first = ans - ans % N_OPTIONS
    options, index = _canonical(str(ans), [str(first + i) for i in range(N_OPTIONS)])
    return question, options, index, step


COMPARISON_QUESTIONS = ('Who has more {obj}?', 'Which of them has more {obj}?')


def comparison_answer(spec: ComparisonSpec) -> str:
    """The person with more."""
    return spec.first if spec.a > spec.b else spec.second


def render_comparison(spec: ComparisonSpec, rng: random.Random) -> Rendered:
    """Question, options, answer index and thinking of a comparison of two people's counts ("Tom has 7 coins and
    Sue has 4 coins. Who has more coins?").

    The thinking restates the counts in the question's order, compares the numbers, then names the person
    ("Tom has 7 and Sue has 4, and 7 is more than 4, so Tom has more."): each of its words depends on one thing
    stated before it. Versions 2-5 compared people by a stated relation ("Sue is younger than Tom. Who is
    older?"), whose answer is the exclusive or of the statement's and the question's direction; the small model
    did not learn it (docs/miniature.md). The options are four names, one per slot (``name_slot``) in slot
    order: the two people (their slots differ) and a seeded name for each other slot."""
    ans = comparison_answer(spec)
    question = (f"{spec.first} has {spec.a} {spec.obj} and {spec.second} has {spec.b} {spec.obj}. "
                + COMPARISON_QUESTIONS[spec.phrasing].format(obj=spec.obj))
    word = 'more' if spec.a > spec.b else 'less'
    thinking = (f"{spec.first} has {spec.a} and {spec.second} has {spec.b}, and {spec.a} is {word} than {spec.b}, "
                f"so {ans} has more.")
    by_slot = {name_slot(spec.first): spec.first, name_slot(spec.second): spec.second}
    for slot in range(N_OPTIONS):
        if slot not in by_slot:
            by_slot[slot] = rng.choice([n for n in NAMES if name_slot(n) == slot])
    options, index = _canonical(ans, [by_slot[slot] for slot in range(N_OPTIONS)])
    return question, options, index, thinking


def knowledge_answer(spec: KnowledgeSpec, table: KnowledgeTable) -> str:
    """The attribute's value in the town's region."""
    return table.value(spec.attribute, table.region_of(spec.town))


def render_knowledge(spec: KnowledgeSpec, table: KnowledgeTable, rng: random.Random) -> Rendered:
    """Question, options (the attribute's four values) and thinking (the town's region, then the region's value)
    of a knowledge question."""
    region = table.region_of(spec.town)
    ans = knowledge_answer(spec, table)
    question = (KNOWLEDGE_LEADS[spec.lead].format(name=spec.name, town=spec.town) + ' '
                + KNOWLEDGE_QUESTIONS[spec.attribute])
    fact = KNOWLEDGE_FACTS[spec.attribute].format(value=ans, region=region)
    thinking = f"{spec.town} lies in the {region}, and {fact}."
    options, index = _canonical(ans, ATTRIBUTES[spec.attribute])
    return question, options, index, thinking

# --- enumeration, hold-out keys and splits --------------------------------------------------------------------


def arithmetic_specs() -> List[ArithmeticSpec]:
    """Every arithmetic question the world can ask, in a fixed order (the receiver of "gives" is the next name)."""
    specs = []
    for a, b in itertools.product(NUMBERS, NUMBERS):
        for obj, name in itertools.product(OBJECTS, NAMES):
            specs += [ArithmeticSpec('add', a, b, obj, name, verb) for verb in ADD_VERBS]
            if a > b:
                other = NAMES[(NAMES.index(name) + 1) % len(NAMES)]
                specs += [ArithmeticSpec('sub', a, b, obj, name, verb, other if verb == 'gives' else '')
                          for verb in SUB_VERBS]
    return specs


def comparison_specs() -> List[ComparisonSpec]:
    """Every comparison (ordered pair of people of different slots, their two different counts, object, question
    phrasing), in a fixed order."""
    return [ComparisonSpec(first, second, a, b, obj, phrasing)
            for first, second in itertools.permutations(NAMES, 2) if name_slot(first) != name_slot(second)
            for a, b in itertools.permutations(NUMBERS, 2) for obj in OBJECTS
            for phrasing in range(len(COMPARISON_QUESTIONS))]


def knowledge_specs(table: KnowledgeTable) -> List[KnowledgeSpec]:
    """Every knowledge question about the table's towns, in a fixed order."""
    return [KnowledgeSpec(town, attribute, name, lead) for town in table.town_region for attribute in ATTRIBUTES
            for name in NAMES for lead in range(len(KNOWLEDGE_LEADS))]


def holdout_key(spec: Spec, arithmetic_holdout: str = 'numbers_object') -> HoldoutKey:
    """The values a split holds out: (op, a, b, object) or (op, a, b) of arithmetic, the sorted three people of
    a comparison's pair, (town, attribute) of a knowledge question."""
    if isinstance(spec, ArithmeticSpec):
        key = (spec.op, str(spec.a), str(spec.b))
        return key + (spec.obj,) if arithmetic_holdout == 'numbers_object' else key
    if isinstance(spec, ComparisonSpec):
        return tuple(sorted((spec.first, spec.second)))
    return (spec.town, spec.attribute)


def split_keys(keys: Sequence[HoldoutKey], rng: random.Random, test_fraction: float,
               validation_fraction: float) -> Dict[HoldoutKey, str]:
    """Each distinct key to one split: a seeded shuffle, the first test_fraction to test, the next
    validation_fraction to validation (at least one key each), the rest to train."""
    distinct = sorted(set(keys))
    rng.shuffle(distinct)
    n_test = max(1, round(len(distinct) * test_fraction))
    n_val = max(1, round(len(distinct) * validation_fraction))
    if n_test + n_val >= len(distinct):
        raise ValueError(f"{len(distinct)} hold-out keys are too few for test, validation and train")
    return {k: ('test' if i < n_test else 'validation' if i < n_test + n_val else 'train')
            for i, k in enumerate(distinct)}


def knowledge_split_keys(table: KnowledgeTable, rng: random.Random, test_fraction: float,
                         validation_fraction: float) -> Dict[HoldoutKey, str]:
    """(town, attribute) keys to splits, keeping the test answerable from training.

    Within each region the towns hold out the attributes in turn (town j of region r: attribute (j + r) mod 4),
    one each; the held-out keys go to test and validation in the ratio test_fraction : validation_fraction
    (seeded), every other key to train. So every town keeps three attributes in training (its region is
    learnable) and every (region, attribute) is asked in training about at least one other town."""
    attributes = list(ATTRIBUTES)
    held = []
    for r, region in enumerate(REGIONS):
        towns = [t for t in table.town_region if table.town_region[t] == region]
        held += [(town, attributes[(j + r) % len(attributes)]) for j, town in enumerate(towns)]
    rng.shuffle(held)
    n_test = round(len(held) * test_fraction / (test_fraction + validation_fraction))
    out = {(t, a): 'train' for t in table.town_region for a in attributes}
    out.update({k: ('test' if i < n_test else 'validation') for i, k in enumerate(held)})
    return out


def make_table(config: WorldConfig) -> KnowledgeTable:
    """The seeded knowledge table: the first n_towns towns, shuffled, n_towns / 4 to each region; each
    attribute's values permuted over the regions."""
    rng = random.Random(f"{config.seed}:table")
    towns = list(TOWNS[:config.n_towns])
    rng.shuffle(towns)
    town_region = {t: REGIONS[i % len(REGIONS)] for i, t in enumerate(towns)}
    values = {}
    for attribute, vals in ATTRIBUTES.items():
        perm = list(vals)
        rng.shuffle(perm)
        values[attribute] = dict(zip(REGIONS, perm, strict=True))
    return KnowledgeTable(town_region=dict(sorted(town_region.items())), values=values)


def render(spec: Spec, table: KnowledgeTable, rng: random.Random) -> Rendered:
    """Question, options, answer index and thinking of any spec."""
    if isinstance(spec, ArithmeticSpec):
        return render_arithmetic(spec, rng)
    if isinstance(spec, ComparisonSpec):
        return render_comparison(spec, rng)
    return render_knowledge(spec, table, rng)


def template_of(spec: Spec) -> str:
    """The template name of a spec."""
    return {ArithmeticSpec: 'arithmetic', ComparisonSpec: 'comparison', KnowledgeSpec: 'knowledge'}[type(spec)]


def split_pools(config: WorldConfig, table: KnowledgeTable) -> Dict[str, Dict[str, List[Spec]]]:
    """template -> split -> every spec whose hold-out key is in that split (enumeration order)."""
    pools: Dict[str, Dict[str, List[Spec]]] = {}
    for template, specs in (('arithmetic', arithmetic_specs()), ('comparison', comparison_specs()),
                            ('knowledge', knowledge_specs(table))):
        rng = random.Random(f"{config.seed}:split:{template}")
        keys = [holdout_key(s, config.arithmetic_holdout) for s in specs]
        if template == 'knowledge':
            assign = knowledge_split_keys(table, rng, config.test_fraction, config.validation_fraction)
        else:
            assign = split_keys(keys, rng, config.test_fraction, config.validation_fraction)
        pools[template] = {split: [] for split in SPLITS}
        for spec, key in zip(specs, keys, strict=True):
            pools[template][assign[key]].append(spec)
    return pools


def quotas(n: int) -> Dict[str, int]:
    """n items spread over the templates as evenly as possible (the first templates take the remainder)."""
    return {t: n // len(TEMPLATES) + (i < n % len(TEMPLATES)) for i, t in enumerate(TEMPLATES)}


def generate_world(config: Optional[WorldConfig] = None) -> World:
    """The world of config (default WorldConfig()): per split, distinct questions drawn without replacement
    from the split's pool of each template, rendered with a per-question seeded generator, shuffled, and keyed
    ``mini-<split>-<nnnnn>``. A pool smaller than its quota is a ValueError naming template and split."""
    config = config or WorldConfig()
    table = make_table(config)
    pools = split_pools(config, table)
    splits = {}
    for split in SPLITS:
        rng = random.Random(f"{config.seed}:sample:{split}")
        chosen: List[Spec] = []
        for template, quota in quotas(config.size(split)).items():
            pool = pools[template][split]
            if quota > len(pool):
                raise ValueError(f"WorldConfig: split {split!r} asks {quota} {template} questions but its "
                                 f"hold-out keys give only {len(pool)} distinct ones")
            chosen += rng.sample(pool, quota)
        rng.shuffle(chosen)
        items = []
        for i, spec in enumerate(chosen):
            question, options, index, thinking = render(spec, table,
                                                        random.Random(f"{config.seed}:render:{split}:{spec}"))
            items.append(Item(key=f"mini-{split}-{i:05d}", split=split, template=template_of(spec),
                              question=question, options=options, answer_index=index, thinking=thinking,
                              holdout=holdout_key(spec, config.arithmetic_holdout)))
        splits[split] = tuple(items)
    return World(config=config, table=table, splits=splits)
