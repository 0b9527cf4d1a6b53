"""The miniature's report (issue 14, docs/miniature.md "Report"): pure functions from the pipeline's results dict
to ``results.json``, the figures (PNG and PDF) and the generated section of ``docs/miniature.md``.

The results dict (``scripts.miniature.pipeline`` builds it; a test builds one by hand):

- ``command``, ``date``, ``git_commit``, ``setting``, ``seeds``, ``steps``
- ``stage1``: ``text_acc``, ``train_wall_seconds``, ``cached`` ...; ``stage2``: ``speech_acc``, ``text_acc``, ...
- ``arms``: arm -> list of ``{seed, speech_acc, text_acc, ...}`` (accuracies as fractions); ``mrr`` (speech / own
  text x 100) and ``mrr_start`` (speech / stage-2 text x 100) are added by :func:`add_mrr`
- ``curves``: arm -> list (one per seed) of curves ``[{step, speech_acc, text_acc, loss, rewards: {name: value}}]``
- ``layer_similarity``: label -> ``layer_stats.json`` of ``scripts.layer_similarity_analysis.measure``
- ``wall_seconds``: stage -> seconds, and ``total``; ``wall_cached``: stage -> True when the time is the one stored
  when a cached stage was made

Intervals are 95 % Student-t intervals over seeds (``trainer.stats.t_interval``); two arms are ordered only when their
intervals do not overlap.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from eval.metrics import mrr, paper_results  # noqa: E402
from scripts.layer_similarity_analysis.plots import save_figure  # noqa: E402
from trainer.stats import t_interval  # noqa: E402  (the one place of the project's intervals)

ARM_ORDER = ('sft', 'dpo', 'grpo', 'grpo_rep', 'grpo_beh', 'tars', 'tars_global')
ARM_LABELS = {
    'sft': 'SFT', 'dpo': 'DPO', 'grpo': 'GRPO (R_base: format + accuracy)', 'grpo_rep': 'GRPO + R_rep',
    'grpo_beh': 'GRPO + R_beh', 'tars': 'TARS (all four, per-modality normalisation)',
    'tars_global': 'TARS, one normalisation over the group',
}
MARK_START = '<!-- report:start -->'
MARK_END = '<!-- report:end -->'
PAPER_URL = 'https://arxiv.org/abs/2601.05543'


def paper_ablation() -> Tuple[Dict[str, Optional[Dict[str, Optional[float]]]], str]:
    """The paper's own ablation figures per arm (docs/paper_results.json, ``ablation``): ``{arm: {speech: Avg(A),
    text: None (not published), mrr: MRR}}`` in %, None for an arm the paper does not report (tars_global), and
    the source line."""
    papers = paper_results()
    rows = {r['arm']: r for r in papers['ablation']}
    table = {arm: ({'speech': rows[arm]['Avg(A)'], 'text': None, 'mrr': rows[arm]['MRR']} if arm in rows else None)
             for arm in ARM_ORDER}
    return table, (f"{papers['source']} ({papers['url']}; docs/paper_results.json): speech = Avg(A) over "
                   'VoiceBench-MMSU and OBQA of Qwen2.5-Omni-7B, text accuracies not published, MRR with the '
                   "paper's text reference")


STAGE1_MIN_TEXT = 0.90
STAGE2_MIN_GAP = 0.15
FIGURES = ('accuracy', 'training_curves', 'layer_similarity')


# ---------------------------------------------------------------- statistics
def add_mrr(results: Dict) -> Dict:
    """The results with ``mrr`` (speech / own text x 100) and ``mrr_start`` (speech / the stage-2 checkpoint's
    text x 100) in every arm row (eval.metrics.mrr; None without a text accuracy)."""
    start_text = results.get('stage2', {}).get('text_acc')
    arms = {}
    for arm, rows in results.get('arms', {}).items():
        arms[arm] = [dict(r, mrr=mrr(r['speech_acc'], r['text_acc']) if r.get('speech_acc') is not None else None,
                          mrr_start=mrr(r['speech_acc'], start_text) if r.get('speech_acc') is not None else None)
                     for r in rows]
    return dict(results, arms=arms)


def arm_summary(results: Dict) -> Dict[str, Dict[str, Tuple[Optional[float], Optional[float]]]]:
    """arm -> {speech, text, mrr, mrr_start: (mean, half-width)} over its seeds (arms in ARM_ORDER first)."""
    results = add_mrr(results)
    arms = [a for a in ARM_ORDER if a in results['arms']] + sorted(set(results['arms']) - set(ARM_ORDER))
    return {arm: {key: t_interval([r.get(field) for r in results['arms'][arm]])
                  for key, field in (('speech', 'speech_acc'), ('text', 'text_acc'), ('mrr', 'mrr'),
                                     ('mrr_start', 'mrr_start'))}
            for arm in arms}


# ---------------------------------------------------------------- checks and verdicts
def _pts(x: Optional[float]) -> str:
    return '-' if x is None else f'{100 * x:.1f}'


def _ci(mean: Optional[float], half: Optional[float], scale: float = 100.0) -> str:
    if mean is None:
        return '-'
    return f'{scale * mean:.1f}' + ('' if half is None else f' ± {scale * half:.1f}')


def validity(results: Dict) -> List[Dict]:
    """The issue's validity conditions, computed from the data: [{name, holds (True/False/None), text}]."""
    s1 = results.get('stage1', {}).get('text_acc')
    s2 = results.get('stage2', {})
    out = [{'name': 'stage 1 text accuracy >= 90 %',
            'holds': None if s1 is None else s1 >= STAGE1_MIN_TEXT,
            'text': f'stage 1 text accuracy {_pts(s1)} % (needs >= {100 * STAGE1_MIN_TEXT:.0f})'}]
    sp, tx = s2.get('speech_acc'), s2.get('text_acc')
    gap = None if sp is None or tx is None else tx - sp
    out.append({'name': 'stage 2 speech >= 15 points below text',
                'holds': None if gap is None else gap >= STAGE2_MIN_GAP - 1e-9,
                'text': f'stage 2 speech {_pts(sp)} %, text {_pts(tx)} %, gap {_pts(gap)} points '
                        f'(needs >= {100 * STAGE2_MIN_GAP:.0f})'})
    grpo = arm_summary(results).get('grpo', {}).get('speech', (None, None))
    mean, half = grpo
    if mean is None or sp is None:
        holds, text = None, 'standard GRPO not run'
    elif half is None:
        holds, text = None, f'standard GRPO speech {_pts(mean)} % on one seed: no seed interval'
    else:
        change = mean - sp
        holds = abs(change) > half
        text = (f'standard GRPO speech {_pts(mean)} % vs stage 2 {_pts(sp)} %: change {100 * change:+.1f} points, '
                f'seed 95 % half-width {100 * half:.1f} points')
        if holds:   # the condition asks for a change beyond the noise; a reader must see which way it went
            text += '; a gain' if change > 0 else '; a loss: standard GRPO lowers speech accuracy'
    out.append({'name': "standard GRPO moves speech accuracy by more than its own seed interval",
                'holds': holds, 'text': text})
    return out


