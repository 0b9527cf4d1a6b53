"""Answer extraction for evaluation and preference data: the rule-based extractor (default, and the
fallback) and the xFinder judge.

xFinder is our own implementation of the original's judging (docs/usage.md, "Evaluation, inference, LoRA merge"): the
``IAAR-Shanghai/xFinder-qwen1505`` checkpoint (or a local copy) run through an ms-swift engine under the
model type and prompt template registered in ``trainer.models.xfinder``; the ``xfinder`` package is not
used (CC BY-NC-ND, pins torch 2.3.1). Its user text, answer range and comparator are the original's:

* user text: the question and the model output, each in triple double quotes, the answer range, then
  "Key extracted answer: " (``xfinder_prompt``), under the system prompt ``XFINDER_SYSTEM``;
* answer range: the JSON list of [letter, option] pairs, serialised by ``json.dumps`` with its defaults
  (ASCII escapes), as the original sends it. The original has four options (A-D); more options get the
  next letters (E, F, ...), an extension of ours;
* comparator: an extracted string (stripped, trailing dots removed, lower-cased) is option X when it equals
  X's letter or X's text (normalised the same way). The original asks only whether it names the gold option,
  so when two options have the same normalised text (B ``green``, D ``green.``) an extracted ``green`` is
  correct for gold B and for gold D; given the gold (``parse_xfinder``'s ``gold``), ours returns the gold
  letter in that case, the original's verdict;
* decoding: greedy, pinned (temperature 0), at most 100 new tokens.

Where xFinder gives no option ("[No valid answer]", anything outside the answer range) the rule-based
extractor fills in; an item that neither yields counts as an extraction failure.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from trainer.answer import LETTERS, extract_choice
from trainer.engine import ModelSpec, build_engine, choose_backend, generate, new_vllm_engine
from trainer.model_loading import check_no_remote_code
from trainer.models.xfinder import MODEL_TYPE, register

XFINDER_SYSTEM = ('You are a help assistant tasked with extracting the precise key answer from given output '
                  'sentences.')
XFINDER_FAILURES = ('[No valid answer]', '[Error in inference]')
XFINDER_CHECKPOINT = 'IAAR-Shanghai/xFinder-qwen1505'
XFINDER_MAX_NEW_TOKENS = 100
# The judge's own vLLM engine shares the GPU with the evaluated model's (0.45): a 0.5B model needs little.
JUDGE_GPU_MEMORY_UTILIZATION = 0.2
JUDGE_MAX_MODEL_LEN = 8192


@dataclass(frozen=True)
class Extraction:
    """One item's extracted answer: ``choice`` (a letter or None), the extractor that gave it
    (``'xfinder'``, ``'rule'`` or None when none did), xFinder's raw answer (None without xFinder) and each
    judge's own letter (``{'rule': ..., 'xfinder': ...}``: reported side by side, docs/evaluation.md)."""
    choice: Optional[str]
    source: Optional[str]
    judge_output: Optional[str] = None
    judges: Dict[str, Optional[str]] = field(default_factory=dict)


def answer_range(options: Sequence[str]) -> str:
    """The original's answer range: ``[["A", "opt"], ...]`` as ``json.dumps`` writes it by default."""
    if len(options) > len(LETTERS):
        raise ValueError(f'at most {len(LETTERS)} options are supported, got {len(options)}')
    return json.dumps([[LETTERS[i], opt] for i, opt in enumerate(options)])


def xfinder_prompt(question: str, output: str, options: Sequence[str]) -> str:
    """The xFinder user text for one model output."""
    return (f'Question: """{question}"""\n\nOutput sentences: """{output}"""\n\n'
            f'Answer range: {answer_range(options)}\n\nKey extracted answer: ')


def _normalise(text: str) -> str:
    """The original comparator's normalisation: strip, drop trailing dots, lower-case."""
    return text.strip().rstrip('.').lower()


def xfinder_matches(extracted: str, options: Sequence[str], index: int) -> bool:
    """The original comparator: whether xFinder's ``extracted`` string names option ``index`` (its letter
    or its text)."""
    text = _normalise(extracted)
    return text == LETTERS[index].lower() or text == _normalise(options[index])


def parse_xfinder(extracted: str, options: Sequence[str], gold: Optional[int] = None) -> Optional[str]:
    """xFinder's answer as a letter: the option whose letter it is, else an option whose text it is (the
    comparator of ``xfinder_matches``): ``gold``'s (an option index) when its text is among them, as the
    original, which compares with the gold option only, counts it; else the first. None for "[No valid
    answer]" and anything outside the range."""
    if extracted.strip() in XFINDER_FAILURES:
        return None
    for i in range(len(options)):
        if _normalise(extracted) == LETTERS[i].lower():
            return LETTERS[i]
    hits = [i for i in range(len(options)) if xfinder_matches(extracted, options, i)]
    if gold is not None and gold in hits:
        return LETTERS[gold]
    return LETTERS[hits[0]] if hits else None


