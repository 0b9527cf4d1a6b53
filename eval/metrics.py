"""Accuracy with its interval, extraction failures, the random-letter fallback, each judge side by side,
per-category accuracy, MRR, benchmark names with item counts and the paper's Table 1 layout
(docs/evaluation.md).

MRR (modality recovery rate): Avg(A) / reference text accuracy x 100. The repository does not define it
(docs/original.md §10); by default the reference is the model's own Avg(T) (speech accuracy as a share of text
accuracy); ``mrr_reference`` gives the paper's convention of a fixed text accuracy (docs/paper_results.json,
``mrr_note``). Intervals: Wilson 95 % for one run's accuracy, a paired bootstrap over items for Avg(A), Avg(T),
MRR and the fallback accuracy (``trainer.stats``).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from trainer import jsonl
from trainer.modes import MODES
from trainer.stats import binomial_interval, paired_bootstrap

TABLE_DATASETS = ('MMSU', 'OBQA')
# Dataset names of eval.sh -> (benchmark, its full item count): "MMSU" names two benchmarks (docs/evaluation.md)
BENCHMARKS: Dict[str, Tuple[str, int]] = {
    'MMSU': ('VoiceBench-MMSU', 3074), 'OBQA': ('OBQA', 455), 'CUHK_MMSU': ('CUHK-MMSU', 5000)}
PAPER_RESULTS = Path(__file__).resolve().parent.parent / 'docs' / 'paper_results.json'
# Items whose options were not recorded (results written before options were kept for failed items):
# VoiceBench's multiple-choice sets have four options
DEFAULT_OPTIONS = 4


def benchmark_label(dataset: str, count: int) -> str:
    """``VoiceBench-MMSU (3074)``; ``VoiceBench-MMSU (16 of 3074)`` for a part; ``NAME (count)`` otherwise."""
    known = BENCHMARKS.get(dataset)
    if known is None:
        return f'{dataset} ({count})'
    name, full = known
    return f'{name} ({count})' if count == full else f'{name} ({count} of {full})'


def paper_results(path: Path = PAPER_RESULTS) -> Dict:
    """The paper's published figures (docs/paper_results.json: ``table1`` and ``ablation`` rows, accuracies in
    %, with ``source`` citing arXiv 2601.05543)."""
    try:
        return json.loads(Path(path).read_text(encoding='utf-8'))
    except (OSError, ValueError) as err:
        raise ValueError(f'{path}: cannot read the paper\'s figures: {err}') from err


def read_results(path: Path) -> List[Dict]:
    """The per-item JSONL of one run (key, mode, prompt_type, output, extracted, gold, correct, ...); [] when
    absent. A torn last line of a killed run is dropped (and redone); corruption elsewhere names file and line."""
    return jsonl.read(path)


def _n_options(row: Dict) -> int:
    return len(row.get('options') or ()) or DEFAULT_OPTIONS


def _ci(interval: Optional[Tuple[float, float]]) -> Optional[List[float]]:
    return None if interval is None else [interval[0], interval[1]]


def run_metrics(rows: Iterable[Dict]) -> Dict:
    """One run's figures over its items (fractions in [0, 1]):

    - ``accuracy`` and ``accuracy_ci95`` (Wilson); an item that failed (unreadable audio) counts as wrong;
    - ``failure_rate``: items without an extracted option (failed items included), the share VoiceBench's
      evaluator would credit with a random letter; ``extraction_failure_rate``: the same among generated items;
    - ``fallback_accuracy`` (+ ``_ci95``, bootstrap over items): the accuracy that random-letter fallback gives
      in expectation, accuracy + each unanswered item's 1 / (its number of options) over the items;
    - ``judges``: per judge (``rule``; ``xfinder`` for an xFinder run) its own accuracy, interval and failure
      rate, from the letters each judge gave (results without them: none);
    - ``per_category`` (+ ``per_category_ci95``, Wilson), ``count``, ``correct``, ``failed_items``."""
    rows = list(rows)
    n = len(rows)
    failed = [r for r in rows if r.get('error')]
    judged = [r for r in rows if not r.get('error')]
    correct = sum(bool(r['correct']) for r in judged)
    unanswered = [r for r in rows if r.get('extracted') is None]
    credit = np.array([1.0 if r['correct'] and not r.get('error') else
                       (1.0 / _n_options(r) if r.get('extracted') is None else 0.0) for r in rows])
    by_cat = defaultdict(list)
    for r in judged:
        by_cat[r.get('category') or 'all'].append(bool(r['correct']))
    judges: Dict[str, Dict] = {}
    names = sorted({j for r in judged for j in (r.get('judges') or {})})
    for name in names:
        if not all(name in (r.get('judges') or {}) for r in judged):
            continue
        right = sum(r['judges'][name] == r['gold'] for r in judged)
        missing = [r for r in rows if r.get('error') or r['judges'][name] is None]
        judges[name] = {'accuracy': right / n, 'accuracy_ci95': _ci(binomial_interval(right, n)),
                        'failure_rate': len(missing) / n,
                        'fallback_accuracy': (right + sum(1.0 / _n_options(r) for r in missing)) / n}
    return {
        'count': n,
        'correct': correct,
        'accuracy': correct / n if n else 0.0,
        'accuracy_ci95': _ci(binomial_interval(correct, n)),
        'failure_rate': len(unanswered) / n if n else 0.0,
        'extraction_failure_rate': sum(r['extracted'] is None for r in judged) / len(judged) if judged else 0.0,
        'fallback_accuracy': float(credit.mean()) if n else 0.0,
        'fallback_accuracy_ci95': _ci(paired_bootstrap(lambda s: s[0][..., 0].mean(axis=1), [credit[:, None]]))
        if n else None,
        'judges': judges,
        'failed_items': len(failed),
        'per_category': {c: sum(v) / len(v) for c, v in sorted(by_cat.items())},
        'per_category_ci95': {c: _ci(binomial_interval(sum(v), len(v))) for c, v in sorted(by_cat.items())},
    }


def mrr(avg_speech: float, reference_text: float) -> Optional[float]:
    """Modality recovery rate in percent; None without a reference."""
    return 100.0 * avg_speech / reference_text if reference_text else None


def table(accuracies: Dict[str, Dict[str, float]], mrr_reference: Optional[float] = None) -> Dict:
    """Table 1 row from {dataset: {'audio': acc, 'text': acc}} (accuracies in [0, 1])."""
    names = [d for d in TABLE_DATASETS if d in accuracies] or sorted(accuracies)
    row: Dict[str, Optional[float]] = {}
    for d in names:
        row[f'{d}(A)'] = accuracies[d].get('audio')
        row[f'{d}(T)'] = accuracies[d].get('text')
    a = [accuracies[d]['audio'] for d in names if accuracies[d].get('audio') is not None]
    t = [accuracies[d]['text'] for d in names if accuracies[d].get('text') is not None]
    row['Avg(A)'] = sum(a) / len(a) if a else None
    avg_t = sum(t) / len(t) if t else None
    reference = mrr_reference if mrr_reference is not None else avg_t
    row['MRR'] = mrr(row['Avg(A)'], reference) if row['Avg(A)'] is not None and reference else None
    return {'columns': list(row), 'row': row, 'mrr_reference': reference,
            'mrr_reference_kind': 'given' if mrr_reference is not None else 'own Avg(T)'}


def _stratum(modes: Dict[str, Dict[str, float]]) -> np.ndarray:
    """(items, 2) array of one dataset's audio and text correctness on the keys both modes have."""
    keys = sorted(set(modes.get('audio', {})) & set(modes.get('text', {})))
    return np.array([[modes['audio'][k], modes['text'][k]] for k in keys], dtype=float).reshape(-1, 2)