def compare(lower: Tuple[Optional[float], Optional[float]], upper: Tuple[Optional[float], Optional[float]]) -> str:
    """'holds' when ``lower``'s interval lies entirely below ``upper``'s, 'does not hold' when entirely above,
    'inconclusive' when they overlap or an interval is missing (fewer than 2 seeds), 'not run' without a mean."""
    (m1, h1), (m2, h2) = lower, upper
    if m1 is None or m2 is None:
        return 'not run'
    if h1 is None or h2 is None:
        return 'inconclusive'
    if m1 + h1 < m2 - h2:
        return 'holds'
    if m1 - h1 > m2 + h2:
        return 'does not hold'
    return 'inconclusive'


def verdicts(results: Dict) -> List[Dict]:
    """The paper's orderings at this scale: [{claim, status, numbers}], status one of holds / does not hold /
    inconclusive (intervals overlap, or one seed) / not run."""
    summ = arm_summary(results)
    none = (None, None)

    def speech(arm):
        return summ.get(arm, {}).get('speech', none)

    out = []
    for a, b in (('grpo', 'grpo_rep'), ('grpo', 'grpo_beh'), ('grpo_rep', 'tars'), ('grpo_beh', 'tars'),
                 ('tars_global', 'tars')):
        claim = f'speech: {a} < {b}' + (' (per-modality normalisation needed)' if a == 'tars_global' else '')
        out.append({'claim': claim, 'status': compare(speech(a), speech(b)),
                    'numbers': f'{a} {_ci(*speech(a))} % vs {b} {_ci(*speech(b))} %'})
    start = results.get('stage2', {}).get('text_acc')
    for arm in ('grpo', 'grpo_rep', 'grpo_beh', 'tars', 'tars_global'):
        mean, half = summ.get(arm, {}).get('text', none)
        if mean is None or start is None:
            status = 'not run'
        elif half is None:
            status = 'inconclusive'
        else:   # not degraded: stage 2's text accuracy is inside or below the arm's interval
            status = 'does not hold' if mean + half < start else 'holds'
        out.append({'claim': f'text not degraded vs stage 2: {arm}', 'status': status,
                    'numbers': f'{arm} text {_ci(mean, half)} % vs stage 2 {_pts(start)} %'})
    return out


