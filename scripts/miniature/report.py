"""The miniature's report (docs/miniature.md): pure functions from the pipeline's results dict to ``results.json``,
the figures (PNG and PDF) and the generated region of ``docs/miniature.md``.

The results dict (``scripts.miniature.pipeline`` builds it; the tests build them by hand). Accuracies are fractions;
every path is relative to the miniature cache root ``<cache>/miniature/``:

- ``command``, ``date``, ``git_commit``, ``setting``, ``seeds``, ``steps``
- ``stage1``: ``text_acc``, ``checkpoint``, ``train_wall_seconds``, ``cached`` ...
- ``stage2`` (the start of stage 3): ``speech_acc``, ``text_acc``, ``hearing_acc`` (``scripts.miniature.hearing``'s
  probe on the test split), ``checkpoint`` ...; ``results.json`` names it ``start`` too
- ``arms``: arm -> list of ``{seed, speech_acc, text_acc, hearing_acc, curve, allwrong, checkpoint, ...}``: ``curve``
  is the validation curve ``[{step, speech_acc, text_acc}]`` (``metrics.json``'s ``val_curve``), ``allwrong``
  ``{groups, speech_rollouts, nonzero_adv_share}`` (groups whose speech rollouts were all wrong); ``mrr`` (speech /
  own text x 100) and ``mrr_start`` (speech / the start's text x 100) are added by :func:`add_mrr`
- ``training_curves``: arm -> list (one per seed) of the per-step training logs ``[{step, speech_acc, text_acc,
  loss, rewards: {name: value}}]``
- ``layer_similarity``: label -> ``layer_stats.json`` of ``scripts.layer_similarity_analysis.measure``
- ``wall_seconds``: stage -> seconds (None for a cached job that stored none), ``total`` and ``this invocation``;
  ``wall_cached``: stage -> True when the time is the one stored when a cached job was made; ``parallel``:
  ``{jobs, threads_per_job}`` of the arm runs

Statistics (``trainer.stats``, the project's one place for them): a 95 % Student-t interval over seeds for each
arm, and for each ordering of the paper the t interval over seeds of the per-seed differences (arm seed s minus
the other arm's seed s: every arm runs the same seeds, common random numbers), on the speech accuracy
(``paired``), the area under the speech validation curve (``paired_auc``) and the text accuracy
(``paired_text``).
"""
from __future__ import annotations

import json
import math
import os
import re
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from eval.metrics import mrr, paper_results  # noqa: E402
from scripts.layer_similarity_analysis.plots import save_figure  # noqa: E402
from trainer.stats import seeds_for_half_width, t_interval  # noqa: E402  (the one place of the project's intervals)

ARM_ORDER = ('sft', 'dpo', 'grpo', 'grpo_rep', 'grpo_beh', 'tars', 'tars_global', 'opsd', 'rlsd')
ARM_LABELS = {
    'sft': 'SFT', 'dpo': 'DPO', 'grpo': 'GRPO (R_base: format + accuracy)', 'grpo_rep': 'GRPO + R_rep',
    'grpo_beh': 'GRPO + R_beh', 'tars': 'TARS (all four, per-modality normalisation)',
    'tars_global': 'TARS, one normalisation over the group',
    'opsd': 'on-policy self-distillation (text teacher)', 'rlsd': 'RLSD (GRPO, text-teacher token reweighting)',
}
# The orderings the report decides, as (arm, other): the claim is arm > other on speech accuracy. The paper's
# ablation table orders GRPO above SFT and DPO and each alignment reward above standard GRPO; TARS above
# tars_global is the paper's claim without a number; opsd and rlsd are the rivals (an ordering whose arms were
# not both run is left out).
ORDERINGS: Tuple[Tuple[str, str], ...] = (
    ('grpo_rep', 'grpo'), ('grpo_beh', 'grpo'), ('tars', 'grpo'), ('tars', 'grpo_rep'), ('tars', 'grpo_beh'),
    ('tars', 'tars_global'), ('opsd', 'grpo'), ('tars', 'opsd'), ('rlsd', 'grpo'), ('tars', 'rlsd'),
    ('grpo', 'sft'), ('grpo', 'dpo'))
MARK_START = '<!-- report:start -->'
MARK_END = '<!-- report:end -->'

GOAL_HALF_WIDTH = 0.03    # the issue's goal: every paired speech interval at most +-3 points
STAGE1_MIN_TEXT = 0.90    # stage 1 learns the world in text
START_MIN_HEARING = 0.90  # the start hears the spoken values of at least 90 % of the test items
START_MIN_GAP = 0.15      # its speech at least 15 points below its text
GRPO_MIN_ROOM = 0.10      # standard GRPO ends at least 10 points below the start's text accuracy
SMOOTH_STEPS = 10         # the training curves' moving window


def ordering_name(arm: str, other: str) -> str:
    """'tars - grpo': the key of an ordering in ``paired``."""
    return f'{arm} - {other}'


