"""Figures of the layer-similarity analysis (docs/original.md §8), each written as PNG and PDF.

* ``plot_run``: one measurement, both measures per layer with shaded 95 % t-intervals
  (the original's ``layer_similarity.png``);
* ``plot_comparison``: several runs on several datasets side by side, one panel per dataset, one line
  per run, shaded intervals (the original's ``aggregate_plots_paper.py``; labels are given by the
  caller, never guessed from directory names);
* ``plot_sensitivity``: the layer-sensitivity bar chart from a small table of (label, accuracy)
  (the original's ``0102_paper_layer_sensitivity.py``).
Layers are drawn as layer numbers: the JSON's 0-based ``layers`` + 1.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

MEASURES = {
    'token': ('', 'token-by-token cosine (mean over response tokens)'),
    'pooled': ('pooled_', 'cosine of mean-pooled states'),
}


def _series(stats: Dict, measure: str):
    prefix = MEASURES[measure][0]
    nan = float('nan')
    clean = lambda xs: [nan if x is None else x for x in xs]  # noqa: E731
    layers = [l + 1 for l in stats['layers']]
    return layers, clean(stats[prefix + 'means']), clean(stats[prefix + 'ci_lower']), clean(stats[prefix + 'ci_upper'])


def save_figure(fig, out_stem: Path) -> List[Path]:
    """Write ``fig`` as ``<out_stem>.png`` and ``.pdf`` (folders made) and close it; return the two paths."""
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_name(out_stem.name + ext) for ext in ('.png', '.pdf')]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches='tight')
    plt.close(fig)
    return paths


def _layer_ticks(ax, layers: Sequence[int]) -> None:
    step = 1 if len(layers) <= 16 else 2  # every 2 layers for 32-layer models, as the original
    ax.set_xticks([l for l in layers if (l - layers[0]) % step == 0])


def plot_run(stats: Dict, out_stem: Path, title: str = '', ylim: Optional[Tuple[float, float]] = None) -> List[Path]:
    """Both measures of one run; returns the PNG and PDF paths."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for measure, color in (('token', 'tab:blue'), ('pooled', 'tab:orange')):
        layers, means, lower, upper = _series(stats, measure)
        ax.plot(layers, means, marker='o', markersize=3, color=color, label=MEASURES[measure][1])
        ax.fill_between(layers, lower, upper, color=color, alpha=0.25, linewidth=0)
    _layer_ticks(ax, layers)
    ax.set_xlabel('layer')
    ax.set_ylabel('speech / text cosine similarity')
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title or f"n = {stats.get('n_samples')} samples, 95 % t-intervals", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out_stem)


def plot_comparison(runs: Sequence[Tuple[str, str, Dict]], out_stem: Path, measure: str = 'token',
                    ylim: Optional[Tuple[float, float]] = None) -> Tuple[List[Path], Dict[str, List[str]]]:
    """Runs given as (run label, dataset label, layer stats): one panel per dataset (in order of first
    appearance), one line per run with the same colour in every panel. Returns the file paths and what
    was drawn: dataset -> run labels."""
    if not runs:
        raise ValueError('no runs to compare')
    datasets = list(dict.fromkeys(d for _, d, _ in runs))
    labels = list(dict.fromkeys(r for r, _, _ in runs))
    colors = {label: plt.get_cmap('tab10')(i % 10) for i, label in enumerate(labels)}
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), sharey=True, squeeze=False)
    drawn: Dict[str, List[str]] = {d: [] for d in datasets}
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for label, ds, stats in runs:
            if ds != dataset:
                continue
            layers, means, lower, upper = _series(stats, measure)
            ax.plot(layers, means, marker='o', markersize=3, color=colors[label], label=label)
            ax.fill_between(layers, lower, upper, color=colors[label], alpha=0.2, linewidth=0)
            _layer_ticks(ax, layers)
            drawn[dataset].append(label)
        ax.set_title(dataset)
        ax.set_xlabel('layer')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f'speech / text similarity\n({MEASURES[measure][1]})')
    if ylim:
        axes[0][0].set_ylim(*ylim)
    return save_figure(fig, out_stem), drawn


def load_table(path: str) -> List[Tuple[str, float, str]]:
    """(label, accuracy, target_layers) rows from a CSV with a header ``label,accuracy[,target_layers]``
    (``#`` lines are comments) or a JSON list of such objects; target_layers is optional ('' if absent)."""
    text = Path(path).read_text(encoding='utf-8')
    if str(path).endswith('.json'):
        records = json.loads(text)
    else:
        records = list(csv.DictReader(line for line in text.splitlines() if line.strip() and not line.startswith('#')))
    rows = []
    for i, r in enumerate(records):
        if 'label' not in r or 'accuracy' not in r:
            raise ValueError(f'{path}: row {i} needs "label" and "accuracy", got {sorted(r)}')
        rows.append((str(r['label']), float(r['accuracy']), str(r.get('target_layers') or '')))
    if not rows:
        raise ValueError(f'{path}: empty table')
    return rows


def plot_sensitivity(rows: Sequence[Tuple], out_stem: Path, ylabel: str = 'average speech accuracy (%)',
                     ylim: Optional[Tuple[float, float]] = None) -> List[Path]:
    """Bar chart of accuracy per reward-layer choice (rows of label, accuracy[, target layers]), the best
    bar highlighted and every bar labelled with its value."""
    labels = [f'{r[0]}\n({r[2]})' if len(r) > 2 and r[2] else r[0] for r in rows]
    values = [r[1] for r in rows]
    best = max(values)
    fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 2, 3.5))
    bars = ax.bar(range(len(values)), values, color=['tab:red' if v == best else 'tab:gray' for v in values])
    ax.set_xticks(range(len(values)), labels)
    ax.bar_label(bars, labels=[f'{v:.2f}' for v in values], fontsize=8)
    low, high = min(values), max(values)
    margin = max(1.0, (high - low) * 0.5)
    ax.set_ylim(*(ylim or (low - margin, high + margin)))
    ax.set_xlabel('reward layers')
    ax.set_ylabel(ylabel)
    ax.grid(axis='y', alpha=0.3)
    return save_figure(fig, out_stem)