class RuleExtractor:
    """The rule-based extractor (``trainer.answer.extract_choice``)."""
    name = 'rule'

    def extract(self, questions: List[str], outputs: List[str], options: List[Sequence[str]],
                golds: Optional[Sequence[int]] = None) -> List[Extraction]:
        """One ``Extraction`` per output (``golds`` is not used: the rule judge reads no gold)."""
        choices = [extract_choice(o, opts) for o, opts in zip(outputs, options, strict=True)]
        return [Extraction(c, 'rule' if c else None, judges={'rule': c}) for c in choices]

    def __call__(self, questions: List[str], outputs: List[str], options: List[Sequence[str]],
                 golds: Optional[Sequence[int]] = None) -> List[Optional[str]]:
        """One letter (or None) per output (``golds``: as in ``extract``)."""
        return [e.choice for e in self.extract(questions, outputs, options, golds)]


def build_judge_engine(model: str, backend: str = 'auto', batch_size: int = 16) -> Any:
    """An ms-swift engine for the xFinder checkpoint ``model`` under the ``xfinder_qwen1505`` model type.

    vLLM is built here (text only, a small share of GPU memory) rather than by ``trainer.engine.build_engine``,
    whose vLLM arguments are those of the evaluated speech model (one audio per prompt, LoRA)."""
    register()
    if choose_backend(backend, MODEL_TYPE) == 'vllm':
        check_no_remote_code([model], False)
        return new_vllm_engine(model, batch_size, model_type=MODEL_TYPE, max_model_len=JUDGE_MAX_MODEL_LEN,
                               gpu_memory_utilization=JUDGE_GPU_MEMORY_UTILIZATION)
    return build_engine(ModelSpec(base=model, model_type=MODEL_TYPE), 'transformers', batch_size)


class XFinderExtractor:
    """xFinder judged through an ms-swift engine; rule-based extraction where xFinder finds nothing."""
    name = 'xfinder'

    def __init__(self, model: str = XFINDER_CHECKPOINT, backend: str = 'auto', batch_size: int = 16,
                 engine: Any = None) -> None:
        """``engine``: an engine already built by ``build_judge_engine(model, ...)`` (else one is built)."""
        self.model = model
        self.engine = engine if engine is not None else build_judge_engine(model, backend, batch_size)
        self.spec = ModelSpec(base=model, model_type=MODEL_TYPE)

    @staticmethod
    def requests(questions: List[str], outputs: List[str],
                 options: List[Sequence[str]]) -> List[Tuple[List[Dict], List[str]]]:
        """The judge's (messages, audios) requests: the xFinder system prompt and user text per output."""
        return [([{'role': 'system', 'content': XFINDER_SYSTEM},
                  {'role': 'user', 'content': xfinder_prompt(q, o, opts)}], [])
                for q, o, opts in zip(questions, outputs, options, strict=True)]

    def judge(self, questions: List[str], outputs: List[str], options: List[Sequence[str]]) -> List[str]:
        """xFinder's raw answers (stripped), greedy, at most 100 new tokens."""
        if not outputs:
            return []
        judged = generate(self.engine, self.requests(questions, outputs, options), self.spec, use_adapter=False,
                          max_new_tokens=XFINDER_MAX_NEW_TOKENS, temperature=0.0)
        return [j.strip() for j in judged]

    def extract(self, questions: List[str], outputs: List[str], options: List[Sequence[str]],
                golds: Optional[Sequence[int]] = None) -> List[Extraction]:
        """One ``Extraction`` per output: xFinder's option, else the rule-based extractor's. ``golds``: the gold
        option indices, for the original comparator's verdict on duplicate option texts (``parse_xfinder``)."""
        judged = self.judge(questions, outputs, options)
        rule = RuleExtractor().extract(questions, outputs, options)
        golds = list(golds) if golds is not None else [None] * len(outputs)
        found = []
        for j, opts, r, gold in zip(judged, options, rule, golds, strict=True):
            letter = parse_xfinder(j, opts, gold)
            judges = {'rule': r.choice, 'xfinder': letter}
            found.append(Extraction(letter, 'xfinder', j, judges) if letter
                         else Extraction(r.choice, r.source, j, judges))
        return found

    def __call__(self, questions: List[str], outputs: List[str], options: List[Sequence[str]],
                 golds: Optional[Sequence[int]] = None) -> List[Optional[str]]:
        """One letter (or None) per output (``golds``: as in ``extract``)."""
        return [e.choice for e in self.extract(questions, outputs, options, golds)]


Extractor = Union[RuleExtractor, XFinderExtractor]


def get_extractor(name: str = 'rule', xfinder_model: Optional[str] = None, backend: str = 'auto',
                  batch_size: int = 16) -> Extractor:
    """The extractor ``name`` (rule or xfinder; xFinder from ``xfinder_model``, default the hub checkpoint)."""
    if name == 'rule':
        return RuleExtractor()
    if name == 'xfinder':
        return XFinderExtractor(xfinder_model or XFINDER_CHECKPOINT, backend, batch_size)
    raise ValueError(f'extractor must be rule or xfinder, got {name!r}')