# ---------------------------------------------------------------- the paper's figures
def paper_ablation() -> Tuple[Dict[str, Optional[Dict[str, Optional[float]]]], str]:
    """The paper's own ablation figures per arm (docs/paper_results.json, ``ablation``): ``{arm: {speech: Avg(A),
    text: None (not published), mrr: MRR}}`` in %, None for an arm the paper does not report, and the source
    line."""
    papers = paper_results()
    rows = {r['arm']: r for r in papers['ablation']}
    table = {arm: ({'speech': rows[arm]['Avg(A)'], 'text': None, 'mrr': rows[arm]['MRR']} if arm in rows else None)
             for arm in ARM_ORDER}
    return table, (f"{papers['source']} ({papers['url']}; docs/paper_results.json): speech = Avg(A) over "
                   'VoiceBench-MMSU and OBQA of Qwen2.5-Omni-7B, text accuracies not published, MRR with the '
                   "paper's text reference")


def paper_differences() -> Dict[str, Dict]:
    """ordering -> {'diff': the paper's Avg(A) difference in points or None, 'kind': 'table' / 'claim' (argued
    without a number) / 'none', 'note': how the paper states it}, for
    every ordering of ORDERINGS (docs/paper_results.json: the ablation rows, and ``ablation_claims`` for the
    orderings the paper argues without a number)."""
    papers = paper_results()
    table, _ = paper_ablation()
    claims = {c['ordering']: c['claim'] for c in papers.get('ablation_claims', [])}
    out = {}
    for arm, other in ORDERINGS:
        name = ordering_name(arm, other)
        if table.get(arm) and table.get(other):
            out[name] = {'diff': round(table[arm]['speech'] - table[other]['speech'], 2), 'kind': 'table',
                         'note': 'ablation table'}
        elif name in claims:
            out[name] = {'diff': None, 'kind': 'claim', 'note': claims[name]}
        else:
            out[name] = {'diff': None, 'kind': 'none', 'note': 'not measured by the paper'}
    return out


# ---------------------------------------------------------------- statistics
def add_mrr(results: Dict) -> Dict:
    """The results with ``mrr`` (speech / own text x 100) and ``mrr_start`` (speech / the start's text x 100) in
    every arm row (eval.metrics.mrr; None without a text accuracy)."""
    start_text = results.get('stage2', {}).get('text_acc')
    arms = {}
    for arm, rows in results.get('arms', {}).items():
        arms[arm] = [dict(r, mrr=mrr(r['speech_acc'], r['text_acc']) if r.get('speech_acc') is not None else None,
                          mrr_start=mrr(r['speech_acc'], start_text) if r.get('speech_acc') is not None else None)
                     for r in rows]
    return dict(results, arms=arms)


def curve_auc(curve: Sequence[Dict], key: str = 'speech_acc') -> Optional[float]:
    """The area under a validation curve's ``key`` over its steps (trapezoid rule), divided by the step span: the
    curve's mean level, a fraction; None with fewer than two points that have a value."""
    points = sorted((int(p['step']), float(p[key])) for p in curve or () if p.get(key) is not None)
    if len(points) < 2 or points[-1][0] == points[0][0]:
        return None
    steps, values = zip(*points, strict=True)
    return float(np.trapezoid(values, steps)) / (steps[-1] - steps[0])


def _arms_sorted(names) -> List[str]:
    return [a for a in ARM_ORDER if a in names] + sorted(set(names) - set(ARM_ORDER))


def arm_summary(results: Dict) -> Dict[str, Dict[str, Tuple[Optional[float], Optional[float]]]]:
    """arm -> {speech, text, hearing, mrr, mrr_start, auc: (mean, half-width)} over its seeds."""
    results = add_mrr(results)
    out = {}
    for arm in _arms_sorted(results['arms']):
        rows = results['arms'][arm]
        out[arm] = {key: t_interval([r.get(field) for r in rows])
                    for key, field in (('speech', 'speech_acc'), ('text', 'text_acc'), ('hearing', 'hearing_acc'),
                                       ('mrr', 'mrr'), ('mrr_start', 'mrr_start'))}
        out[arm]['auc'] = t_interval([curve_auc(r.get('curve')) for r in rows])
    return out


RUN_WALL_FIELDS = ('train_wall_seconds', 'eval_wall_seconds', 'curve_wall_seconds', 'hearing_wall_seconds')


def parallel_jobs(results: Dict) -> int:
    """How many arm runs went at once (``parallel.jobs``; 1 when not recorded)."""
    return int((results.get('parallel') or {}).get('jobs') or 1)


def run_wall(row: Dict) -> Optional[float]:
    """The wall seconds of one arm run as its metrics store them: training, the test evaluation, the validation
    curve and the hearing probe (``RUN_WALL_FIELDS``, those present); None when it has none of them."""
    parts = [row[k] for k in RUN_WALL_FIELDS if row.get(k) is not None]
    return float(sum(parts)) if parts else None


def per_seed_wall(rows: Sequence[Dict]) -> Optional[float]:
    """The mean ``run_wall`` of one seed of an arm; None when no row has one."""
    walls = [w for w in (run_wall(r) for r in rows) if w is not None]
    return sum(walls) / len(walls) if walls else None