def table_intervals(items: Dict[str, Dict[str, Dict[str, float]]], mrr_reference: Optional[float] = None) -> Dict:
    """``table`` from per-item correctness ``{dataset: {mode: {key: 0 or 1}}}``, with ``ci95``: column ->
    [lo, hi] (Wilson for each accuracy; a paired bootstrap over items for Avg(A), Avg(T) and MRR, resampling
    each dataset's items and keeping an item's audio and text answers together), ``counts``: dataset -> items
    and ``benchmarks``: dataset -> label with item count (``benchmark_label``)."""
    acc = {d: {m: sum(v.values()) / len(v) for m, v in modes.items() if v} for d, modes in items.items()}
    tab = table(acc, mrr_reference)
    names = [c[:-3] for c in tab['columns'] if c.endswith('(A)') and not c.startswith('Avg')]
    ci: Dict[str, Optional[List[float]]] = {}
    for d in names:
        for mode, tag in (('audio', 'A'), ('text', 'T')):
            v = items[d].get(mode)
            ci[f'{d}({tag})'] = _ci(binomial_interval(int(sum(v.values())), len(v))) if v else None
    a_sets = [np.array(list(items[d]['audio'].values()), dtype=float)[:, None] for d in names if items[d].get('audio')]
    t_sets = [np.array(list(items[d]['text'].values()), dtype=float)[:, None] for d in names if items[d].get('text')]

    def mean_of_means(strata, col=0):
        return np.mean([s[..., col].mean(axis=-1) for s in strata], axis=0)

    ci['Avg(A)'] = _ci(paired_bootstrap(mean_of_means, a_sets)) if a_sets else None
    ci['Avg(T)'] = _ci(paired_bootstrap(mean_of_means, t_sets)) if t_sets else None
    paired = [_stratum(items[d]) for d in names if items[d].get('audio') and items[d].get('text')]
    ci['MRR'] = None
    if tab['row']['MRR'] is not None:
        if mrr_reference is not None:   # a fixed reference: MRR is Avg(A) scaled
            ci['MRR'] = None if ci['Avg(A)'] is None else [100 * x / mrr_reference for x in ci['Avg(A)']]
        elif paired and len(paired) == len(a_sets) == len(t_sets):
            ci['MRR'] = _ci(paired_bootstrap(
                lambda s: 100 * mean_of_means(s, 0) / mean_of_means(s, 1), paired))
    counts = {d: max(len(v) for v in items[d].values()) for d in items}
    return dict(tab, avg_t=_avg_t(acc, names), ci95=ci, counts=counts,
                benchmarks={d: benchmark_label(d, c) for d, c in counts.items()})