# ---------------------------------------------------------------- results.json
def results_json(results: Dict) -> Dict:
    """The data of ``results.json``: the issue's keys (``stage1.text_acc``, ``stage2.speech_acc``/``text_acc``,
    ``arms`` arm -> [{seed, speech_acc, text_acc, mrr, mrr_start}], ``wall_seconds`` with ``total``), the run's
    identity (command, date, git commit, setting), the summaries, checks, verdicts and curves."""
    results = add_mrr(results)
    keep = ('seed', 'speech_acc', 'text_acc', 'mrr', 'mrr_start', 'steps', 'train_wall_seconds',
            'eval_wall_seconds', 'cached')
    summ = arm_summary(results)
    return {
        'command': results.get('command'), 'date': results.get('date'), 'git_commit': results.get('git_commit'),
        'setting': results.get('setting'), 'seeds': results.get('seeds'), 'steps': results.get('steps'),
        'stage1': results.get('stage1', {}), 'stage2': results.get('stage2', {}),
        'arms': {arm: [{k: r.get(k) for k in keep if k in r} for r in rows] for arm, rows in results['arms'].items()},
        'summary': {arm: {k: {'mean': m, 'ci95_half_width': h} for k, (m, h) in v.items()} for arm, v in summ.items()},
        'validity': validity(results), 'verdicts': verdicts(results),
        'wall_seconds': results.get('wall_seconds', {}), 'wall_cached': results.get('wall_cached', {}),
        'paper_ablation': dict(zip(('rows', 'source'), paper_ablation(), strict=True)),
        'curves': results.get('curves', {}),
        'layer_similarity': {k: {f: v.get(f) for f in ('layers', 'means', 'ci_lower', 'ci_upper', 'pooled_means',
                                                       'pooled_ci_lower', 'pooled_ci_upper', 'n_samples', 'model')}
                             for k, v in results.get('layer_similarity', {}).items()},
    }


# ---------------------------------------------------------------- figures
def plot_accuracy(results: Dict, stem: Path) -> List[Path]:
    """Bars of speech and text accuracy (%) per arm with 95 % intervals over seeds; stage 2 as dashed lines."""
    summ = arm_summary(results)
    arms = list(summ)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(arms) + 2), 4))
    width = 0.38
    for k, (key, color) in enumerate((('speech', 'tab:blue'), ('text', 'tab:orange'))):
        means = [100 * (summ[a][key][0] or 0.0) for a in arms]
        errs = [100 * (summ[a][key][1] or 0.0) for a in arms]
        ax.bar([i + (k - 0.5) * width for i in range(len(arms))], means, width, yerr=errs, capsize=3,
               color=color, label=key)
    s2 = results.get('stage2', {})
    for key, color in (('speech_acc', 'tab:blue'), ('text_acc', 'tab:orange')):
        if s2.get(key) is not None:
            ax.axhline(100 * s2[key], color=color, linestyle='--', linewidth=1, label=f'stage 2 {key[:-4]}')
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels(arms, rotation=20)
    ax.set_ylabel('test accuracy (%)')
    ax.set_ylim(0, 100)
    ax.set_title('accuracy per arm (mean over seeds, 95 % t-interval)', fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis='y', alpha=0.3)
    return save_figure(fig, stem)


def curve_series(curves: Sequence[Sequence[Dict]]) -> Dict[str, Tuple[List[int], List[float]]]:
    """Mean over seeds per step of each quantity of the curves (speech_acc, text_acc, loss, reward:<name>);
    None values are left out; a quantity without any value is absent."""
    by: Dict[str, Dict[int, List[float]]] = {}
    for curve in curves:
        for point in curve:
            values = {'speech_acc': point.get('speech_acc'), 'text_acc': point.get('text_acc'),
                      'loss': point.get('loss')}
            values.update({f'reward:{k}': v for k, v in (point.get('rewards') or {}).items()})
            for name, value in values.items():
                if value is not None:
                    by.setdefault(name, {}).setdefault(int(point['step']), []).append(float(value))
    return {name: (sorted(steps), [sum(steps[s]) / len(steps[s]) for s in sorted(steps)])
            for name, steps in by.items()}