def verdict(lo: Optional[float], hi: Optional[float], bound: float = GOAL_HALF_WIDTH) -> str:
    """'holds' (the interval lies above 0), 'contradicted' (below 0), 'no effect larger than X points' (inside
    +-``bound``, X its points), else 'inconclusive' (also without an interval: fewer than 2 seeds)."""
    if lo is None or hi is None:
        return 'inconclusive'
    if lo > 0:
        return 'holds'
    if hi < 0:
        return 'contradicted'
    if -bound <= lo and hi <= bound:
        return f'no effect larger than {100 * bound:g} points'
    return 'inconclusive'


def paired(results: Dict, value=lambda row: row.get('speech_acc'), goal: Optional[float] = GOAL_HALF_WIDTH,
           bound: float = GOAL_HALF_WIDTH) -> Dict[str, Dict]:
    """ordering -> ``{diff, lo, hi, n_seeds, sd, half_width, verdict}`` over the seeds both arms ran: the t interval
    of the per-seed differences ``value(arm row) - value(other row)`` (fractions). With ``goal`` (the speech
    accuracy) also ``goal_met`` (half-width <= goal), and, for an ordering that misses it, ``seeds_needed`` (what the
    observed per-seed SD implies for the goal), ``extra_seeds`` and ``extra_hours`` (the elapsed hours of those
    seeds of both arms at their measured per-seed wall time, ``parallel.jobs`` runs at once as they ran). Orderings
    whose arms were not both run are left out."""
    arms = results.get('arms', {})
    jobs = parallel_jobs(results)
    out: Dict[str, Dict] = {}
    for arm, other in ORDERINGS:
        if arm not in arms or other not in arms:
            continue
        mine = {r['seed']: value(r) for r in arms[arm]}
        theirs = {r['seed']: value(r) for r in arms[other]}
        seeds = sorted(s for s in set(mine) & set(theirs) if mine[s] is not None and theirs[s] is not None)
        diffs = [mine[s] - theirs[s] for s in seeds]
        mean, half = t_interval(diffs)
        sd = statistics.stdev(diffs) if len(diffs) > 1 else None   # the SD t_interval uses
        entry = {'diff': mean, 'lo': None if half is None else mean - half, 'hi': None if half is None else mean + half,
                 'n_seeds': len(seeds), 'seeds': seeds, 'sd': sd, 'half_width': half}
        entry['verdict'] = verdict(entry['lo'], entry['hi'], bound) if seeds else 'not run'
        if goal is not None:
            entry['goal_met'] = half is not None and half <= goal + 1e-12
            entry['seeds_needed'] = entry['extra_seeds'] = entry['extra_hours'] = None
            if not entry['goal_met'] and sd is not None:
                need = seeds_for_half_width(sd, goal)
                entry['seeds_needed'] = need
                if need is not None:
                    entry['extra_seeds'] = max(0, need - len(seeds))
                    walls = [per_seed_wall(arms[arm]), per_seed_wall(arms[other])]
                    if None not in walls:
                        entry['extra_hours'] = round(entry['extra_seeds'] * sum(walls) / jobs / 3600, 2)
        out[ordering_name(arm, other)] = entry
    return out


def goal_plan(results: Dict) -> Dict:
    """What the half-width goal asks of the whole run: per arm the seeds its orderings that miss the goal need (the
    largest ``seeds_needed`` among them), the extra seeds beyond those run, and the elapsed hours of them all at each
    arm's measured per-seed wall time, ``parallel.jobs`` runs at once (an arm shared by several orderings counted
    once). ``{'arms': {arm: {seeds_needed,
    extra_seeds, hours}}, 'hours': total or None when a wall time is missing}``; arms whose orderings all meet the
    goal (or have one seed, no SD) are left out."""
    arms = results.get('arms', {})
    need: Dict[str, int] = {}
    for name, e in paired(results).items():
        if e.get('seeds_needed'):
            for arm in name.split(' - '):
                need[arm] = max(need.get(arm, 0), e['seeds_needed'])
    out: Dict[str, Dict] = {}
    for arm in _arms_sorted(need):
        extra = max(0, need[arm] - len({r['seed'] for r in arms[arm]}))
        wall = per_seed_wall(arms[arm])
        out[arm] = {'seeds_needed': need[arm], 'extra_seeds': extra,
                    'hours': None if wall is None else round(extra * wall / parallel_jobs(results) / 3600, 2)}
    hours = [v['hours'] for v in out.values()]
    return {'arms': out, 'hours': None if None in hours else round(sum(hours), 2)}


def paired_all(results: Dict) -> Dict[str, Dict[str, Dict]]:
    """``{'paired': speech accuracy, 'paired_auc': area under the speech validation curve, 'paired_text': text
    accuracy}``, each :func:`paired` (the half-width goal on the speech accuracy only)."""
    return {'paired': paired(results),
            'paired_auc': paired(results, value=lambda r: curve_auc(r.get('curve')), goal=None),
            'paired_text': paired(results, value=lambda r: r.get('text_acc'), goal=None)}


