"""The miniature's pipeline (scripts/miniature/pipeline.py): its pure helpers, a fake run's metrics.json files turned
into the report's rows with paths relative to the cache (and a report that names no folder of the machine), and the
`--quick` end-to-end run of scripts/miniature/run.sh (slow tier)."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from scripts.miniature import pipeline, report
from scripts.miniature.stages import FULL, QUICK

REPO = Path(__file__).resolve().parent.parent


def _absolute_paths(text: str):
    return re.findall(r'(?<![\w.$:/~])/[\w.-]+/[\w./-]*', text)


def test_helpers(tmp_path):
    assert pipeline.parse_list('0, 1,2', int) == [0, 1, 2]
    assert pipeline.default_report_paths(FULL, None) == (REPO / 'docs' / 'miniature', REPO / 'docs' / 'miniature.md')
    quick_dir, quick_md = pipeline.default_report_paths(QUICK, tmp_path)
    assert quick_dir == tmp_path / 'miniature' / 'report-quick' and quick_md == quick_dir / 'report.md'
    assert (pipeline.FULL_SEEDS, pipeline.QUICK_SEEDS) == ((0, 1, 2, 3, 4, 5), (0,))
    with pytest.raises(SystemExit):
        pipeline.main(['--arms', 'grpo,nonsense', '--quick', '--cache_dir', str(tmp_path)])


def test_command_names_the_launcher_and_no_folder(tmp_path):
    argv = ['--launcher', 'bash scripts/miniature/run.sh', '--quick', '--seeds', '0,1', '--arms', 'grpo']
    assert pipeline.command_line('bash scripts/miniature/run.sh', argv) == (
        'bash scripts/miniature/run.sh --quick --seeds 0,1 --arms grpo')
    assert pipeline.command_line('python -m scripts.miniature.pipeline', ['--report_dir', 'a b']) == (
        "python -m scripts.miniature.pipeline --report_dir 'a b'")
    cache = tmp_path / 'cache'
    command = pipeline.command_line('bash scripts/miniature/run.sh', [
        '--quick', '--cache_dir', str(cache), '--report_dir', str(REPO / 'docs' / 'x'), '--report_md=' + str(REPO)])
    assert pipeline.portable_command(command, cache) == (
        'bash scripts/miniature/run.sh --quick --cache_dir $TARS_CACHE --report_dir docs/x --report_md=.')
    # a relative cache folder is portable already (and '--cache_dir' itself is not touched)
    assert pipeline.portable_command('run --cache_dir cache', Path('cache')) == 'run --cache_dir cache'


def test_relative_path(tmp_path):
    root = tmp_path / 'cache' / 'miniature'
    assert pipeline.relative_path(str(root / 'arms' / 'grpo-s0-abc' / 'train' / 'checkpoint-10'), root) == (
        'arms/grpo-s0-abc/train/checkpoint-10')
    assert pipeline.relative_path('stage2-abc', root) == 'stage2-abc'          # already relative (contract B)
    assert pipeline.relative_path('/elsewhere/stage2-abc', root) == 'stage2-abc'   # outside the root: its name


def _fake_arm(root: Path, arm: str, seed: int, speech: float, absolute: bool) -> Path:
    """A finished arm run as scripts.miniature.arms.run_arm leaves it (metrics.json only)."""
    run = root / 'arms' / f'{arm}-s{seed}-abc'
    run.mkdir(parents=True)
    checkpoint = run / 'train' / 'checkpoint-10'
    metrics = {'arm': arm, 'seed': seed, 'steps': 20, 'speech_acc': speech, 'text_acc': 0.9, 'hearing_acc': 0.93,
               'train_wall_seconds': 100.0, 'eval_wall_seconds': 20.0, 'curve_wall_seconds': 15.0,
               'hearing_wall_seconds': 5.0,
               'checkpoint': str(checkpoint) if absolute else checkpoint.relative_to(root).as_posix(),
               'start_checkpoint': str(root / 'stage2-bbb') if absolute else 'stage2-bbb',
               'val_curve': [{'step': 0, 'speech_acc': 0.4, 'text_acc': 0.9},
                             {'step': 10, 'speech_acc': speech, 'text_acc': 0.9}],
               'allwrong': {'groups': 2, 'speech_rollouts': 8, 'nonzero_adv_share': 0.25},
               'curve': [{'step': 1, 'speech_acc': 0.5, 'text_acc': 0.9, 'loss': 0.1, 'rewards': {'acc': 0.5}}]}
    (run / 'metrics.json').write_text(json.dumps(metrics))
    return run


def test_a_fake_run_becomes_a_report_without_absolute_paths(tmp_path):
    """metrics.json files of a fake run (one with absolute paths, as written before contract B) -> the rows, the
    paired difference worked out by hand, and results.json / the markdown naming no folder of this machine."""
    root = tmp_path / 'cache' / 'miniature'
    speech = {'grpo': (0.50, 0.52), 'tars': (0.53, 0.56)}     # tars - grpo: +3, +4 points
    results = {'command': pipeline.portable_command(
                   f"bash scripts/miniature/run.sh --cache_dir {tmp_path / 'cache'}", tmp_path / 'cache'),
               'setting': 'quick', 'seeds': [0, 1], 'arms': {}, 'training_curves': {},
               'stage1': pipeline.stage_entry('stage1', {'checkpoint': str(root / 'stage1-aaa'),
                                                          'accuracy': {'text': 0.95}}, root, True),
               'stage2': pipeline.stage_entry('stage2', {'checkpoint': str(root / 'stage2-bbb'),
                                                          'accuracy': {'text': 0.9, 'audio': 0.4}}, root, False)}
    results['stage2'].update(hearing_acc=0.92, hearing_n=6)
    for arm, values in speech.items():
        for seed, value in enumerate(values):
            run = _fake_arm(root, arm, seed, value, absolute=(seed == 0))
            metrics = pipeline.read_metrics(run, arm, seed)
            results['arms'].setdefault(arm, []).append(pipeline.arm_entry(metrics, seed, root, cached=True))
            results['training_curves'].setdefault(arm, []).append(metrics['curve'])
    row = results['arms']['grpo'][0]
    assert row['checkpoint'] == 'arms/grpo-s0-abc/train/checkpoint-10'
    assert results['arms']['grpo'][1]['checkpoint'] == 'arms/grpo-s1-abc/train/checkpoint-10'
    assert (row['hearing_acc'], row['curve'][1]['speech_acc'], row['allwrong']['nonzero_adv_share']) == (
        0.93, 0.50, 0.25)
    assert report.run_wall(row) == 140.0   # training, test evaluation, curve and hearing probe
    assert results['stage2']['checkpoint'] == 'stage2-bbb' and results['stage2']['speech_acc'] == 0.4
    pair = report.paired(results)['tars - grpo']
    # differences 0.03 and 0.04: mean 0.035, SD 0.00707, t(1) = 12.706: half-width 12.706 * 0.005 = 0.0635
    assert pair['diff'] == pytest.approx(0.035) and pair['half_width'] == pytest.approx(12.706205 * 0.005)
    assert pair['n_seeds'] == 2
    out = tmp_path / 'out'
    report.write_report(results, out, out / 'report.md')
    for path in (out / 'results.json', out / 'report.md'):
        text = path.read_text()
        assert str(tmp_path) not in text and _absolute_paths(text) == [], path
    data = json.loads((out / 'results.json').read_text())
    assert data['command'] == 'bash scripts/miniature/run.sh --cache_dir $TARS_CACHE'
    assert data['start']['hearing_acc'] == 0.92
    assert data['arms']['tars'][1]['curve'][1] == {'step': 10, 'speech_acc': 0.56, 'text_acc': 0.9}
    assert (data['arms']['tars'][1]['curve_wall_seconds'], data['arms']['tars'][1]['hearing_wall_seconds']) == (15, 5)


def test_bad_metrics_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'metrics.json: arm grpo seed 3 wrote no metrics.json'):
        pipeline.read_metrics(tmp_path, 'grpo', 3)
    (tmp_path / 'metrics.json').write_text('{"speech_acc": 0.5, "text_acc": 0.9}')
    with pytest.raises(ValueError, match=r"metrics.json: arm grpo seed 3: field 'checkpoint' missing"):
        pipeline.read_metrics(tmp_path, 'grpo', 3)
    (tmp_path / 'metrics.json').write_text('{"speech_acc": 0.5, ')
    with pytest.raises(ValueError, match=r'metrics.json: arm grpo seed 3: not JSON'):
        pipeline.read_metrics(tmp_path, 'grpo', 3)


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_quick_end_to_end(tmp_path):
    """`bash scripts/miniature/run.sh --quick` (seed 0) in a fresh cache: every stage, the hearing probe and
    every arm run, results.json has contract C's keys and no absolute path, the figures are written (values not
    asserted at toy size). Its wall time (the issue's 5 minutes) is measured by `python -m scripts.bench
    miniature_quick`, not asserted here: it depends on load."""
    from scripts.miniature.arms import ARMS
    cache = tmp_path / 'cache'
    env = dict(os.environ, TARS_CACHE=str(cache))
    proc = subprocess.run(['bash', 'scripts/miniature/run.sh', '--quick', '--cache_dir', str(cache)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    out = cache / 'miniature' / 'report-quick'
    raw = (out / 'results.json').read_text()
    assert str(tmp_path) not in raw and _absolute_paths(raw) == []
    data = json.loads(raw)
    assert set(data['arms']) == set(ARMS) and 'opsd' in ARMS
    assert data['stage1']['text_acc'] is not None and data['start']['speech_acc'] is not None
    assert isinstance(data['start']['hearing_acc'], float) and not data['start']['checkpoint'].startswith('/')
    for arm, rows in data['arms'].items():
        assert [r['seed'] for r in rows] == [0], arm
        for r in rows:
            assert {'speech_acc', 'text_acc', 'hearing_acc', 'curve', 'allwrong', 'checkpoint'} <= set(r), arm
            assert r['curve'] and {'step', 'speech_acc', 'text_acc'} <= set(r['curve'][0]), arm
            assert r['curve'][0]['step'] == 0
    assert set(data['training_curves']) == set(ARMS)
    # two arm runs at once in worker processes, one torch thread each (this machine: two cores, no GPU)
    jobs = pipeline.default_jobs()
    assert data['parallel'] == {'jobs': jobs, 'threads_per_job': (os.cpu_count() // jobs) if jobs > 1 else None}
    for arm in ARMS:
        metrics = json.loads(next((cache / 'miniature' / 'arms').glob(f'{arm}-s0-*/metrics.json')).read_text())
        assert metrics['torch_threads'] == (os.cpu_count() // jobs if jobs > 1 else metrics['torch_threads']), arm
    assert 'tars - grpo' in data['paired'] and 'tars - opsd' in data['paired']
    for key in ('paired', 'paired_auc'):
        assert {'diff', 'lo', 'hi', 'n_seeds'} <= set(data[key]['tars - grpo'])
        assert data[key]['tars - grpo']['n_seeds'] == 1
    assert set(data['layer_similarity']) == {'stage 2', 'GRPO', 'TARS'}
    # every job's seconds, measured in this call (a fresh cache: nothing cached)
    walls = data['wall_seconds']
    assert walls['hearing probe (start)'] > 0 and not data['wall_cached']['hearing probe (start)']
    assert all(walls[f'arm {arm}'] > 0 for arm in ARMS)
    if jobs > 1:
        assert data['elapsed_estimate_seconds'] < walls['total']
    md = (out / 'report.md').read_text()
    assert '| GRPO (R_base: format + accuracy) | 1 |' in md
    assert 'bash scripts/miniature/run.sh --quick --cache_dir $TARS_CACHE' in md and str(tmp_path) not in md
    for name in report.FIGURE_FILES:
        assert (out / f'{name}.png').is_file() and (out / f'{name}.pdf').is_file()
