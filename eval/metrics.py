"""Accuracy, extraction failures, per-category accuracy, MRR and the paper's Table 1 layout.

MRR (modality recovery rate): Avg(A) / reference text accuracy x 100. The repository does not define it
(docs/original.md §10); by default the reference is the model's own Avg(T) (speech accuracy as a share of text
accuracy); ``mrr_reference`` gives the paper's convention of the text backbone's accuracy.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from trainer import jsonl

TABLE_DATASETS = ('MMSU', 'OBQA')


def read_results(path: Path) -> List[Dict]:
    """The per-item JSONL of one run (key, mode, prompt_type, output, extracted, gold, correct, ...); [] when
    absent. A torn last line of a killed run is dropped (and redone); corruption elsewhere names file and line."""
    return jsonl.read(path)


def run_metrics(rows: Iterable[Dict]) -> Dict:
    """Accuracy over items, extraction-failure rate, per-category accuracy, counts."""
    rows = list(rows)
    n = len(rows)
    failed = [r for r in rows if r.get('error')]
    judged = [r for r in rows if not r.get('error')]
    by_cat = defaultdict(list)
    for r in judged:
        by_cat[r.get('category') or 'all'].append(bool(r['correct']))
    return {
        'count': n,
        'accuracy': sum(bool(r['correct']) for r in judged) / n if n else 0.0,
        'extraction_failure_rate': sum(r['extracted'] is None for r in judged) / len(judged) if judged else 0.0,
        'failed_items': len(failed),
        'per_category': {c: sum(v) / len(v) for c, v in sorted(by_cat.items())},
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


def markdown(model: str, tab: Dict) -> str:
    """The table in markdown; accuracies in percent, as in the paper."""
    cols = tab['columns']

    def fmt(c, v):
        if v is None:
            return '-'
        return f'{v:.2f}' if c == 'MRR' else f'{100 * v:.2f}'

    return ('| model | ' + ' | '.join(cols) + ' |\n|' + '---|' * (len(cols) + 1) + '\n' +
            f'| {model} | ' + ' | '.join(fmt(c, tab['row'][c]) for c in cols) + ' |\n')