def allwrong_summary(results: Dict) -> Dict[str, Dict]:
    """arm -> {groups, speech_rollouts (summed over seeds), share: (mean, half-width) over seeds of the share of
    speech rollouts with a non-zero advantage in groups where every speech rollout was wrong}; arms without the
    measure (sft, dpo: None) are left out."""
    out = {}
    for arm in _arms_sorted(results.get('arms', {})):
        rows = [r.get('allwrong') or {} for r in results['arms'][arm]]
        shares = [r.get('nonzero_adv_share') for r in rows]
        if all(s is None for s in shares):
            continue
        out[arm] = {'groups': sum(r.get('groups') or 0 for r in rows),
                    'speech_rollouts': sum(r.get('speech_rollouts') or 0 for r in rows),
                    'share': t_interval(shares)}
    return out


# ---------------------------------------------------------------- checks
def _pts(x: Optional[float]) -> str:
    return '-' if x is None else f'{100 * x:.1f}'


def _ci(mean: Optional[float], half: Optional[float], scale: float = 100.0) -> str:
    if mean is None:
        return '-'
    return f'{scale * mean:.1f}' + ('' if half is None else f' ± {scale * half:.1f}')


def _signed(x: Optional[float]) -> str:
    return '-' if x is None else f'{100 * x:+.1f}'


def interval_text(entry: Dict) -> str:
    """'+2.1 [-0.4, +4.6]' (points) of a paired entry; the difference alone without an interval."""
    if entry.get('diff') is None:
        return '-'
    if entry.get('lo') is None:
        return f"{_signed(entry['diff'])} (one seed, no interval)"
    return f"{_signed(entry['diff'])} [{_signed(entry['lo'])}, {_signed(entry['hi'])}]"


def validity(results: Dict) -> List[Dict]:
    """The validity conditions, computed from the data: [{name, holds (True/False/None: not measured), text}]."""
    s1 = results.get('stage1', {}).get('text_acc')
    start = results.get('stage2', {})
    out = [{'name': 'stage 1 text accuracy >= 90 %',
            'holds': None if s1 is None else s1 >= STAGE1_MIN_TEXT - 1e-9,
            'text': f'stage 1 text accuracy {_pts(s1)} % (needs >= {100 * STAGE1_MIN_TEXT:.0f})'}]
    hearing = start.get('hearing_acc')
    out.append({'name': 'the start hears >= 90 % of the test items',
                'holds': None if hearing is None else hearing >= START_MIN_HEARING - 1e-9,
                'text': (f"the start's hearing probe {_pts(hearing)} % of {start.get('hearing_n', '-')} test items "
                         f'(needs >= {100 * START_MIN_HEARING:.0f})')})
    sp, tx = start.get('speech_acc'), start.get('text_acc')
    gap = None if sp is None or tx is None else tx - sp
    out.append({'name': "the start's speech >= 15 points below its text",
                'holds': None if gap is None else gap >= START_MIN_GAP - 1e-9,
                'text': f'start speech {_pts(sp)} %, text {_pts(tx)} %, gap {_pts(gap)} points '
                        f'(needs >= {100 * START_MIN_GAP:.0f})'})
    mean, half = arm_summary(results).get('grpo', {}).get('speech', (None, None))
    room = None if mean is None or tx is None else tx - mean
    out.append({'name': "standard GRPO ends >= 10 points below the start's text",
                'holds': None if room is None else room >= GRPO_MIN_ROOM - 1e-9,
                'text': ('standard GRPO not run' if room is None else
                         f"standard GRPO speech {_ci(mean, half)} % (mean over seeds) vs the start's text "
                         f'{_pts(tx)} %: {_pts(room)} points below (needs >= {100 * GRPO_MIN_ROOM:.0f})')})
    return out


# ---------------------------------------------------------------- paths
# an absolute path inside a string: a '/' that follows no word character, dot, '$', ':' or '/' (a URL's '//' and
# relative paths are left alone), up to the next blank or quote
_ABSOLUTE = re.compile(r'(?<![\w.$:/~])/(?:[^\s/\'"]+/)*([^\s/\'"]+)')


