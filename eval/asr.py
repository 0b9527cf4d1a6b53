"""ASR evaluation (reference 6.2): ``python -m eval.asr --model M --dataset PATH``.

The model transcribes each clip with the original's prompt; both sides are normalised with the original's
jiwer pipeline, in its order: lower case, punctuation removed, common English contractions expanded,
whitespace to single spaces, strip. Punctuation goes first, so apostrophes are gone before the contraction step
and contractions stay one word ("can't" -> "cant", "John's" -> "johns"), as in the original. We
report the original's score (mean of per-utterance WER capped at 1) and the corpus WER. Unlike the
original, an empty hypothesis counts as WER 1 instead of being skipped (reference 11.10); an empty
reference is skipped and counted. Results are appended per item and resumed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Optional

from tqdm import tqdm

from trainer.engine import build_engine, generate, resolve_model
from eval.qa import parse_dataset_arg
from trainer import jsonl
from trainer.text import normalize, wer_scores  # noqa: F401  (normalize: part of this module's API)
from trainer.data import write_clip
from trainer.model_loading import add_trust_remote_code_argument, check_no_remote_code
from trainer.schema import SchemaError, load_hf_dataset

ASR_PROMPT = 'Transcribe the audio clip into text.'


def evaluate_asr(model: str, dataset: str, out: Path = Path('output/eval'), base_model: Optional[str] = None,
                 model_type: Optional[str] = None, backend: str = 'auto', batch_size: int = 16, split: str = 'test',
                 max_items: Optional[int] = None, max_new_tokens: int = 512, reference_column: Optional[str] = None,
                 engine=None, trust_remote_code: bool = False) -> Dict:
    """WER of ``model`` on ``dataset``; ``trust_remote_code``: let the model folder run its own code
    (``trainer.model_loading``)."""
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
    run_dir.mkdir(parents=True, exist_ok=True)
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
            requests.append(([{'role': 'user', 'content': '<audio>' + ASR_PROMPT}], [path]))
            ready.append(row)
        outputs = generate(engine, requests, spec, True, max_new_tokens)
        jsonl.append(results, [{'key': row['key'], 'generated_text': hyp, 'label': row[ref_col]}
                               for row, hyp in zip(ready, outputs, strict=True)])
    items = jsonl.read(results)
    scores = wer_scores([i['label'] for i in items], [i['generated_text'] for i in items])
    (run_dir / 'metrics.json').write_text(json.dumps({k: v for k, v in scores.items() if k != 'per_utterance'},
                                                     indent=1))
    return scores


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True)
    p.add_argument('--base_model', default=None)
    p.add_argument('--dataset', required=True, help='NAME=PATH or PATH (a text or prompt_for_tts reference column)')
    p.add_argument('--split', default='test')
    p.add_argument('--out', type=Path, default=Path('output/eval'))
    p.add_argument('--backend', default='auto', choices=['auto', 'vllm', 'transformers'])
    p.add_argument('--batch_size', type=int, default=16)
    p.add_argument('--max_items', type=int, default=None)
    p.add_argument('--reference_column', default=None, help='default: text, else prompt_for_tts')
    add_trust_remote_code_argument(p)
    args = p.parse_args(argv)
    scores = evaluate_asr(args.model, args.dataset, args.out, args.base_model, backend=args.backend,
                          batch_size=args.batch_size, split=args.split, max_items=args.max_items,
                          reference_column=args.reference_column, trust_remote_code=args.trust_remote_code)
    print(json.dumps({k: v for k, v in scores.items() if k != 'per_utterance'}, indent=1))


if __name__ == '__main__':
    main()
