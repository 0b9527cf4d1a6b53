"""Common random numbers across the miniature's arms (scripts.miniature.arms): every arm with seed s starts from the
same LoRA adapter, reads the same questions at each step and, where its rollouts are drawn the same way, samples
the same completions; the rival opsd runs end to end from the command line (QUICK, slow tier)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ZERO_RATE = {'learning_rate': 0.0}   # the saved adapter after one step is then the initial one


def _adapter(out: Path):
    from safetensors.torch import load_file
    return load_file(str(out / 'train' / 'checkpoint-1' / 'adapter_model.safetensors'))


def _dump(out: Path):
    return [json.loads(line) for line in (out / 'rollouts.jsonl').read_text().splitlines()]


@pytest.mark.slow  # the slow tier (tests/conftest.py): three QUICK arm runs, one as a process
def test_arms_share_the_initial_adapter_the_questions_and_the_samples(tmp_path):
    from scripts.miniature import arms, stages
    setting = stages.QUICK
    outs = {arm: arms.run_arm(arm, 0, setting, steps=1, cache_dir=tmp_path, overrides=ZERO_RATE)
            for arm in ('grpo', 'rlsd')}
    # the rival from its command line, as the pipeline's user would run it
    proc = subprocess.run([sys.executable, '-m', 'scripts.miniature.arms', 'opsd', '--quick', '--steps', '1',
                           '--set', 'learning_rate=0.0', '--cache_dir', str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs['opsd'] = arms.run_dir('opsd', 0, setting, 1, tmp_path, ZERO_RATE)
    printed = json.loads(proc.stdout[proc.stdout.index('{\n'):])
    assert printed == json.loads((outs['opsd'] / 'metrics.json').read_text())
    assert printed['arm'] == 'opsd' and [p['step'] for p in printed['val_curve']] == [0, 1]
    assert printed['curve'][0]['teacher_kl'] is not None and printed['curve'][0]['teacher_kl'] >= 0

    adapters = {arm: _adapter(out) for arm, out in outs.items()}
    keys = sorted(adapters['grpo'])
    assert any('lora_A' in k for k in keys)
    for arm in ('rlsd', 'opsd'):
        assert sorted(adapters[arm]) == keys
        for k in keys:   # lora_A drawn from the seed, lora_B zero: equal, bit for bit
            assert bool((adapters[arm][k] == adapters['grpo'][k]).all()), (arm, k)
    assert any(bool(t.abs().sum() > 0) for k, t in adapters['grpo'].items() if 'lora_A' in k)

    dumps = {arm: _dump(out) for arm, out in outs.items()}
    # the same two questions at step 1, 4 rollouts each (opsd: all from speech)
    for arm, dump in dumps.items():
        assert sorted({r['key'] for r in dump}) == sorted({r['key'] for r in dumps['grpo']}) and len(dump) == 8, arm
    assert {r['modality'] for r in dumps['opsd']} == {'speech'}
    # the text-reading teacher scored the teacher arms' rollouts (its gap dumped), not grpo's
    assert all(r['teacher_gap'] >= 0 for arm in ('opsd', 'rlsd') for r in dumps[arm])
    assert any(r['teacher_gap'] > 0 for r in dumps['opsd']) and all('teacher_gap' not in r for r in dumps['grpo'])
    # a text rollout's teacher reads its own prompt: the same forward, no gap
    assert all(r['teacher_gap'] < 1e-5 for r in dumps['rlsd'] if r['modality'] == 'text')
    assert all(r['advantage'] == 0 for r in dumps['opsd'])   # its rewards weigh 0: the teacher is its signal
    # grpo and rlsd draw their rollouts the same way: the same completions (the teacher forward comes after)
    assert [(r['key'], r['modality'], r['completion']) for r in dumps['rlsd']] == \
        [(r['key'], r['modality'], r['completion']) for r in dumps['grpo']]
