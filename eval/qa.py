"""Multiple-choice QA evaluation (docs/original.md §6.1): ``python -m eval.qa --model M --dataset NAME=PATH ...``.

For each dataset and mode, items are generated in batches through one ms-swift engine, judged by the
answer extractor and appended to ``<out>/<model>/<dataset>/<mode>_<prompt_type>/results.jsonl`` as they
finish, so an interrupted run resumes without recomputing finished items. A rerun with other settings
in the same run directory is refused (results are never mixed or overwritten silently). An item whose
audio cannot be read is recorded as failed with its reason, and the run goes on. Per run:
``metrics.json``; per model: ``metrics.json`` and ``table.md`` in the paper's Table 1 layout.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from eval import metrics as M
from trainer import jsonl
from trainer.answer import LETTERS
from trainer.data import write_clip
from trainer.engine import ModelSpec, add_engine_arguments, build_engine, generate, resolve_model
from trainer.extract import XFINDER_CHECKPOINT, Extractor, get_extractor
from trainer.model_loading import add_trust_remote_code_argument, check_no_remote_code, check_weight_files
from trainer.modes import MODES, build_request, uses_adapter
from trainer.prompts import EVAL_PROMPT_TYPES
from trainer.run_state import acquire_run_lock, check_not_locked
from trainer.schema import REQUIRED_COLUMNS, SchemaError, load_audio, load_hf_dataset
from trainer.transcribe import WhisperTranscriber

ITEM_FIELDS = ('key', 'mode', 'prompt_type', 'output', 'extracted', 'gold', 'correct')
VOICEBENCH_FILE = 'voicebench.jsonl'


def parse_dataset_arg(text: str) -> Tuple[str, str]:
    """'NAME=PATH' or 'PATH' (name: the path's last part)."""
    if '=' in text:
        name, path = text.split('=', 1)
        return name, path
    return Path(text.rstrip('/')).name.replace('/', '-'), text


class Transcripts:
    """ASR transcripts per dataset, cached in a JSONL next to the results (independent of the model)."""

    def __init__(self, path: Path, asr_model: Optional[str]) -> None:
        self.path, self.asr_model, self._asr = path, asr_model, None
        self.cache = {r['key']: r['transcript'] for r in M.read_results(path)}

    def get(self, key: str, audio: Any) -> str:
        """The transcript of row ``key`` whose ``audio`` column value is ``audio`` (transcribed once, cached)."""
        if key not in self.cache:
            if self._asr is None:
                self._asr = WhisperTranscriber(self.asr_model)
            self.cache[key] = self._asr.transcribe(load_audio(audio))
            jsonl.append(self.path, {'key': key, 'transcript': self.cache[key]})
        return self.cache[key]


def evaluate_mode(engine: Any, spec: ModelSpec, extractor: Extractor, ds: Any, dataset_name: str, *, mode: str,
                  prompt_type: str, run_dir: Path, audio_dir: Path, transcripts: Optional[Transcripts],
                  batch_size: int, max_new_tokens: int, audio_with_text: bool = False) -> Dict:
    """Evaluate the items of ``ds`` (a ``datasets.Dataset`` in hf_format) not yet in ``run_dir/results.jsonl``
    with ``engine`` (``trainer.engine.build_engine``); return the run's metrics."""
    results_path = run_dir / 'results.jsonl'
    done = {r['key'] for r in M.read_results(results_path)}
    todo = [i for i, key in enumerate(ds['key']) if key not in done]
    bar = tqdm(total=len(ds), initial=len(ds) - len(todo), desc=f'{dataset_name} {mode}', unit='item')
    for start in range(0, len(todo), batch_size):
        rows = [ds[i] for i in todo[start:start + batch_size]]
        requests, ready, failed = [], [], []
        for row in rows:
            try:
                audio_path = write_clip(row, dataset_name, audio_dir) if mode == 'audio' else None
                transcript = transcripts.get(row['key'], row['audio']) if mode == 'asr' else None
                requests.append(build_request(mode, prompt_type, row['prompt_for_tts'], audio_path,
                                              transcript=transcript, audio_with_text=audio_with_text))
                ready.append(row)
            except (SchemaError, OSError, RuntimeError, ValueError) as err:
                failed.append({'key': row['key'], 'mode': mode, 'prompt_type': prompt_type, 'output': None,
                               'extracted': None, 'gold': LETTERS[row['answer_index']], 'correct': False,
                               'error': str(err), 'question': row['question'], 'options': list(row['options']),
                               'category': row.get('subject') or row.get('category')})
        outputs = generate(engine, requests, spec, uses_adapter(mode), max_new_tokens) if requests else []
        extracted = extractor.extract([r['question'] for r in ready], outputs, [r['options'] for r in ready],
                                      [r['answer_index'] for r in ready])
        items: List[Dict] = []
        for row, output, found in zip(ready, outputs, extracted, strict=True):
            gold = LETTERS[row['answer_index']]
            items.append({'key': row['key'], 'mode': mode, 'prompt_type': prompt_type, 'output': output,
                          'extracted': found.choice, 'gold': gold, 'correct': found.choice == gold,
                          'extracted_by': found.source, 'judge_output': found.judge_output, 'judges': found.judges,
                          'question': row['question'], 'options': list(row['options']),
                          'category': row.get('subject') or row.get('category')})
        jsonl.append(results_path, items + failed)  # one write per batch: a kill tears at most the last line
        bar.update(len(rows))
    bar.close()
    rows = M.read_results(results_path)
    result = dict(M.run_metrics(rows), **extraction_sources(rows))
    jsonl.write_json_atomic(run_dir / 'metrics.json', result)
    write_voicebench(run_dir / VOICEBENCH_FILE, rows)
    return result


def voicebench_rows(rows: Sequence[Dict]) -> List[Dict]:
    """One run's items in VoiceBench's result format (its ``main.py`` output: the dataset item without audio,
    plus ``response``), read by its ``evaluate.py --evaluator mcq``: ``response`` (the model's output; '' for an
    item that failed), ``reference`` (the gold letter), ``prompt`` (the question text), and our ``key`` and
    ``mode``."""
    return [{'key': r['key'], 'mode': r['mode'], 'prompt': r.get('question'), 'reference': r['gold'],
             'response': r.get('output') or ''} for r in rows]


def write_voicebench(path: Path, rows: Sequence[Dict]) -> None:
    """``voicebench.jsonl`` beside ``results.jsonl`` (rewritten whole, atomically, from the results)."""
    text = ''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in voicebench_rows(rows))
    jsonl.write_bytes_atomic(path, text.encode('utf-8'))