def _avg_t(acc: Dict[str, Dict[str, float]], names: Sequence[str]) -> Optional[float]:
    t = [acc[d]['text'] for d in names if acc[d].get('text') is not None]
    return sum(t) / len(t) if t else None


def _pct(v: Optional[float], ci: Optional[Sequence[float]] = None, scale: float = 100.0) -> str:
    if v is None:
        return '-'
    return f'{scale * v:.2f}' + (f' [{scale * ci[0]:.2f}, {scale * ci[1]:.2f}]' if ci else '')


def markdown(model: str, tab: Dict) -> str:
    """The Table 1 row in markdown; accuracies in percent, as in the paper; with its ``ci95`` (when
    ``table_intervals`` made it) as [lo, hi] after each figure; columns named by benchmark and item count."""
    cols = tab['columns']
    ci = tab.get('ci95') or {}
    labels = tab.get('benchmarks') or {}

    def head(c):
        if c in ('Avg(A)', 'MRR'):
            return c
        d, tag = c[:-3], c[-2]
        return f"{labels.get(d, d)} ({tag})" if d in labels else c

    def fmt(c, v):
        return _pct(v, ci.get(c), 1.0 if c == 'MRR' else 100.0)

    return ('| model | ' + ' | '.join(head(c) for c in cols) + ' |\n|' + '---|' * (len(cols) + 1) + '\n' +
            f'| {model} | ' + ' | '.join(fmt(c, tab['row'][c]) for c in cols) + ' |\n')