def plot_curves(results: Dict, stem: Path) -> List[Path]:
    """One panel per quantity (speech and text accuracy, loss, each reward), one line per arm, mean over seeds."""
    series = {arm: curve_series(c) for arm, c in results.get('curves', {}).items()}
    names = sorted({n for s in series.values() for n in s},
                   key=lambda n: (('speech_acc', 'text_acc', 'loss').index(n) if ':' not in n else 3, n))
    if not names:
        names = ['speech_acc']
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    colors = {arm: plt.get_cmap('tab10')(i % 10) for i, arm in enumerate(ARM_ORDER)}
    for ax, name in zip(axes.flat, names, strict=False):
        for arm, s in series.items():
            if name in s:
                ax.plot(*s[name], marker='.', color=colors.get(arm), label=arm)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel('step')
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis('off')
    legend: Dict[str, object] = {}   # every arm drawn in any panel (an arm may lack a quantity)
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    labels, handles = list(legend), list(legend.values())
    if handles:
        fig.legend(handles, labels, loc='lower center', ncol=min(len(labels), 7), fontsize=8,
                   bbox_to_anchor=(0.5, -0.02))
    fig.suptitle('training curves (mean over seeds)', fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save_figure(fig, stem)


def plot_layers(results: Dict, stem: Path) -> List[Path]:
    """The layer-similarity curves (token and pooled measures) of the stage-2 checkpoint and the arms measured,
    through the analysis's own ``plot_comparison`` (one panel per measure)."""
    from scripts.layer_similarity_analysis.plots import plot_comparison
    runs = results.get('layer_similarity', {})
    paths: List[Path] = []
    for measure in ('token', 'pooled'):
        drawn = [(label, f'miniature test ({measure})', stats) for label, stats in runs.items()]
        if drawn:
            paths += plot_comparison(drawn, stem.with_name(f'{stem.name}_{measure}'), measure)[0]
    return paths


def write_figures(results: Dict, out_dir: Path) -> Dict[str, List[Path]]:
    """All figures under ``out_dir`` (PNG and PDF): name -> paths."""
    return {'accuracy': plot_accuracy(results, out_dir / 'accuracy'),
            'training_curves': plot_curves(results, out_dir / 'training_curves'),
            'layer_similarity': plot_layers(results, out_dir / 'layer_similarity')}


# ---------------------------------------------------------------- markdown
def ablation_table(results: Dict) -> str:
    """The paper-layout ablation table (rows: stage 2, then the arms; mean ± 95 % half-width over seeds) with the
    paper's own numbers beside it."""
    summ = arm_summary(results)
    papers, _ = paper_ablation()
    s2 = results.get('stage2', {})
    head = ('| arm | seeds | speech acc (%) | text acc (%) | MRR own text | MRR stage-2 text | '
            'paper speech | paper text | paper MRR |\n|---|---|---|---|---|---|---|---|---|\n')
    s2_mrr = mrr(s2['speech_acc'], s2['text_acc']) if s2.get('speech_acc') is not None and s2.get('text_acc') else None
    lines = [f"| stage 2 (start) | - | {_pts(s2.get('speech_acc'))} | {_pts(s2.get('text_acc'))} | "
             f"{'-' if s2_mrr is None else f'{s2_mrr:.1f}'} | {'-' if s2_mrr is None else f'{s2_mrr:.1f}'} | "
             "- | - | - |"]
    for arm, v in summ.items():
        paper = papers.get(arm)
        p = ([('not published' if paper[k] is None else f'{paper[k]:.2f}') for k in ('speech', 'text', 'mrr')]
             if paper else ['not reported'] * 3)
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | {len(results['arms'][arm])} | {_ci(*v['speech'])} | "
                     f"{_ci(*v['text'])} | {_ci(*v['mrr'], scale=1.0)} | {_ci(*v['mrr_start'], scale=1.0)} | "
                     + ' | '.join(p) + ' |')
    return head + '\n'.join(lines) + '\n'


def _status(holds: Optional[bool]) -> str:
    return {True: 'holds', False: 'does not hold', None: 'inconclusive'}[holds]


