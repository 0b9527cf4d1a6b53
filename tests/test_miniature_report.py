"""The miniature's report (scripts/miniature/report.py) on hand-made results dicts: paired differences and their
intervals worked out by hand, the verdicts, the half-width goal and the seeds it would take, the validity
conditions, results.json's keys (no absolute path), the figures and the generated markdown region."""
from __future__ import annotations

import json
import math
import re

import pytest

from scripts.miniature import report
from trainer.stats import seeds_for_half_width

T_975_2 = 4.302652729911275   # Student t, 97.5 % quantile, 2 degrees of freedom (tables: 4.303)
HALF_SD1 = T_975_2 * 0.01 / math.sqrt(3)   # 0.024841: the half-width of 3 values with SD 1 point


def _rows(speech, text=None, hearing=None, curves=None, wall=(100.0, 20.0), allwrong=None):
    out = []
    for i, s in enumerate(speech):
        row = {'seed': i, 'speech_acc': s, 'text_acc': (text or [0.9] * len(speech))[i],
               'hearing_acc': (hearing or [0.95] * len(speech))[i], 'curve': (curves or [[]] * len(speech))[i],
               'allwrong': (allwrong or [None] * len(speech))[i], 'train_wall_seconds': wall[0],
               'eval_wall_seconds': wall[1], 'checkpoint': f'arms/x-s{i}-abc/train/checkpoint-10'}
        out.append(row)
    return out


def _vcurve(*speech):
    """A validation curve at steps 0, 10, 20 with the given speech accuracies (text 0.9)."""
    return [{'step': 10 * k, 'speech_acc': v, 'text_acc': 0.9} for k, v in enumerate(speech)]


def _tcurve(offset, steps=25):
    return [{'step': s, 'speech_acc': 0.4 + offset, 'text_acc': 0.8, 'loss': 1.0 / (s + 1),
             'rewards': {'tars_format': 0.9, 'tars_accuracy': 0.5 + offset}} for s in range(1, steps + 1)]


def _layer_stats(base):
    return {'layers': [0, 1, 2], 'means': [base, base - 0.05, base - 0.1], 'ci_lower': [base - 0.01] * 3,
            'ci_upper': [base + 0.01] * 3, 'pooled_means': [base, base, base - 0.02],
            'pooled_ci_lower': [base - 0.02] * 3, 'pooled_ci_upper': [base + 0.02] * 3, 'n_samples': 4,
            'model': 'arms/grpo-s0-abc/train/checkpoint-10'}


def hand_results():
    """Speech accuracies chosen so that each verdict is known (the per-seed differences in the comments)."""
    grpo_curves = [_vcurve(0.3, 0.5, 0.5)] * 3                          # area 0.45 each
    rep_curves = [_vcurve(0.3, 0.6, 0.6), _vcurve(0.3, 0.6, 0.6), _vcurve(0.3, 0.6, 0.7)]   # 0.525, 0.525, 0.55
    allwrong = [{'groups': 4, 'speech_rollouts': 16, 'nonzero_adv_share': s} for s in (0.5, 0.6, 0.7)]
    return {
        'command': 'bash scripts/miniature/run.sh --seeds 0,1,2', 'date': '2026-11-30T12:00:00+00:00',
        'git_commit': 'abc123', 'setting': 'full', 'seeds': [0, 1, 2], 'steps': 20,
        'stage1': {'text_acc': 0.95, 'checkpoint': 'stage1-aaa'},
        'stage2': {'speech_acc': 0.40, 'text_acc': 0.80, 'hearing_acc': 0.92, 'hearing_n': 1200,
                   'checkpoint': 'stage2-bbb'},
        'arms': {
            'sft': _rows([0.45, 0.47, 0.49]),                           # grpo - sft: +5, +5, +5
            'dpo': _rows([0.42]),                                       # one seed
            'grpo': _rows([0.50, 0.52, 0.54], curves=grpo_curves, allwrong=[
                {'groups': 5, 'speech_rollouts': 20, 'nonzero_adv_share': 0.0}] * 3),
            'grpo_rep': _rows([0.53, 0.56, 0.56], curves=rep_curves, allwrong=allwrong),   # +3, +4, +2: holds
            'grpo_beh': _rows([0.45, 0.46, 0.50]),                      # -5, -6, -4: contradicted
            'tars': _rows([0.51, 0.51, 0.54]),                          # vs grpo +1, -1, 0: no effect > 3 points
            'tars_global': _rows([0.41, 0.61, 0.54]),                   # tars - it: +10, -10, 0: inconclusive
            'opsd': _rows([0.50]),                                      # one seed
        },
        'training_curves': {'grpo': [_tcurve(0.0), _tcurve(0.02)], 'tars': [_tcurve(0.1)],
                            'sft': [[{'step': 1, 'loss': 1.0, 'speech_acc': None, 'text_acc': None}]]},
        'layer_similarity': {'stage 2': _layer_stats(0.9), 'GRPO': _layer_stats(0.92), 'TARS': _layer_stats(0.97)},
        'wall_seconds': {'stage1': 700.0, 'stage2': 360.0, 'arm grpo': 100.0, 'total': 1160.0},
        'wall_cached': {'stage1': True, 'stage2': False, 'arm grpo': False},
    }


