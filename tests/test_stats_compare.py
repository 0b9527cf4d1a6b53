"""trainer/stats.py on hand-computed values and against scipy; eval.compare on hand-built pairs of runs
(McNemar p-value and paired difference worked out by hand, the bootstrap interval against
scipy.stats.bootstrap); eval.metrics' intervals, failure rate, random-letter fallback and judges."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from eval import compare as C
from eval import metrics as M
from trainer import stats as S


# ---------------------------------------------------------------- trainer.stats
def test_wilson_interval_by_hand():
    # 85 % of 455 (OBQA): Wilson centre (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    n, k, z = 455, 387, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = S.binomial_interval(k, n)
    assert (lo, hi) == (pytest.approx(centre - half), pytest.approx(centre + half))
    assert (hi - lo) / 2 == pytest.approx(0.0328, abs=5e-4)   # the "about +-3.3 points"
    assert S.binomial_interval(0, 0) is None
    lo, hi = S.binomial_interval(0, 10, method='exact')   # Clopper-Pearson: 1 - 0.025^(1/10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** 0.1)
    with pytest.raises(ValueError, match='0 <= successes <= n, got 11 of 10'):
        S.binomial_interval(11, 10)


def test_mcnemar_exact_by_hand():
    assert S.mcnemar_exact(6, 0) == pytest.approx(2 / 64)          # 2 x 0.5^6
    assert S.mcnemar_exact(1, 5) == pytest.approx(2 * 7 / 64)      # 2 x (1 + 6) / 2^6
    assert S.mcnemar_exact(3, 2) == 1.0                            # 2 x 16/32, capped
    assert S.mcnemar_exact(0, 0) == 1.0


def test_paired_bootstrap_matches_scipy_bootstrap():
    rng = np.random.default_rng(1)
    a = (rng.random(400) < 0.7).astype(float)
    b = np.where(rng.random(400) < 0.8, a, 1 - a)
    ours = S.paired_bootstrap(lambda s: s[0][..., 0].mean(-1) - s[0][..., 1].mean(-1), [np.c_[a, b]],
                              n_resamples=20000, seed=3)
    ref = scipy_stats.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis), paired=True,
                                vectorized=True, n_resamples=20000, method='percentile', random_state=7,
                                confidence_level=0.95).confidence_interval
    assert ours[0] == pytest.approx(ref.low, abs=0.006) and ours[1] == pytest.approx(ref.high, abs=0.006)
    # seeded: the same data give the same interval
    assert ours == S.paired_bootstrap(lambda s: s[0][..., 0].mean(-1) - s[0][..., 1].mean(-1), [np.c_[a, b]],
                                      n_resamples=20000, seed=3)
    assert S.paired_bootstrap(lambda s: s[0][..., 0].mean(-1), [np.zeros((0, 1))]) is None


def test_t_interval_is_the_reports():
    from scripts.miniature import report
    assert report.t_interval is S.t_interval
    mean, half = S.t_interval([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and half == pytest.approx(4.302652729911275 * 0.1 / math.sqrt(3))


# ---------------------------------------------------------------- eval.metrics
def _row(key, extracted, gold='A', error=None, judges=None, options=4):
    return {'key': key, 'mode': 'audio', 'prompt_type': 'systhink', 'output': None if error else 'x',
            'extracted': extracted, 'gold': gold, 'correct': extracted == gold and error is None, 'error': error,
            'options': ['o'] * options, **({'judges': judges} if judges is not None else {})}


def test_run_metrics_failure_rate_fallback_and_judges():
    rows = [_row('1', 'A', judges={'rule': 'A', 'xfinder': 'A'}),
            _row('2', 'B', judges={'rule': None, 'xfinder': 'B'}),
            _row('3', None, judges={'rule': None, 'xfinder': None}),
            _row('4', 'A', judges={'rule': 'A', 'xfinder': None}, options=2),   # xFinder failed, rule filled in
            _row('5', None, error='unreadable audio')]
    m = M.run_metrics(rows)
    assert m['correct'] == 2 and m['accuracy'] == pytest.approx(2 / 5)
    assert m['accuracy_ci95'] == pytest.approx(list(S.binomial_interval(2, 5)))
    assert m['failure_rate'] == pytest.approx(2 / 5)                         # items 3 and 5
    assert m['fallback_accuracy'] == pytest.approx((2 + 1 / 4 + 1 / 4) / 5)  # + 1/4 for each unanswered
    lo, hi = m['fallback_accuracy_ci95']
    assert 0 <= lo <= m['fallback_accuracy'] <= hi <= 1
    assert m['judges']['rule'] == {'accuracy': pytest.approx(2 / 5), 'accuracy_ci95': pytest.approx(
        list(S.binomial_interval(2, 5))), 'failure_rate': pytest.approx(3 / 5),
        'fallback_accuracy': pytest.approx((2 + 1 / 4 + 1 / 4 + 1 / 4) / 5)}
    assert m['judges']['xfinder']['accuracy'] == pytest.approx(1 / 5)
    assert m['judges']['xfinder']['failure_rate'] == pytest.approx(3 / 5)
    assert m['judges']['xfinder']['fallback_accuracy'] == pytest.approx((1 + 1 / 4 + 1 / 2 + 1 / 4) / 5)


def test_benchmark_labels_name_the_benchmark_and_its_count():
    assert M.benchmark_label('MMSU', 3074) == 'VoiceBench-MMSU (3074)'
    assert M.benchmark_label('CUHK_MMSU', 5000) == 'CUHK-MMSU (5000)'
    assert M.benchmark_label('OBQA', 455) == 'OBQA (455)'
    assert M.benchmark_label('OBQA', 16) == 'OBQA (16 of 455)'
    assert M.benchmark_label('MMLU', 16) == 'MMLU (16)'


def test_paper_figures_file_cites_the_paper_and_holds_table_1():
    papers = M.paper_results()
    assert '2601.05543' in papers['source'] and papers['url'].endswith('2601.05543')
    tars = next(r for r in papers['table1'] if r['model'] == 'TARS (Qwen2.5-Omni)')
    assert (tars['MMSU(A)'], tars['OBQA(A)'], tars['Avg(A)'], tars['MRR']) == (67.96, 85.71, 76.84, 98.89)
    assert [r['arm'] for r in papers['ablation']] == ['sft', 'dpo', 'grpo', 'grpo_rep', 'grpo_beh', 'tars']
    for r in papers['table1'] + papers['ablation']:   # Avg(A) is the mean of the two speech columns
        assert r['Avg(A)'] == pytest.approx((r['MMSU(A)'] + r['OBQA(A)']) / 2, abs=0.011)
    rows = M.paper_rows('qwen2_5_omni', ['MMSU', 'OBQA'])
    assert [r['model'] for r in rows['table1']] == ['Qwen2.5-Omni', 'TARS (Qwen2.5-Omni)']
    assert M.paper_rows('qwen2_5_omni', ['MMLU']) == {'table1': [], 'ablation': []}
    assert M.paper_rows('qwen2_audio', ['MMSU'])['table1'] == []


def test_table_intervals_and_markdown():
    items = {'MMSU': {'audio': {'1': 1.0, '2': 0.0, '3': 1.0, '4': 1.0}, 'text': {'1': 1.0, '2': 1.0, '3': 1.0,
                                                                                 '4': 1.0}}}
    tab = M.table_intervals(items)
    assert tab['row']['MMSU(A)'] == 0.75 and tab['row']['MRR'] == pytest.approx(75.0)
    assert tab['ci95']['MMSU(A)'] == pytest.approx(list(S.binomial_interval(3, 4)))
    lo, hi = tab['ci95']['MRR']
    assert 0 <= lo <= 75 <= hi <= 100
    assert tab['benchmarks'] == {'MMSU': 'VoiceBench-MMSU (4 of 3074)'}
    md = M.markdown('m', tab)
    assert md.startswith('| model | VoiceBench-MMSU (4 of 3074) (A) | VoiceBench-MMSU (4 of 3074) (T) | Avg(A) | MRR |')
    w = S.binomial_interval(3, 4)
    assert f'| m | 75.00 [{100 * w[0]:.2f}, {100 * w[1]:.2f}] |' in md
    given = M.table_intervals(items, mrr_reference=0.5)   # a fixed reference scales the Avg(A) interval
    assert given['ci95']['MRR'] == pytest.approx([200 * x for x in given['ci95']['Avg(A)']])


# ---------------------------------------------------------------- eval.compare
def _write_run(folder: Path, correct, mode='audio', prompt_type='systhink', extractor='rule', keys=None):
    run = folder / f'{mode}_{prompt_type}'
    run.mkdir(parents=True)
    keys = keys or [f'k{i}' for i in range(len(correct))]
    run.joinpath('results.jsonl').write_text(''.join(
        json.dumps({'key': k, 'mode': mode, 'correct': bool(c), 'extracted': 'A', 'gold': 'A'}) + '\n'
        for k, c in zip(keys, correct, strict=True)))
    run.joinpath('config.json').write_text(json.dumps({'mode': mode, 'prompt_type': prompt_type,
                                                       'extractor': extractor}))
    return run


def test_compare_single_runs_by_hand(tmp_path, capsys):
    # A right on k0..k7, B on k0, k1: 6 items right in A only, none in B only
    a = _write_run(tmp_path / 'A' / 'MMSU', [1] * 8 + [0] * 2)
    b = _write_run(tmp_path / 'B' / 'MMSU', [1] * 2 + [0] * 8)
    r = C.compare(a, b, n_resamples=5000)
    run = r['runs'][0]
    assert (run['dataset'], run['mode'], run['items']) == ('MMSU', 'audio', 10)
    assert run['difference'] == pytest.approx(0.6)                 # 0.8 - 0.2
    assert (run['only_a'], run['only_b']) == (6, 0)
    assert run['mcnemar_p'] == pytest.approx(0.03125)              # 2 x 0.5^6
    lo, hi = run['difference_ci95']
    assert 0.2 <= lo < 0.6 < hi <= 0.9
    C.main([str(a), str(b), '--resamples', '500'])
    out = capsys.readouterr().out
    assert '| VoiceBench-MMSU (10 of 3074) | audio | 10 | 80.00 | 20.00 | +60.00 |' in out and '| 0.03125 |' in out


def test_compare_model_folders_with_mrr(tmp_path):
    rng = np.random.default_rng(0)
    for model, p in (('A', 0.7), ('B', 0.6)):
        for d in ('MMSU', 'OBQA'):
            _write_run(tmp_path / model / d, rng.random(60) < p, mode='audio')
            _write_run(tmp_path / model / d, rng.random(60) < 0.9, mode='text')
    _write_run(tmp_path / 'A' / 'CUHK_MMSU', [1, 0], mode='audio')
    r = C.compare(tmp_path / 'A', tmp_path / 'B', n_resamples=500)
    assert [(x['dataset'], x['mode']) for x in r['runs']] == [('MMSU', 'audio'), ('MMSU', 'text'), ('OBQA', 'audio'),
                                                               ('OBQA', 'text')]
    assert r['unpaired'] == [('CUHK_MMSU', 'audio')]
    mmsu = r['mrr'][0]
    assert mmsu['difference'] == pytest.approx(mmsu['mrr_a'] - mmsu['mrr_b'])
    lo, hi = mmsu['difference_ci95']
    assert lo <= mmsu['difference'] <= hi
    assert r['overall']['datasets'] == ['MMSU', 'OBQA']
    assert r['overall']['avg_a_difference'] == pytest.approx(np.mean([x['difference'] for x in r['runs']
                                                                      if x['mode'] == 'audio']))


@pytest.mark.parametrize('change, message', [
    (dict(prompt_type='boxed'), 'MMSU/audio: prompt types differ: A systhink, B boxed'),
    (dict(extractor='xfinder'), 'MMSU/audio: judges differ: A rule, B xfinder'),
    (dict(keys=['k0', 'k1', 'k9']), "MMSU/audio: not the same items: A has 3, B has 3, 1 only in A, 1 only in B "
                                    "(e.g. 'k2' only in A)"),
])
def test_compare_refuses_runs_that_cannot_be_paired(tmp_path, capsys, change, message):
    a = _write_run(tmp_path / 'A' / 'MMSU', [1, 0, 1])
    b = _write_run(tmp_path / 'B' / 'MMSU', [1, 1, 0], **change)
    with pytest.raises(SystemExit) as err:
        C.main([str(tmp_path / 'A'), str(tmp_path / 'B')])
    assert str(err.value) == f'eval.compare: {message}'
    del a, b