def extraction_sources(rows: Sequence[Dict]) -> Dict:
    """Which extractor answered the items that were generated: counts per source (``xfinder``, ``rule``,
    ``none`` when neither found an option) and, for an xFinder run, ``xfinder_failure_rate``: the share of
    items where xFinder gave no option (the rule-based extractor then filled in, or nothing did)."""
    judged = [r for r in rows if not r.get('error')]
    counts: Dict[str, int] = {}
    for r in judged:
        source = r.get('extracted_by') or 'none'
        counts[source] = counts.get(source, 0) + 1
    out: Dict = {'extracted_by': counts}
    if any(r.get('judge_output') is not None for r in judged):
        out['xfinder_failure_rate'] = sum(r.get('extracted_by') != 'xfinder' for r in judged) / len(judged)
    return out


def evaluate(model: str, datasets: Sequence[Tuple[str, str]], *, modes: Sequence[str] = MODES,
             prompt_type: str = 'systhink', out: Path = Path('output/eval'), base_model: Optional[str] = None,
             model_type: Optional[str] = None, backend: str = 'auto', batch_size: int = 16,
             max_new_tokens: int = 1000, extractor: str = 'rule', xfinder_model: Optional[str] = None,
             split: str = 'test', max_items: Optional[int] = None, asr_model: Optional[str] = None,
             mrr_reference: Optional[float] = None, engine: Any = None, audio_with_text: bool = False,
             trust_remote_code: bool = False, lock_out: bool = False) -> Dict:
    """Evaluate ``model`` on ``datasets`` ((name, path) pairs) in ``modes``; return ``{'datasets': {dataset:
    {mode: metrics}}, 'table': ..., 'dir': the model's results folder}``. ``engine``: an engine already built
    for ``model`` (else one is built); ``trust_remote_code``: let the model folder run its own code
    (``trainer.model_loading``); ``lock_out``: hold ``out``'s run lock (``trainer.run_state``) from before the
    first write until this process ends (the command line does; a second ``eval.qa`` on it is refused).

    Before anything loads or is written: the settings of every results folder against their ``config.json``,
    the adapter's and base's weight files (header and size), the remote-code check, the lock."""
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f'unknown modes {bad}; choose from {MODES}')
    if prompt_type not in EVAL_PROMPT_TYPES:
        raise ValueError(f'prompt_type must be one of {EVAL_PROMPT_TYPES}, got {prompt_type!r}')
    if lock_out:
        check_not_locked(Path(out))
    spec = resolve_model(model, base_model, model_type)
    model_dir = Path(out) / spec.name
    judged_by = {'extractor': extractor, **({'xfinder_model': xfinder_model or XFINDER_CHECKPOINT}
                                             if extractor == 'xfinder' else {})}

    def run_config(path: str, mode: str) -> Dict[str, Any]:
        return {'model': model, 'base': spec.base, 'adapter': spec.adapter, 'dataset': path, 'split': split,
                'max_items': max_items, 'mode': mode, 'prompt_type': prompt_type, 'max_new_tokens': max_new_tokens,
                'audio_with_text': audio_with_text, **judged_by}
    for name, path in datasets:
        for mode in modes:
            jsonl.check_run_config(model_dir / name / f'{mode}_{prompt_type}', run_config(path, mode), 'results')
    if engine is None:
        check_weight_files([spec.base, spec.adapter])
        check_no_remote_code([spec.base, spec.adapter], trust_remote_code)
    if lock_out:
        acquire_run_lock(Path(out), what='eval.qa')
    engine = engine or build_engine(spec, backend, batch_size, trust_remote_code)
    judge = get_extractor(extractor, xfinder_model, backend, batch_size)
    summary: Dict[str, Dict] = {}
    for name, path in datasets:
        ds = load_hf_dataset(path, split)
        # text-only modes read no audio: a text-only set (e.g. the miniature world built without speech) is enough
        needed = [c for c in REQUIRED_COLUMNS if c != 'audio' or any(m in ('audio', 'asr') for m in modes)]
        missing = [c for c in needed if c not in ds.column_names]
        if missing:
            raise SchemaError(f'{path}: missing column(s) {missing} (have: {ds.column_names})')
        if max_items:
            ds = ds.select(range(min(max_items, len(ds))))
        transcripts = Transcripts(Path(out) / '_asr' / name / 'transcripts.jsonl', asr_model)
        summary[name] = {}
        for mode in modes:
            run_dir = model_dir / name / f'{mode}_{prompt_type}'
            jsonl.guard_run_config(run_dir, run_config(path, mode), 'results')
            summary[name][mode] = evaluate_mode(
                engine, spec, judge, ds, name, mode=mode, prompt_type=prompt_type, run_dir=run_dir,
                audio_dir=Path(out) / '_audio' / name, transcripts=transcripts, batch_size=batch_size,
                max_new_tokens=max_new_tokens, audio_with_text=audio_with_text)
    everything, tab = summarize(model_dir, prompt_type, mrr_reference, spec.model_type)
    return {'datasets': everything, 'table': tab, 'dir': str(model_dir)}