def paper_rows(model_type: Optional[str], datasets: Iterable[str], papers: Optional[Dict] = None) -> Dict[str, List]:
    """The paper's rows that apply: ``{'table1': [...], 'ablation': [...]}`` of docs/paper_results.json for the
    model family ``model_type`` when the runs include one of the paper's benchmarks (MMSU, OBQA); empty lists
    otherwise."""
    if model_type is None or not set(datasets) & set(TABLE_DATASETS):
        return {'table1': [], 'ablation': []}
    papers = papers or paper_results()
    return {part: [r for r in papers[part] if r['model_type'] == model_type] for part in ('table1', 'ablation')}


def report_markdown(model: str, tab: Dict, runs: Dict[str, Dict[str, Dict]], *, prompt_type: str,
                    model_type: Optional[str] = None, papers: Optional[Dict] = None) -> str:
    """``table.md`` of one model: the Table 1 row with intervals and the paper's rows where they apply, then one
    line per dataset, mode and judge (accuracy with interval, failure rate, random-letter fallback). ``runs``:
    ``{dataset: {mode: run_metrics}}``."""
    papers = papers or paper_results()
    cols = tab['columns']
    out = [f'# {model}', '',
           f'Prompt type `{prompt_type}`. Accuracy in % with its 95 % interval [lo, hi]: Wilson for one run, a paired '
           'bootstrap over items for Avg(A) and MRR (docs/evaluation.md).', '',
           '## Table 1 layout', '', markdown(model, tab).rstrip('\n')]
    rows = paper_rows(model_type, runs, papers)
    for r in rows['table1'] + rows['ablation']:
        label = r['model'] if r in rows['table1'] else f"ablation: {r['model']}"
        out.append(f'| paper: {label} | ' + ' | '.join('-' if r.get(c) is None else f'{r[c]:.2f}' for c in cols) + ' |')
    ref = tab.get('mrr_reference')
    out += ['', f"MRR divides Avg(A) by {tab.get('mrr_reference_kind')}"
            + ('' if ref is None else f' ({100 * ref:.2f} %)') + '.']
    if rows['table1']:
        out.append(f"Paper rows: {papers['source']} ({papers['url']}), judged by {papers['judge']}. "
                   f"{papers['mrr_note']}")
    else:
        out.append(f"Paper rows: none apply (the paper reports VoiceBench-MMSU and OBQA of the qwen2_5_omni and "
                   f"phi4_multimodal families; these runs: {model_type or 'an unknown family'} on "
                   f"{', '.join(sorted(runs))}).")
    out += ['', '## Every run and judge', '',
            'failure: items without an extracted option. fallback: the accuracy in expectation when each of them '
            "gets a random letter (VoiceBench's mcq evaluator); the figure to set beside VoiceBench-style "
            'leaderboards.', '',
            '| benchmark (items) | mode | judge | accuracy % [95 %] | failure % | random-letter fallback % [95 %] |',
            '|---|---|---|---|---|---|']
    for d, modes in runs.items():
        label = (tab.get('benchmarks') or {}).get(d) or benchmark_label(d, max(m['count'] for m in modes.values()))
        for mode, m in sorted(modes.items(), key=lambda x: (MODES.index(x[0]) if x[0] in MODES else len(MODES), x[0])):
            judges = m.get('judges') or {}
            main = 'xfinder, rule fills in' if 'xfinder' in judges else 'rule'
            out.append(f"| {label} | {mode} | {main} | {_pct(m['accuracy'], m.get('accuracy_ci95'))} | "
                       f"{_pct(m.get('failure_rate'))} | "
                       f"{_pct(m.get('fallback_accuracy'), m.get('fallback_accuracy_ci95'))} |")
            if 'xfinder' in judges:
                for name, j in judges.items():
                    out.append(f"| {label} | {mode} | {name} alone | {_pct(j['accuracy'], j.get('accuracy_ci95'))} | "
                               f"{_pct(j['failure_rate'])} | {_pct(j.get('fallback_accuracy'))} |")
    return '\n'.join(out) + '\n'
