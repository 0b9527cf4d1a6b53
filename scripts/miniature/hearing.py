"""The miniature's hearing probe (docs/miniature.md, "The hearing probe"): does a checkpoint hear a spoken question's
values right, apart from whether it reasons over them?

The model hears the question's clip with ``HEARING_PROMPT`` and answers the values the answer depends on, in the
order the question says them (``hearing_answer``):

- arithmetic: the two numbers and the verb between them ("Ann has 5 apples and gives 3 to Tom. ..." ->
  ``5 gives 3``): the verb decides between a sum and a difference;
- comparison: the two people and their counts ("Tom has 7 coins and Sue has 4 coins. ..." -> ``Tom 7 Sue 4``);
- knowledge: the town and the attribute asked for ("Ann lives in the town of Brill. Which animal lives there?"
  -> ``Brill animal``).

Names of the person of an arithmetic or knowledge question and the objects are left out: no answer depends on them.
The probe is scored exactly (the answer, with spaces collapsed, equals ``hearing_answer``), with greedy decoding
through the project's engine (``trainer.engine``, as ``eval.asr``). Stage 2 teaches the probe's answer format
(``probe_row``: the hearing rows of ``scripts.miniature.stages``), so the start and every arm can be asked.

    python -m scripts.miniature.hearing CHECKPOINT [--quick] [--split test] [--max_items N]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from scripts.miniature.world import ADD_VERBS, KNOWLEDGE_QUESTIONS, NAMES, SUB_VERBS, TOWNS
from trainer.prompts import AUDIO_TAG

HEARING_PROMPT = 'Say the values you hear in the question.'
HEARING_VERSION = 1   # part of every probe run's name: bump when the prompt or the answer's form changes
_WORDS = re.compile(r'[A-Za-z]+|\d+')
_VERBS = frozenset(ADD_VERBS + SUB_VERBS)


def hearing_answer(question: str, template: str) -> str:
    """The values of a world question the probe asks for (module docstring), space-separated.

    ``question``: the question sentence(s) without the options (the dataset's ``question`` column); ``template``:
    arithmetic | comparison | knowledge (its ``subject`` column). An unknown template is refused."""
    words = _WORDS.findall(question)
    if template == 'arithmetic':
        numbers = [w for w in words if w.isdigit()]
        verbs = [w for w in words if w in _VERBS]
        if len(numbers) != 2 or len(verbs) != 1:
            raise ValueError(f'hearing_answer: arithmetic question {question!r}: expected two numbers and one verb')
        return f'{numbers[0]} {verbs[0]} {numbers[1]}'
    if template == 'comparison':
        values = [w for w in words if w.isdigit() or w in NAMES]
        if len(values) != 4:
            raise ValueError(f'hearing_answer: comparison question {question!r}: expected two names and two counts')
        return ' '.join(values)
    if template == 'knowledge':
        towns = [w for w in words if w in TOWNS]
        attributes = [a for a, q in KNOWLEDGE_QUESTIONS.items() if question.endswith(q)]
        if len(towns) != 1 or len(attributes) != 1:
            raise ValueError(f'hearing_answer: knowledge question {question!r}: expected one town and one attribute')
        return f'{towns[0]} {attributes[0]}'
    raise ValueError(f'hearing_answer: unknown template {template!r} (arithmetic, comparison or knowledge)')


def row_answer(row: Mapping) -> str:
    """``hearing_answer`` of a world dataset row (its ``question`` and ``subject`` columns)."""
    return hearing_answer(row['question'], row['subject'])


def probe_messages(answer: Optional[str] = None) -> List[Dict[str, str]]:
    """ms-swift ``messages`` of the probe for the row's one clip (with the assistant turn when ``answer`` is given)."""
    messages = [{'role': 'user', 'content': AUDIO_TAG + HEARING_PROMPT}]
    if answer is not None:
        messages.append({'role': 'assistant', 'content': answer})
    return messages


def probe_row(row: Mapping, audio_path: str) -> Dict:
    """An SFT row teaching the probe on the row's clip: the stage-2 hearing rows
    (``trainer.data.prepare_warmstart_dataset(probe=probe_row)``)."""
    return {'messages': probe_messages(row_answer(row)), 'audios': [audio_path]}


def score(output: str, gold: str) -> bool:
    """Exact match after collapsing whitespace and dropping a final full stop."""
    return ' '.join(output.strip().rstrip('.').split()) == gold


def probe(checkpoint: Path, setting, cache_dir: Optional[Path] = None, split: str = 'test',
          max_items: Optional[int] = None, batch_size: Optional[int] = None) -> Dict:
    """The hearing accuracy of ``checkpoint`` (a full checkpoint or a LoRA adapter folder) on the first
    ``max_items`` (default ``setting.eval_items``) items of ``split`` of the setting's spoken world set.

    Returns ``{'hearing_acc': fraction, 'n': items, 'by_template': {template: fraction}, 'generated': items
    answered by this call, 'wall_seconds': the probe's seconds over every call that answered some (None when none
    are stored)}``. Answers are appended per batch to
    ``<cache>/miniature/hearing/<checkpoint digest>/<split>/results.jsonl`` and resumed (a torn last line is redone);
    the same call again reads them back without generating."""
    from tqdm import tqdm

    from scripts.miniature import stages
    from trainer import jsonl
    from trainer.data import write_clip
    from trainer.engine import build_engine, generate, resolve_model
    from trainer.schema import load_hf_dataset
    n_max = setting.eval_items if max_items is None else max_items
    dataset = stages.world_dataset(setting, True, cache_dir)
    ds = load_hf_dataset(str(dataset), split)
    ds = ds.select(range(min(n_max, len(ds))))
    checkpoint = Path(checkpoint).resolve()
    digest = hashlib.sha256(f'{checkpoint}|{dataset}|{HEARING_VERSION}|{setting.max_new_tokens}'.encode()).hexdigest()
    run_dir = stages._root(cache_dir) / 'hearing' / f'{checkpoint.name}-{digest[:12]}' / split
    results, wall_file = run_dir / 'results.jsonl', run_dir / 'wall_seconds.json'
    done = {r['key'] for r in jsonl.read(results)}
    todo = [i for i, k in enumerate(ds['key']) if k not in done]
    if todo:
        # the probe's own seconds, stored with each batch of answers, so that a later call reading them back (or
        # resuming a killed one) can report them
        stored, t0 = _stored_seconds(wall_file) or 0.0, time.perf_counter()
        spec = resolve_model(str(checkpoint), None, stages.MODEL_TYPE)
        size = batch_size or setting.eval_batch_size
        engine = build_engine(spec, 'transformers', size)
        audio_dir = stages._root(cache_dir) / 'hearing' / '_audio'
        for start in tqdm(range(0, len(todo), size), desc=f'hearing {checkpoint.name}'):
            rows = [ds[i] for i in todo[start:start + size]]
            requests = [(probe_messages(), [write_clip(row, 'miniature', audio_dir)]) for row in rows]
            outputs = generate(engine, requests, spec, True, setting.max_new_tokens)
            jsonl.append(results, [{'key': row['key'], 'template': row['subject'], 'output': out,
                                    'gold': row_answer(row), 'correct': score(out, row_answer(row))}
                                   for row, out in zip(rows, outputs, strict=True)])
            jsonl.write_json_atomic(wall_file, {'seconds': round(stored + time.perf_counter() - t0, 1)})
    keys = set(ds['key'])
    items = [r for r in jsonl.read(results) if r['key'] in keys]
    by: Dict[str, List[bool]] = {}
    for r in items:
        by.setdefault(r['template'], []).append(bool(r['correct']))
    n = len(items)
    return {'hearing_acc': round(sum(r['correct'] for r in items) / n, 4) if n else None, 'n': n,
            'by_template': {t: round(sum(v) / len(v), 4) for t, v in sorted(by.items())},
            'generated': len(todo), 'wall_seconds': _stored_seconds(wall_file)}


def _stored_seconds(path: Path) -> Optional[float]:
    """The seconds a probe folder's ``wall_seconds.json`` stores; None when it is missing or unreadable (a torn
    write is only a lost time, never an error)."""
    try:
        return float(json.loads(path.read_text())['seconds'])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command line: probe one checkpoint and print the result as JSON."""
    from scripts.miniature import stages
    p = argparse.ArgumentParser(description='The miniature hearing probe: are the spoken values heard right?')
    p.add_argument('checkpoint', type=Path)
    p.add_argument('--quick', action='store_true', help='the toy QUICK setting (tests)')
    p.add_argument('--split', default='test', choices=('train', 'validation', 'test'))
    p.add_argument('--max_items', type=int, default=None)
    p.add_argument('--cache_dir', type=Path, default=None)
    a = p.parse_args(argv)
    setting = stages.QUICK if a.quick else stages.FULL
    print(json.dumps(probe(a.checkpoint, setting, a.cache_dir, a.split, a.max_items), indent=1))


if __name__ == '__main__':
    main()