def strip_absolute(obj):
    """``obj`` (JSON data) with every absolute path in its strings cut to its last component: the safety net
    behind the pipeline's own relative paths, so that no report names the machine's folders."""
    if isinstance(obj, str):
        return _ABSOLUTE.sub(lambda m: m.group(1), obj)
    if isinstance(obj, dict):
        return {k: strip_absolute(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strip_absolute(v) for v in obj]
    return obj


# ---------------------------------------------------------------- results.json
def results_json(results: Dict) -> Dict:
    """The data of ``results.json`` (module docstring; docs/miniature.md lists the keys), no absolute path."""
    results = add_mrr(results)
    keep = ('seed', 'speech_acc', 'text_acc', 'hearing_acc', 'mrr', 'mrr_start', 'curve', 'allwrong', 'checkpoint',
            'steps', *RUN_WALL_FIELDS, 'cached')
    summ = arm_summary(results)
    start = results.get('stage2', {})
    data = {
        'command': results.get('command'), 'date': results.get('date'), 'git_commit': results.get('git_commit'),
        'setting': results.get('setting'), 'seeds': results.get('seeds'), 'steps': results.get('steps'),
        'stage1': results.get('stage1', {}), 'stage2': start, 'start': start,
        'arms': {arm: [{k: r.get(k) for k in keep if k in r} for r in rows] for arm, rows in results['arms'].items()},
        'summary': {arm: {k: {'mean': m, 'ci95_half_width': h} for k, (m, h) in v.items()} for arm, v in summ.items()},
        **paired_all(results),
        'goal_half_width': GOAL_HALF_WIDTH, 'goal_plan': goal_plan(results),
        'allwrong': {arm: dict(v, share={'mean': v['share'][0], 'ci95_half_width': v['share'][1]})
                     for arm, v in allwrong_summary(results).items()},
        'validity': validity(results),
        'wall_seconds': results.get('wall_seconds', {}), 'wall_cached': results.get('wall_cached', {}),
        'parallel': results.get('parallel'), 'elapsed_estimate_seconds': elapsed_estimate(results),
        'paper_ablation': {'rows': paper_ablation()[0], 'source': paper_ablation()[1],
                           'differences': paper_differences()},
        'training_curves': results.get('training_curves', {}),
        'layer_similarity': {k: {f: v.get(f) for f in ('layers', 'means', 'ci_lower', 'ci_upper', 'pooled_means',
                                                       'pooled_ci_lower', 'pooled_ci_upper', 'n_samples', 'model')}
                             for k, v in results.get('layer_similarity', {}).items()},
    }
    return strip_absolute(data)


# ---------------------------------------------------------------- figures
_COLORS = {arm: plt.get_cmap('tab10')(i % 10) for i, arm in enumerate(ARM_ORDER)}


def plot_accuracy(results: Dict, stem: Path) -> List[Path]:
    """Bars of hearing, speech and text accuracy (%) per arm with 95 % intervals over seeds; the start's as dashed
    lines."""
    summ = arm_summary(results)
    arms = list(summ)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(arms) + 2), 4))
    width = 0.27
    kinds = (('hearing', 'tab:green'), ('speech', 'tab:blue'), ('text', 'tab:orange'))
    for k, (key, color) in enumerate(kinds):
        means = [100 * (summ[a][key][0] or 0.0) for a in arms]
        errs = [100 * (summ[a][key][1] or 0.0) for a in arms]
        ax.bar([i + (k - 1) * width for i in range(len(arms))], means, width, yerr=errs, capsize=3,
               color=color, label=key)
    start = results.get('stage2', {})
    for (key, color), field in zip(kinds, ('hearing_acc', 'speech_acc', 'text_acc'), strict=True):
        if start.get(field) is not None:
            ax.axhline(100 * start[field], color=color, linestyle='--', linewidth=1, label=f'start {key}')
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels(arms, rotation=20)
    ax.set_ylabel('test accuracy (%)')
    ax.set_ylim(0, 100)
    ax.set_title('accuracy per arm (mean over seeds, 95 % t-interval)', fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis='y', alpha=0.3)
    return save_figure(fig, stem)


def band_series(curves: Sequence[Sequence[Dict]], key: str) -> Tuple[List[int], List[float], List[float]]:
    """(steps, mean, half-width) over seeds of ``key`` at each step of the curves (half-width 0 where fewer than two
    seeds have the step); steps without a value are left out."""
    by: Dict[int, List[float]] = {}
    for curve in curves:
        for point in curve or ():
            if point.get(key) is not None:
                by.setdefault(int(point['step']), []).append(float(point[key]))
    steps = sorted(by)
    stats = [t_interval(by[s]) for s in steps]
    return steps, [m for m, _ in stats], [h or 0.0 for _, h in stats]