def _seconds(s: Optional[float]) -> str:
    return '-' if s is None else f'{s:.0f} s'


def report_section(results: Dict, figure_dir: str) -> str:
    """The generated part of docs/miniature.md (between the markers); ``figure_dir`` is the figures' folder
    relative to the markdown file."""
    wall = results.get('wall_seconds', {})
    cached = results.get('wall_cached', {})
    out = [MARK_START, '', '## Report (generated)', '',
           f"Generated by `{results.get('command')}` on {results.get('date')} at commit "
           f"`{results.get('git_commit')}`, setting `{results.get('setting')}`, seeds {results.get('seeds')}, "
           f"stage-3 steps {results.get('steps')}. Every number below comes from `{figure_dir}/results.json` of "
           'this run; rerunning the command regenerates it.', '',
           '### Validity', '']
    out += [f"- {c['name']}: **{_status(c['holds'])}** ({c['text']})" for c in validity(results)]
    out += ['', '### Ablation', '',
            'Mean ± 95 % Student-t half-width over seeds (eval.qa on the test split, rule extractor). MRR = speech '
            'accuracy / text accuracy x 100, with the arm\'s own text accuracy and with the stage-2 checkpoint\'s. '
            f'Paper columns: {paper_ablation()[1]}.', '', ablation_table(results),
            '### Verdict', '',
            'An ordering holds when the two 95 % intervals do not overlap; it is inconclusive when they overlap (or '
            'with one seed). "Text not degraded" holds when stage 2\'s text accuracy is inside or below the arm\'s '
            'interval.', '']
    out += [f"- {v['claim']}: **{v['status']}** ({v['numbers']})" for v in verdicts(results)]
    out += ['', '### Wall time', '', '| stage | seconds | |', '|---|---|---|']
    for stage, seconds in wall.items():
        note = ''
        if cached.get(stage):   # a cached stage is evaluated again in each call; an arm's evaluation is cached too
            note = ('cached: its training time stored when it was made, its evaluation this call'
                    if stage.startswith('stage') else 'cached: the times stored when it was made')
        out.append(f'| {stage} | {_seconds(seconds)} | {note} |')
    out += ['', '### Figures', '']
    for name in ('accuracy', 'training_curves', 'layer_similarity_token', 'layer_similarity_pooled'):
        out.append(f'![{name}]({figure_dir}/{name}.png) ([PDF]({figure_dir}/{name}.pdf))')
        out.append('')
    out += [MARK_END]
    return '\n'.join(out) + '\n'


def replace_marked(text: str, section: str) -> str:
    """``text`` with the region from MARK_START to MARK_END replaced by ``section`` (which carries the markers);
    appended at the end when the markers are absent. A marker counts only on a line of its own, so prose that
    quotes it (docs/miniature.md does) is left alone. The text around the region is kept byte for byte."""
    start = re.compile('^' + re.escape(MARK_START) + '$', re.M)
    end = re.compile('^' + re.escape(MARK_END) + '$', re.M)
    starts, ends = list(start.finditer(text)), list(end.finditer(text))
    if len(starts) > 1 or len(starts) != len(ends) or (starts and ends[0].start() < starts[0].start()):
        raise ValueError(f'the report markers {MARK_START} / {MARK_END} must each stand once on a line of their '
                         'own, start before end')
    if starts:
        stop = ends[0].end() + (1 if text[ends[0].end():ends[0].end() + 1] == '\n' else 0)
        return text[:starts[0].start()] + section + text[stop:]
    if not text:
        return section
    return text + ('' if text.endswith('\n') else '\n') + '\n' + section


def write_report(results: Dict, report_dir: Path, report_md: Path) -> Dict[str, object]:
    """Write ``report_dir/results.json``, the figures and the generated section of ``report_md`` (created when
    missing); returns the paths written."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    data = results_json(results)
    (report_dir / 'results.json').write_text(json.dumps(data, indent=1) + '\n')
    figures = write_figures(results, report_dir)
    report_md = Path(report_md)
    rel = Path(os.path.relpath(report_dir, report_md.parent)).as_posix()
    old = report_md.read_text() if report_md.exists() else ''
    report_md.parent.mkdir(parents=True, exist_ok=True)
    report_md.write_text(replace_marked(old, report_section(results, rel)))
    return {'results': report_dir / 'results.json', 'figures': figures, 'markdown': report_md}
