"""Answer extraction for evaluation: the rule-based extractor (default, and the fallback) and an
xFinder backend written by us (reference 3.3: its prompt and comparator, run through our engines on
``IAAR-Shanghai/xFinder-qwen1505`` or a local copy; the ``xfinder`` package is not used: CC BY-NC-ND,
pins torch 2.3.1)."""
from __future__ import annotations

import json
from typing import List, Optional, Sequence

from trainer.answer import LETTERS, extract_choice

XFINDER_SYSTEM = ('You are a help assistant tasked with extracting the precise key answer from given output '
                  'sentences.')
XFINDER_FAILURES = ('[No valid answer]', '[Error in inference]')


def xfinder_prompt(question: str, output: str, options: Sequence[str]) -> str:
    """The xFinder user text (reference 3.3) with an alphabet-option answer range."""
    answer_range = json.dumps([[LETTERS[i], opt] for i, opt in enumerate(options)], ensure_ascii=False)
    return (f'Question: """{question}"""\n\nOutput sentences: """{output}"""\n\n'
            f'Answer range: {answer_range}\n\nKey extracted answer: ')


def parse_xfinder(extracted: str, options: Sequence[str]) -> Optional[str]:
    """xFinder's answer as a letter: a letter, or an option's text (reference 3.3 comparator)."""
    text = extracted.strip().rstrip('.').strip()
    if not text or text in XFINDER_FAILURES:
        return None
    letters = LETTERS[:len(options)]
    if len(text) == 1 and text.upper() in letters:
        return text.upper()
    for i, opt in enumerate(options):
        if text.lower() == opt.strip().rstrip('.').lower():
            return letters[i]
    return None


class RuleExtractor:
    name = 'rule'

    def __call__(self, questions: List[str], outputs: List[str], options: List[Sequence[str]]) -> List[Optional[str]]:
        return [extract_choice(o, opts) for o, opts in zip(outputs, options)]


class XFinderExtractor:
    """xFinder judged through an ms-swift engine; rule-based extraction where xFinder finds nothing."""
    name = 'xfinder'

    def __init__(self, model: str = 'IAAR-Shanghai/xFinder-qwen1505', backend: str = 'auto', batch_size: int = 16):
        from eval.engine import ModelSpec, build_engine
        self.spec = ModelSpec(base=model, model_type='qwen1half')
        self.engine = build_engine(self.spec, backend, batch_size)

    def __call__(self, questions, outputs, options):
        from eval.engine import generate
        requests = [([{'role': 'system', 'content': XFINDER_SYSTEM},
                      {'role': 'user', 'content': xfinder_prompt(q, o, opts)}], [])
                    for q, o, opts in zip(questions, outputs, options)]
        judged = generate(self.engine, requests, self.spec, use_adapter=False, max_new_tokens=100)
        rule = RuleExtractor()(questions, outputs, options)
        return [parse_xfinder(j, opts) or r for j, opts, r in zip(judged, options, rule)]


def get_extractor(name: str = 'rule', xfinder_model: Optional[str] = None, backend: str = 'auto'):
    if name == 'rule':
        return RuleExtractor()
    if name == 'xfinder':
        return XFinderExtractor(xfinder_model or 'IAAR-Shanghai/xFinder-qwen1505', backend)
    raise ValueError(f'extractor must be rule or xfinder, got {name!r}')
