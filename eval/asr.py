"""ASR evaluation (docs/original.md §6.2): ``python -m eval.asr --model M --dataset PATH``.

The model transcribes each clip with the original's prompt; both sides are normalised with the original's
jiwer pipeline, in its order: lower case, punctuation removed, common English contractions expanded,
whitespace to single spaces, strip. Punctuation goes first, so apostrophes are gone before the contraction step
and contractions stay one word ("can't" -> "cant", "John's" -> "johns"), as in the original. We
report the original's score (mean of per-utterance WER capped at 1) and the corpus WER. Unlike the
original, an empty hypothesis counts as WER 1 instead of being skipped (docs/original.md §11.10); an empty
reference is skipped and counted. Results are appended per item and resumed; a rerun with other settings
in the same run directory is refused.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from tqdm import tqdm

from eval.qa import parse_dataset_arg
from trainer import jsonl, prompts
from trainer.data import write_clip
from trainer.engine import add_engine_arguments, build_engine, generate, resolve_model
from trainer.model_loading import add_trust_remote_code_argument, check_no_remote_code
from trainer.schema import SchemaError, load_hf_dataset
from trainer.text import normalize, wer_scores  # noqa: F401  (normalize: part of this module's API)


def evaluate_asr(model: str, dataset: str, out: Path = Path('output/eval'), *, base_model: Optional[str] = None,
                 model_type: Optional[str] = None, backend: str = 'auto', batch_size: int = 16, split: str = 'test',
                 max_items: Optional[int] = None, max_new_tokens: int = 512, reference_column: Optional[str] = None,
                 engine: Any = None, trust_remote_code: bool = False) -> Dict:
    """WER of ``model`` on ``dataset`` (``NAME=PATH`` or ``PATH``): ``trainer.text.wer_scores`` of the items
    written so far. ``engine``: an engine already built for ``model`` (else one is built);
    ``trust_remote_code``: let the model folder run its own code (``trainer.model_loading``)."""
    spec = resolve_model(model, base_model, model_type)
    if engine is None:  # refused before the dataset is read (build_engine checks again)
        check_no_remote_code([spec.base, spec.adapter], trust_remote_code)
    name, dataset = parse_dataset_arg(dataset)
    ds = load_hf_dataset(dataset, split)
    ref_col = reference_column or ('text' if 'text' in ds.column_names else 'prompt_for_tts')
    key_col = 'key' if 'key' in ds.column_names else 'id'
    for col in (ref_col, key_col, 'audio'):
        if col not in ds.column_names:
            raise SchemaError(f'{dataset}: missing column {col!r} (have: {ds.column_names})')
    if max_items:
        ds = ds.select(range(min(max_items, len(ds))))
    run_dir = Path(out) / spec.name / name / 'asr_wer'
    jsonl.guard_run_config(run_dir, {'model': model, 'base': spec.base, 'adapter': spec.adapter, 'dataset': dataset,
                                     'split': split, 'max_items': max_items, 'max_new_tokens': max_new_tokens,
                                     'reference_column': ref_col, 'prompt': prompts.ASR_PROMPT}, 'results')
    results = run_dir / 'results.jsonl'
    done = {r['key'] for r in jsonl.read(results)}  # a torn last line of a killed run is redone
    engine = engine or build_engine(spec, backend, batch_size, trust_remote_code)
    todo = [i for i, k in enumerate(ds[key_col]) if str(k) not in done]
    for start in tqdm(range(0, len(todo), batch_size), desc=f'{name} asr'):
        rows = [ds[i] for i in todo[start:start + batch_size]]
        requests, ready = [], []
        for row in rows:
            row = dict(row, key=str(row[key_col]))
            path = write_clip(row, name, Path(out) / '_audio' / name)
            requests.append((prompts.asr_messages(), [path]))
            ready.append(row)
        outputs = generate(engine, requests, spec, True, max_new_tokens)
        jsonl.append(results, [{'key': row['key'], 'generated_text': hyp, 'label': row[ref_col]}
                               for row, hyp in zip(ready, outputs, strict=True)])
    items = jsonl.read(results)
    scores = wer_scores([i['label'] for i in items], [i['generated_text'] for i in items])
    jsonl.write_json_atomic(run_dir / 'metrics.json', {k: v for k, v in scores.items() if k != 'per_utterance'})
    return scores


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m eval.asr``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_arguments(p, max_new_tokens=512, batch_size=16)
    p.add_argument('--dataset', required=True, help='NAME=PATH or PATH (a text or prompt_for_tts reference column)')
    p.add_argument('--split', default='test')
    p.add_argument('--out', type=Path, default=Path('output/eval'))
    p.add_argument('--max_items', type=int, default=None)
    p.add_argument('--reference_column', default=None, help='default: text, else prompt_for_tts')
    add_trust_remote_code_argument(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    scores = evaluate_asr(args.model, args.dataset, args.out, base_model=args.base_model,
                          model_type=args.model_type, backend=args.backend, batch_size=args.batch_size,
                          split=args.split, max_items=args.max_items, max_new_tokens=args.max_new_tokens,
                          reference_column=args.reference_column, trust_remote_code=args.trust_remote_code)
    print(json.dumps({k: v for k, v in scores.items() if k != 'per_utterance'}, indent=1))


if __name__ == '__main__':
    from trainer.cli import run_main
    run_main(main, 'eval.asr')