def test_t_interval_and_seeds_for_half_width():
    mean, half = report.t_interval([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and half == pytest.approx(0.24841, abs=1e-5)   # 4.3027 * 0.1 / sqrt(3)
    assert report.t_interval([0.3]) == (0.3, None) and report.t_interval([]) == (None, None)
    # SD 2 points: n=4 gives 3.182 * 2 / 2 = 3.18 > 3, n=5 gives 2.776 * 2 / sqrt(5) = 2.48 <= 3
    assert seeds_for_half_width(0.02, 0.03) == 5
    assert seeds_for_half_width(0.0, 0.03) == 2
    assert seeds_for_half_width(0.1, 0.03) == 46       # t(45) * 10 / sqrt(46) = 2.970; t(44) * 10 / sqrt(45) = 3.004
    assert seeds_for_half_width(1.0, 0.001, max_seeds=50) is None
    with pytest.raises(ValueError, match='seeds_for_half_width: need sd >= 0 and half_width > 0, got 0.1, 0'):
        seeds_for_half_width(0.1, 0)


def test_curve_auc_by_hand():
    assert report.curve_auc(_vcurve(0.3, 0.5, 0.5)) == pytest.approx(0.45)    # (4 + 5) / 20
    assert report.curve_auc(_vcurve(0.3, 0.6, 0.7)) == pytest.approx(0.55)    # (4.5 + 6.5) / 20
    assert report.curve_auc([{'step': 0, 'speech_acc': 0.3}]) is None
    assert report.curve_auc(_vcurve(0.3, None, 0.5)) == pytest.approx(0.4)     # steps 0 and 20 only
    uneven = [{'step': 0, 'speech_acc': 0.2}, {'step': 10, 'speech_acc': 0.4}, {'step': 40, 'speech_acc': 0.4}]
    assert report.curve_auc(uneven) == pytest.approx((3 + 12) / 40)


def test_paired_differences_by_hand():
    p = report.paired(hand_results())
    # orderings in ORDERINGS' order, those with both arms run; rlsd never ran
    assert list(p) == ['grpo_rep - grpo', 'grpo_beh - grpo', 'tars - grpo', 'tars - grpo_rep', 'tars - grpo_beh',
                       'tars - tars_global', 'opsd - grpo', 'tars - opsd', 'grpo - sft', 'grpo - dpo']
    rep = p['grpo_rep - grpo']
    assert rep['diff'] == pytest.approx(0.03) and rep['sd'] == pytest.approx(0.01)
    assert (rep['lo'], rep['hi']) == (pytest.approx(0.03 - HALF_SD1), pytest.approx(0.03 + HALF_SD1))
    assert (rep['n_seeds'], rep['seeds'], rep['verdict'], rep['goal_met']) == (3, [0, 1, 2], 'holds', True)
    assert rep['seeds_needed'] is None and rep['extra_hours'] is None
    beh = p['grpo_beh - grpo']
    assert beh['diff'] == pytest.approx(-0.05) and beh['hi'] == pytest.approx(-0.05 + HALF_SD1)
    assert beh['verdict'] == 'contradicted'
    tars = p['tars - grpo']
    assert tars['diff'] == pytest.approx(0.0, abs=1e-12) and tars['half_width'] == pytest.approx(HALF_SD1)
    assert tars['verdict'] == 'no effect larger than 3 points'
    glob = p['tars - tars_global']
    assert glob['sd'] == pytest.approx(0.1) and glob['half_width'] == pytest.approx(0.24841, abs=1e-5)
    assert (glob['verdict'], glob['goal_met'], glob['seeds_needed'], glob['extra_seeds']) == (
        'inconclusive', False, 46, 43)
    assert glob['extra_hours'] == pytest.approx(round(43 * (120 + 120) / 3600, 2))   # 2.87 h: both arms' seeds
    sft = p['grpo - sft']
    assert sft['diff'] == pytest.approx(0.05) and sft['half_width'] == pytest.approx(0.0, abs=1e-12)
    assert sft['verdict'] == 'holds'
    one = p['opsd - grpo']
    assert (one['n_seeds'], one['lo'], one['hi'], one['verdict'], one['goal_met']) == (1, None, None,
                                                                                       'inconclusive', False)
    assert one['diff'] == pytest.approx(0.0) and one['seeds_needed'] is None
    assert report.verdict(0.001, 0.02) == 'holds' and report.verdict(-0.04, 0.01) == 'inconclusive'
    assert report.verdict(-0.05, 0.05, bound=0.05) == 'no effect larger than 5 points'


def test_goal_plan_counts_each_arm_once():
    plan = report.goal_plan(hand_results())
    # tars - tars_global (SD 10 points) needs 46 seeds; tars - grpo_rep (-2, -5, -2: SD 1.73 points, half-width
    # 4.3) needs 4; opsd - grpo has one seed (no SD); tars is counted once, at the larger of its two needs
    hours = round(43 * 120 / 3600, 2)
    assert plan['arms'] == {'grpo_rep': {'seeds_needed': 4, 'extra_seeds': 1, 'hours': round(120 / 3600, 2)},
                            'tars': {'seeds_needed': 46, 'extra_seeds': 43, 'hours': hours},
                            'tars_global': {'seeds_needed': 46, 'extra_seeds': 43, 'hours': hours}}
    assert plan['hours'] == pytest.approx(2 * hours + round(120 / 3600, 2))
    assert report.paired(hand_results())['tars - grpo_rep']['seeds_needed'] == 4


def test_paired_curve_area_and_text():
    allp = report.paired_all(hand_results())
    auc = allp['paired_auc']['grpo_rep - grpo']
    # per seed: 0.525 - 0.45, 0.525 - 0.45, 0.55 - 0.45 = 0.075, 0.075, 0.1
    sd = math.sqrt(((0.075 - 0.25 / 3) ** 2 * 2 + (0.1 - 0.25 / 3) ** 2) / 2)
    assert auc['diff'] == pytest.approx(0.25 / 3) and auc['half_width'] == pytest.approx(T_975_2 * sd / math.sqrt(3))
    assert auc['verdict'] == 'holds' and 'goal_met' not in auc
    assert allp['paired_auc']['tars - grpo']['n_seeds'] == 0          # tars has no validation curve here
    assert allp['paired_auc']['tars - grpo']['verdict'] == 'not run'
    assert allp['paired_text']['tars - grpo']['diff'] == pytest.approx(0.0, abs=1e-12)


def test_validity_from_the_data():
    checks = report.validity(hand_results())
    assert [c['holds'] for c in checks] == [True, True, True, True]
    assert [c['text'] for c in checks] == [
        'stage 1 text accuracy 95.0 % (needs >= 90)',
        "the start's hearing probe 92.0 % of 1200 test items (needs >= 90)",
        'start speech 40.0 %, text 80.0 %, gap 40.0 points (needs >= 15)',
        "standard GRPO speech 52.0 ± 5.0 % (mean over seeds) vs the start's text 80.0 %: 28.0 points below "
        '(needs >= 10)']
    bad = hand_results()
    bad['stage1']['text_acc'] = 0.28
    bad['stage2'] = {'speech_acc': 0.50, 'text_acc': 0.60, 'hearing_acc': 0.5, 'hearing_n': 6}   # gap 10, room 8
    assert [c['holds'] for c in report.validity(bad)] == [False, False, False, False]
    unknown = hand_results()
    unknown['stage2'].pop('hearing_acc')
    del unknown['arms']['grpo']
    got = report.validity(unknown)
    assert (got[1]['holds'], got[3]['holds'], got[3]['text']) == (None, None, 'standard GRPO not run')


def test_allwrong_summary():
    got = report.allwrong_summary(hand_results())
    assert list(got) == ['grpo', 'grpo_rep']           # arms without the measure (None) are left out
    assert (got['grpo_rep']['groups'], got['grpo_rep']['speech_rollouts']) == (12, 48)
    assert got['grpo_rep']['share'] == (pytest.approx(0.6), pytest.approx(T_975_2 * 0.1 / math.sqrt(3)))
    assert got['grpo']['share'] == (0.0, 0.0)


def test_paper_differences_from_the_data_file():
    papers = report.paper_differences()
    assert papers['tars - grpo'] == {'diff': 3.54, 'kind': 'table', 'note': 'ablation table'}        # 76.84 - 73.30
    assert papers['grpo_rep - grpo']['diff'] == 1.86 and papers['grpo - dpo']['diff'] == 3.41
    assert (papers['tars - tars_global']['diff'], papers['tars - tars_global']['kind']) == (None, 'claim')
    assert papers['tars - tars_global']['note'].startswith('claimed without a number')
    assert papers['tars - opsd'] == {'diff': None, 'kind': 'none', 'note': 'not measured by the paper'}


def test_strip_absolute():
    assert report.strip_absolute('--cache_dir /tmp/x/cache --seeds 0') == '--cache_dir cache --seeds 0'
    assert report.strip_absolute({'a': ['/work/c/stage2-abc/', 'arms/x/y']}) == {'a': ['stage2-abc/', 'arms/x/y']}
    kept = 'speech / text x 100 (https://arxiv.org/abs/2601.05543; docs/paper_results.json) $TARS_CACHE/miniature'
    assert report.strip_absolute(kept) == kept
    assert report.strip_absolute(3.5) == 3.5


def _absolute_paths(text: str):
    return re.findall(r'(?<![\w.$:/~])/[\w.-]+/[\w./-]*', text)


def test_results_json_figures_and_markdown(tmp_path):
    md = tmp_path / 'doc.md'
    before = '# Title\n\nHand-written text.\n\n'
    after = '\n## After\n\nMore hand-written text.\n'
    md.write_text(before + report.MARK_START + '\nold generated\n' + report.MARK_END + '\n' + after)
    results = hand_results()
    results['stage2']['checkpoint'] = str(tmp_path / 'cache' / 'miniature' / 'stage2-bbb')   # the net catches it
    out = report.write_report(results, tmp_path / 'doc', md)
    raw = (tmp_path / 'doc' / 'results.json').read_text()
    assert str(tmp_path) not in raw and _absolute_paths(raw) == []
    data = json.loads(raw)
    for key in ('command', 'date', 'git_commit', 'setting', 'stage1', 'stage2', 'start', 'arms', 'summary', 'paired',
                'paired_auc', 'paired_text', 'goal_plan', 'allwrong', 'validity', 'wall_seconds', 'paper_ablation',
                'training_curves', 'layer_similarity'):
        assert key in data, key
    assert data['start']['hearing_acc'] == 0.92 and data['start']['checkpoint'] == 'stage2-bbb'
    assert set(data['arms']) == {'sft', 'dpo', 'grpo', 'grpo_rep', 'grpo_beh', 'tars', 'tars_global', 'opsd'}
    row = data['arms']['grpo_rep'][2]
    assert set(row) >= {'seed', 'speech_acc', 'text_acc', 'hearing_acc', 'curve', 'allwrong', 'mrr', 'checkpoint'}
    assert row['curve'] == _vcurve(0.3, 0.6, 0.7) and row['hearing_acc'] == 0.95
    assert set(data['paired']['grpo_rep - grpo']) >= {'diff', 'lo', 'hi', 'n_seeds'}
    assert data['paired']['grpo_rep - grpo']['n_seeds'] == 3
    assert data['paper_ablation']['differences']['tars - grpo']['diff'] == 3.54
    assert data['training_curves']['grpo'][1][0]['speech_acc'] == pytest.approx(0.42)
    for name in report.FIGURE_FILES:
        for ext in ('.png', '.pdf'):
            path = tmp_path / 'doc' / f'{name}{ext}'
            assert path.is_file() and path.stat().st_size > 1000, path
    assert not (tmp_path / 'doc' / 'training_curves.png').exists()   # the unsmoothed per-step plot is gone
    assert out['markdown'] == md
    text = md.read_text()
    assert str(tmp_path) not in text and _absolute_paths(text) == []
    assert text.startswith(before) and text.endswith(after)
    assert 'old generated' not in text and text.count(report.MARK_START) == 1
    assert ('| grpo_rep - grpo | 3 | +3.0 [+0.5, +5.5] | **holds** | yes (±2.5) | +1.86 | +8.3 [+4.7, +11.9] | '
            'holds |') in text
    assert '| grpo_beh - grpo | 3 | -5.0 [-7.5, -2.5] | **contradicted** | yes (±2.5) | +2.22 | - | not run |' in text
    assert ('| tars - grpo | 3 | +0.0 [-2.5, +2.5] | **no effect larger than 3 points** | yes (±2.5) | +3.54 |'
            in text)
    assert ('| tars - tars_global | 3 | +0.0 [-24.8, +24.8] | **inconclusive** | no (±24.8) | claimed, no number | '
            '- | not run |') in text
    assert '| opsd - grpo | 1 | +0.0 (one seed, no interval) | **inconclusive** | - | not measured | - |' in text
    assert ('- tars - tars_global: half-width ±24.8 points from a per-seed SD of 10.0 points over 3 seeds; that SD '
            "implies 46 seeds for ±3: 43 more, about 2.9 h of both arms' runs at their measured per-seed wall time."
            in text)
    assert '- opsd - grpo: one seed, no interval; at least 2 seeds are needed for one.' in text
    assert ('For every ordering at once (each arm counted once): grpo_rep to 4 seeds, tars to 46 seeds, tars_global '
            'to 46 seeds: about 2.9 h more in all.') in text
    assert ('- the start hears >= 90 % of the test items: **holds** (the start\'s hearing probe 92.0 % of 1200 test '
            'items (needs >= 90))') in text
    assert '| start (stage 2) | - | 92.0 | 40.0 | 80.0 | - | 50.0 | 50.0 | - | - |' in text
    assert ('| GRPO (R_base: format + accuracy) | 3 | 95.0 ± 0.0 | 52.0 ± 5.0 | 90.0 ± 0.0 | 45.0 ± 0.0 | '
            '57.8 ± 5.5 | 65.0 ± 6.2 | 73.30 | 94.04 |') in text
    assert '| on-policy self-distillation (text teacher) | 1 |' in text and text.count('not reported') == 4
    assert '| grpo_rep | 12 | 48 | 60.0 ± 24.8 |' in text
    assert report.SCALE_CAVEAT in text and text.count(report.SCALE_CAVEAT) == 1
    assert '| stage1 | 700 s | cached: its training time stored when it was made, its evaluation this call |' in text
    assert '![paired_differences](doc/paired_differences.png) ([PDF](doc/paired_differences.pdf))' in text
    assert 'Generated by `bash scripts/miniature/run.sh --seeds 0,1,2`' in text
    # a second run replaces the region again and keeps the rest
    report.write_report(results, tmp_path / 'doc', md)
    assert md.read_text() == text


def test_every_interval_within_the_goal_says_so(tmp_path):
    results = hand_results()
    results['arms'] = {k: results['arms'][k] for k in ('grpo', 'grpo_rep')}
    section = report.report_section(results, 'doc')
    assert 'Every paired speech interval has a half-width of at most 3 points.' in section


def test_bad_markers_write_nothing(tmp_path):
    md = tmp_path / 'doc.md'
    md.write_text(report.MARK_END + '\n' + report.MARK_START + '\n')
    with pytest.raises(ValueError, match='must each stand once on a line of their own, start before end'):
        report.write_report(hand_results(), tmp_path / 'doc', md)
    assert not (tmp_path / 'doc').exists()


def test_markers():
    section = report.MARK_START + '\nnew\n' + report.MARK_END + '\n'
    assert report.replace_marked('a\n', section) == 'a\n\n' + section
    with pytest.raises(ValueError):
        report.replace_marked(report.MARK_START + '\n', section)
    # prose that quotes the markers (docs/miniature.md does) is not a marker: only whole lines are
    quoted = f'the region between `{report.MARK_START}` and `{report.MARK_END}`\n'
    old = quoted + report.MARK_START + '\nold\n' + report.MARK_END + '\ntail\n'
    assert report.replace_marked(old, section) == quoted + section + 'tail\n'
    assert report.replace_marked(quoted, section) == quoted + '\n' + section


def test_training_series_smoothed():
    s = report.curve_series([_tcurve(0.0, 3), _tcurve(0.02, 3)])
    assert s['speech_acc'] == ([1, 2, 3], [pytest.approx(0.41)] * 3)
    assert s['reward:tars_accuracy'][1] == pytest.approx([0.51] * 3)
    assert 'loss' not in s and 'text_acc' not in report.curve_series([[{'step': 0, 'text_acc': None}]])
    assert report.smooth([1.0, 2.0, 3.0, 4.0], window=2) == [1.0, 1.5, 2.5, 3.5]
    assert report.smooth([0.0] * 9 + [10.0] * 2) == [0.0] * 9 + [1.0, 2.0]
    steps, mean, half = report.band_series([_vcurve(0.3, 0.5), _vcurve(0.5, 0.5), _vcurve(0.4)], 'speech_acc')
    assert steps == [0, 10] and mean == pytest.approx([0.4, 0.5])
    assert half == pytest.approx([T_975_2 * 0.1 / math.sqrt(3), 0.0])


def test_wall_times_count_every_part_of_a_run_and_estimate_the_elapsed_time():
    # a run's seconds: training, test evaluation, validation curve and hearing probe (those it stored)
    row = {'train_wall_seconds': 373.0, 'eval_wall_seconds': 161.0, 'curve_wall_seconds': 69.0,
           'hearing_wall_seconds': 29.0}
    assert report.run_wall(row) == 632.0
    assert report.run_wall({'train_wall_seconds': 100.0, 'eval_wall_seconds': 20.0}) == 120.0
    assert report.run_wall({'speech_acc': 0.5}) is None
    assert report.per_seed_wall([row, dict(row, train_wall_seconds=273.0), {}]) == 582.0
    # the cost of more seeds counts the curve and the probe too: 43 seeds of two arms at 632 s each
    results = hand_results()
    for arm in ('tars', 'tars_global'):
        results['arms'][arm] = [dict(r, curve_wall_seconds=69.0, hearing_wall_seconds=29.0, train_wall_seconds=373.0,
                                     eval_wall_seconds=161.0) for r in results['arms'][arm]]
    assert report.paired(results)['tars - tars_global']['extra_hours'] == round(43 * 2 * 632 / 3600, 2)   # 15.1
    # two runs at once: the same seeds in half the elapsed time (each run's seconds were measured side by side)
    two = dict(results, parallel={'jobs': 2, 'threads_per_job': 1})
    assert report.paired(two)['tars - tars_global']['extra_hours'] == round(43 * 632 / 3600, 2)
    assert report.goal_plan(two)['arms']['tars_global']['hours'] == round(43 * 632 / 2 / 3600, 2)
    assert "about 7.5 h of both arms' runs at their measured per-seed wall time, 2 at once." in '\n'.join(
        report.goal_lines(two))
    # one job at a time: no estimate; two: the arm runs' seconds halved, the rest as they are
    results['wall_seconds'] = {'stage1': 700.0, 'stage2': 360.0, 'hearing probe (start)': None,
                               'arm grpo': 1000.0, 'arm tars': 600.0, 'layer similarity': 40.0, 'total': 2700.0,
                               'this invocation': 30.0}
    results['wall_cached'] = {'stage1': True, 'hearing probe (start)': True, 'layer similarity': True}
    assert report.elapsed_estimate(results) is None
    results['parallel'] = {'jobs': 2, 'threads_per_job': 1}
    assert report.elapsed_estimate(results) == 700 + 360 + 40 + (1000 + 600) / 2
    section = report.report_section(results, 'doc')
    assert 'One uninterrupted call takes about 0.5 h' in section   # 1900 s
    assert '| hearing probe (start) | - | cached: made by an earlier call that stored no time |' in section
    assert '| layer similarity | 40 s | cached: the time stored when it was made |' in section
    assert report.results_json(results)['elapsed_estimate_seconds'] == 1900.0