def summarize(model_dir: Path, prompt_type: str, mrr_reference: Optional[float] = None,
              model_type: Optional[str] = None) -> Tuple[Dict, Dict]:
    """Collect every run of a model (all datasets and modes evaluated so far, by any invocation) into
    ``metrics.json`` (per run and the Table 1 row, each figure with its ``ci95``) and ``table.md`` (with the
    paper's rows when ``model_type`` is a family the paper reports, docs/paper_results.json)."""
    runs: Dict[str, Dict] = {}
    items: Dict[str, Dict[str, Dict[str, float]]] = {}
    for path in sorted(model_dir.glob(f'*/*_{prompt_type}/metrics.json')):
        mode = path.parent.name[:-len(prompt_type) - 1]
        runs.setdefault(path.parent.parent.name, {})[mode] = json.loads(path.read_text())
        items.setdefault(path.parent.parent.name, {})[mode] = {
            r['key']: float(bool(r['correct'])) for r in M.read_results(path.parent / 'results.jsonl')}
    tab = M.table_intervals(items, mrr_reference)
    jsonl.write_json_atomic(model_dir / 'metrics.json', {'datasets': runs, 'table': tab, 'model_type': model_type})
    md = M.report_markdown(model_dir.name, tab, runs, prompt_type=prompt_type, model_type=model_type)
    jsonl.write_bytes_atomic(model_dir / 'table.md', md.encode('utf-8'))
    return runs, tab


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m eval.qa``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_arguments(p, max_new_tokens=1000, batch_size=16)
    p.add_argument('--dataset', action='append', required=True, help='NAME=PATH or PATH (hf_format); repeatable')
    p.add_argument('--modes', nargs='+', default=list(MODES), choices=MODES)
    p.add_argument('--prompt_type', default='systhink', choices=EVAL_PROMPT_TYPES,
                   help='answer suffix (and system prompt for systhink); boxed, cotboxed and selfasrcot are the '
                        "original's evaluation-only prompts")
    p.add_argument('--split', default='test')
    p.add_argument('--out', type=Path, default=Path('output/eval'))
    p.add_argument('--max_items', type=int, default=None)
    p.add_argument('--extractor', default='rule', choices=['rule', 'xfinder'])
    p.add_argument('--xfinder_model', default=None,
                   help='the xFinder checkpoint of --extractor xfinder (path or hub id; default '
                        'IAAR-Shanghai/xFinder-qwen1505)')
    p.add_argument('--asr_model', default=None, help='faster-whisper model (default: offline tiny.en)')
    p.add_argument('--audio_with_text', action='store_true',
                   help='audio mode: the question text follows the audio (CUHK MMSU)')
    p.add_argument('--mrr_reference', type=float, default=None,
                   help="text accuracy (0-1) MRR divides by; default: the model's own Avg(T)")
    add_trust_remote_code_argument(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    result = evaluate(args.model, [parse_dataset_arg(d) for d in args.dataset], modes=args.modes,
                      prompt_type=args.prompt_type, out=args.out, base_model=args.base_model,
                      model_type=args.model_type, backend=args.backend, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens, extractor=args.extractor,
                      xfinder_model=args.xfinder_model, split=args.split, max_items=args.max_items,
                      asr_model=args.asr_model, mrr_reference=args.mrr_reference,
                      audio_with_text=args.audio_with_text, trust_remote_code=args.trust_remote_code,
                      lock_out=True)
    print(Path(result['dir'], 'table.md').read_text())
    print(f"results and metrics in {result['dir']}")


if __name__ == '__main__':
    from trainer.cli import run_main
    run_main(main, 'eval.qa')