def plot_validation_curves(results: Dict, stem: Path) -> List[Path]:
    """Validation accuracy over the optimizer steps, speech and text panels: one line per arm (mean over seeds)
    with its 95 % t band over seeds."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    arms = results.get('arms', {})
    for ax, key, title in zip(axes, ('speech_acc', 'text_acc'), ('speech', 'text'), strict=True):
        for arm in _arms_sorted(arms):
            steps, mean, half = band_series([r.get('curve') for r in arms[arm]], key)
            if not steps:
                continue
            m, h = np.array(mean) * 100, np.array(half) * 100
            ax.plot(steps, m, marker='.', color=_COLORS.get(arm), label=arm)
            ax.fill_between(steps, m - h, m + h, color=_COLORS.get(arm), alpha=0.15, linewidth=0)
        ax.set_title(f'{title}: validation accuracy (mean over seeds, 95 % band)', fontsize=9)
        ax.set_xlabel('optimizer step')
        ax.set_ylabel('accuracy (%)')
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc='lower center', ncol=min(len(labels), 9), fontsize=8,
                   bbox_to_anchor=(0.5, -0.04))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, stem)


def curve_series(curves: Sequence[Sequence[Dict]]) -> Dict[str, Tuple[List[int], List[float]]]:
    """Mean over seeds per step of each quantity of the training logs (the rollouts' speech_acc and text_acc,
    reward:<name>); None values are left out; a quantity without any value is absent."""
    by: Dict[str, Dict[int, List[float]]] = {}
    for curve in curves:
        for point in curve:
            values = {'speech_acc': point.get('speech_acc'), 'text_acc': point.get('text_acc')}
            values.update({f'reward:{k}': v for k, v in (point.get('rewards') or {}).items()})
            for name, value in values.items():
                if value is not None:
                    by.setdefault(name, {}).setdefault(int(point['step']), []).append(float(value))
    return {name: (sorted(steps), [sum(steps[s]) / len(steps[s]) for s in sorted(steps)])
            for name, steps in by.items()}


def smooth(values: Sequence[float], window: int = SMOOTH_STEPS) -> List[float]:
    """Trailing moving average: point i is the mean of values[max(0, i - window + 1): i + 1]."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_training_rewards(results: Dict, stem: Path) -> List[Path]:
    """The training rollouts' accuracy per modality and each reward's mean, per arm (mean over seeds), smoothed
    over SMOOTH_STEPS steps; one panel per quantity."""
    series = {arm: curve_series(c) for arm, c in results.get('training_curves', {}).items()}
    names = sorted({n for s in series.values() for n in s},
                   key=lambda n: (('speech_acc', 'text_acc').index(n) if ':' not in n else 2, n)) or ['speech_acc']
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for arm in _arms_sorted(series):
            if name in series[arm]:
                steps, values = series[arm][name]
                ax.plot(steps, smooth(values), color=_COLORS.get(arm), label=arm)
        title = {'speech_acc': "speech rollouts' accuracy", 'text_acc': "text rollouts' accuracy"}.get(name, name)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel('optimizer step')
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis('off')
    legend: Dict[str, object] = {}   # every arm drawn in any panel (an arm may lack a quantity)
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(list(legend.values()), list(legend), loc='lower center', ncol=min(len(legend), 9), fontsize=8,
                   bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f'training rollouts (mean over seeds, moving average over {SMOOTH_STEPS} steps)', fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save_figure(fig, stem)


def plot_forest(results: Dict, stem: Path) -> List[Path]:
    """The paired speech differences, one row per ordering: the mean and its 95 % t interval (points), the
    +-goal band shaded, 0 marked, and the paper's difference as a cross where it publishes one."""
    entries = paired(results)
    papers = paper_differences()
    names = list(entries)
    fig, ax = plt.subplots(figsize=(7, 0.45 * max(len(names), 1) + 1.4))
    ax.axvspan(-100 * GOAL_HALF_WIDTH, 100 * GOAL_HALF_WIDTH, color='0.9', label=f'±{100 * GOAL_HALF_WIDTH:g} points')
    ax.axvline(0, color='0.4', linewidth=1)
    labelled = set()   # one legend entry per kind of mark

    def label(kind: str) -> Optional[str]:
        if kind in labelled:
            return None
        labelled.add(kind)
        return kind

    for i, name in enumerate(names):
        y = len(names) - 1 - i
        e = entries[name]
        if e['diff'] is None:
            continue
        if e['lo'] is not None:
            ax.plot([100 * e['lo'], 100 * e['hi']], [y, y], color='tab:blue', linewidth=2)
        ax.plot(100 * e['diff'], y, 'o', color='tab:blue', label=label('ours (mean, 95 % t interval)'))
        if papers.get(name, {}).get('diff') is not None:
            ax.plot(papers[name]['diff'], y, 'x', color='tab:red', markersize=8, mew=2,
                    label=label("paper's difference"))
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([f"{n} (n={entries[n]['n_seeds']})" for n in reversed(names)], fontsize=8)
    ax.set_xlabel('paired speech-accuracy difference (points)')
    ax.set_title('paired differences over seeds', fontsize=10)
    ax.grid(axis='x', alpha=0.3)
    ax.legend(fontsize=7, loc='best')
    return save_figure(fig, stem)


def plot_layers(results: Dict, stem: Path) -> List[Path]:
    """The layer-similarity curves (token and pooled measures) of the start and the arms measured, through the
    analysis's own ``plot_comparison`` (one panel per measure)."""
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
            'validation_curves': plot_validation_curves(results, out_dir / 'validation_curves'),
            'training_rewards': plot_training_rewards(results, out_dir / 'training_rewards'),
            'paired_differences': plot_forest(results, out_dir / 'paired_differences'),
            'layer_similarity': plot_layers(results, out_dir / 'layer_similarity')}


FIGURE_FILES = ('accuracy', 'validation_curves', 'training_rewards', 'paired_differences', 'layer_similarity_token',
                'layer_similarity_pooled')


# ---------------------------------------------------------------- markdown
SCALE_CAVEAT = ("The paper's columns are Qwen2.5-Omni-7B on VoiceBench (MMSU and OpenBookQA); ours are a 9 MiB model "
                'on a synthetic world. Set side by side, they compare the direction and size of each difference, '
                'never the levels.')


def ablation_table(results: Dict) -> str:
    """The paper-layout ablation table (rows: the start, then the arms; mean ± 95 % half-width over seeds) with the
    paper's own numbers beside it."""
    summ = arm_summary(results)
    papers, _ = paper_ablation()
    s = results.get('stage2', {})
    head = ('| arm | seeds | hearing (%) | speech acc (%) | text acc (%) | speech curve area (%) | MRR own text | '
            'MRR start text | paper speech | paper MRR |\n|---|---|---|---|---|---|---|---|---|---|\n')
    s_mrr = mrr(s['speech_acc'], s['text_acc']) if s.get('speech_acc') is not None and s.get('text_acc') else None
    m = '-' if s_mrr is None else f'{s_mrr:.1f}'
    lines = [f"| start (stage 2) | - | {_pts(s.get('hearing_acc'))} | {_pts(s.get('speech_acc'))} | "
             f"{_pts(s.get('text_acc'))} | - | {m} | {m} | - | - |"]
    for arm, v in summ.items():
        paper = papers.get(arm)
        p = [f'{paper[k]:.2f}' for k in ('speech', 'mrr')] if paper else ['not reported'] * 2
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | {len(results['arms'][arm])} | {_ci(*v['hearing'])} | "
                     f"{_ci(*v['speech'])} | {_ci(*v['text'])} | {_ci(*v['auc'])} | {_ci(*v['mrr'], scale=1.0)} | "
                     f"{_ci(*v['mrr_start'], scale=1.0)} | " + ' | '.join(p) + ' |')
    return head + '\n'.join(lines) + '\n'


def paired_table(results: Dict) -> str:
    """One row per ordering: the paired speech difference and its verdict, the half-width goal, the paper's
    difference (its claim, or 'not measured'), the curve-area difference and its verdict (points)."""
    allp = paired_all(results)
    papers = paper_differences()
    head = ('| ordering | seeds | speech difference [95 % interval] | verdict | half-width ≤ '
            f'{100 * GOAL_HALF_WIDTH:g} | paper | curve-area difference | verdict (area) |\n'
            '|---|---|---|---|---|---|---|---|\n')
    lines = []
    for name, e in allp['paired'].items():
        auc = allp['paired_auc'].get(name, {})
        paper = papers.get(name, {})
        ptxt = ({'table': f"{paper.get('diff') or 0:+.2f}", 'claim': 'claimed, no number', 'none': 'not measured'}
                .get(paper.get('kind'), '-'))
        goal = ('-' if e['half_width'] is None else
                f"{'yes' if e['goal_met'] else 'no'} (±{100 * e['half_width']:.1f})")
        lines.append(f"| {name} | {e['n_seeds']} | {interval_text(e)} | **{e['verdict']}** | {goal} | {ptxt} | "
                     f"{interval_text(auc)} | {auc.get('verdict', '-')} |")
    return head + '\n'.join(lines) + '\n'


def goal_lines(results: Dict) -> List[str]:
    """For each ordering that misses the half-width goal: why (its per-seed SD) and what more seeds would cost."""
    out, jobs = [], parallel_jobs(results)
    for name, e in paired(results).items():
        if e.get('goal_met') or not e['n_seeds']:
            continue
        if e['sd'] is None:
            out.append(f'- {name}: one seed, no interval; at least 2 seeds are needed for one.')
            continue
        if e['seeds_needed'] is None:
            out.append(f"- {name}: per-seed SD {100 * e['sd']:.1f} points; more than 10000 seeds would be needed.")
            continue
        cost = ('' if e['extra_hours'] is None else
                f", about {e['extra_hours']:.1f} h of both arms' runs at their measured per-seed wall time"
                + (f', {jobs} at once' if jobs > 1 else ''))
        out.append(f"- {name}: half-width ±{100 * e['half_width']:.1f} points from a per-seed SD of "
                   f"{100 * e['sd']:.1f} points over {e['n_seeds']} seeds; that SD implies {e['seeds_needed']} seeds "
                   f"for ±{100 * GOAL_HALF_WIDTH:g}: {e['extra_seeds']} more{cost}.")
    return out


def allwrong_table(results: Dict) -> str:
    """Per GRPO-style arm: the groups (question x step) whose speech rollouts were all wrong, their speech rollouts,
    and the share of those with a non-zero advantage (mean ± 95 % half-width over seeds)."""
    head = ('| arm | groups with every speech rollout wrong | their speech rollouts | share with a non-zero advantage '
            '(%) |\n|---|---|---|---|\n')
    rows = [f"| {arm} | {v['groups']} | {v['speech_rollouts']} | {_ci(*v['share'])} |"
            for arm, v in allwrong_summary(results).items()]
    return head + '\n'.join(rows or ['| - | - | - | - |']) + '\n'


def _status(holds: Optional[bool]) -> str:
    return {True: 'holds', False: 'fails', None: 'not measured'}[holds]


def _seconds(s: Optional[float]) -> str:
    return '-' if s is None else f'{s:.0f} s'


def elapsed_estimate(results: Dict) -> Optional[float]:
    """The seconds one uninterrupted call of a pipeline that ran its arm runs ``parallel.jobs`` at once would take:
    every other job's seconds plus the arm runs' divided by the jobs (``wall_seconds``, without 'total' and 'this
    invocation'); None when the arm runs went one at a time."""
    jobs = parallel_jobs(results)
    if jobs <= 1:
        return None
    wall = {k: v for k, v in results.get('wall_seconds', {}).items()
            if v is not None and k not in ('total', 'this invocation')}
    arms = sum(v for k, v in wall.items() if k.startswith('arm '))
    return sum(v for k, v in wall.items() if not k.startswith('arm ')) + arms / jobs


def report_section(results: Dict, figure_dir: str) -> str:
    """The generated region of docs/miniature.md (between the markers); ``figure_dir`` is the figures' folder
    relative to the markdown file. No absolute path."""
    wall = results.get('wall_seconds', {})
    cached = results.get('wall_cached', {})
    g = f'{100 * GOAL_HALF_WIDTH:g}'
    out = [MARK_START, '', '## Report (generated)', '',
           f"Generated by `{results.get('command')}` on {results.get('date')} at commit "
           f"`{results.get('git_commit')}`, setting `{results.get('setting')}`, seeds {results.get('seeds')}, "
           f"stage-3 steps {results.get('steps')}. Every number below comes from `{figure_dir}/results.json` of "
           'this run; rerunning the command regenerates it.', '',
           '### Validity', '']
    out += [f"- {c['name']}: **{_status(c['holds'])}** ({c['text']})" for c in validity(results)]
    out += ['', '### Accuracy per arm', '',
            'Mean ± 95 % Student-t half-width over seeds (eval.qa on the test split, rule extractor). Hearing: the '
            "probe's share of test items whose spoken values the model repeats exactly. Speech curve area: the area "
            'under the speech validation curve divided by its step span (the mean level over training). MRR = speech '
            "accuracy / text accuracy x 100, with the arm's own text accuracy and with the start's. "
            f'Paper columns: {paper_ablation()[1]}. {SCALE_CAVEAT}', '', ablation_table(results),
            '### Paired differences', '',
            'Each ordering is the per-seed difference arm seed s minus the other arm\'s seed s (every arm runs the '
            'same seeds: the same LoRA initialisation, data order and sampling seeds), its mean and 95 % t interval '
            'over seeds, in points. It **holds** when the interval lies above 0, is **contradicted** below 0, shows '
            f'**no effect larger than {g} points** inside ±{g}, and is **inconclusive** otherwise. The goal is a '
            f'half-width of at most {g} points for each speech difference. The paper\'s column is its Avg(A) '
            'difference (no seeds or intervals are published).', '', paired_table(results)]
    missing = goal_lines(results)
    if missing:
        out += ['Orderings that miss the half-width goal, and what more seeds would cost (the observed per-seed SD '
                'taken as the true one; shared arms such as standard GRPO are counted once per ordering):', '',
                *missing, '']
        plan = goal_plan(results)
        if plan['arms']:
            runs = ', '.join(f"{arm} to {v['seeds_needed']} seeds" for arm, v in plan['arms'].items())
            total = '' if plan['hours'] is None else f": about {plan['hours']:.1f} h more in all"
            out += [f'For every ordering at once (each arm counted once): {runs}{total}.', '']
    else:
        out += [f'Every paired speech interval has a half-width of at most {g} points.', '']
    out += ['### Where every speech rollout was wrong', '',
            'The paper argues that the dense rewards help most where a group\'s speech rollouts are all wrong (the '
            'accuracy reward is then 0 for all of them, so standard GRPO\'s speech advantages come from the format '
            'reward alone). Measured from '
            'the runs\' rollout dumps: groups (question x step) whose speech rollouts all have accuracy reward 0, and '
            'the share of those rollouts whose advantage is not 0.', '', allwrong_table(results)]
    out += ['### Wall time', '']
    par = results.get('parallel') or {}
    elapsed = elapsed_estimate(results)
    if elapsed is not None:
        out += [f"The arm runs went {par['jobs']} at once, {par.get('threads_per_job')} torch thread(s) each: an "
                "arm's seconds are its runs' own (training, test evaluation, validation curve, hearing probe), so "
                "'total', their sum with the other jobs', exceeds the time they took together. One uninterrupted "
                f"call takes about {elapsed / 3600:.1f} h: the other jobs' seconds plus the arm runs' divided by "
                f"{par['jobs']}. 'this invocation' is the elapsed time of the call that wrote this report.", '']
    out += ['| stage | seconds | |', '|---|---|---|']
    for stage, seconds in wall.items():
        note = ''
        if cached.get(stage):   # a cached stage is evaluated again in each call; an arm's evaluation is cached too
            if stage.startswith('stage'):
                note = 'cached: its training time stored when it was made, its evaluation this call'
            elif seconds is None:
                note = 'cached: made by an earlier call that stored no time'
            else:
                note = 'cached: the time stored when it was made'
        out.append(f'| {stage} | {_seconds(seconds)} | {note} |')
    out += ['', '### Figures', '']
    for name in FIGURE_FILES:
        out.append(f'![{name}]({figure_dir}/{name}.png) ([PDF]({figure_dir}/{name}.pdf))')
        out.append('')
    out += [MARK_END]
    return strip_absolute('\n'.join(out) + '\n')


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
    """Write ``report_dir/results.json``, the figures and the generated region of ``report_md`` (created when
    missing); returns the paths written."""
    report_dir = Path(report_dir)
    report_md = Path(report_md)
    old = report_md.read_text() if report_md.exists() else ''
    rel = Path(os.path.relpath(report_dir, report_md.parent)).as_posix()
    new_md = replace_marked(old, report_section(results, rel))   # bad markers refused before anything is written
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / 'results.json').write_text(json.dumps(results_json(results), indent=1) + '\n')
    figures = write_figures(results, report_dir)
    report_md.parent.mkdir(parents=True, exist_ok=True)
    report_md.write_text(new_md)
    return {'results': report_dir / 'results.json', 'figures': figures, 'markdown': report_md}
