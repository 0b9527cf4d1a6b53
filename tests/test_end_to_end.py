"""The README's main command, `bash train_grpo.sh`, on the embedded default (shortened to 3 steps)."""
import json
import os
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # every test here runs the launchers (tests/conftest.py: tiers)


def test_train_grpo_embedded_default(tmp_path):
    out = tmp_path / 'run'
    env = dict(os.environ, MAX_STEPS='3', OUTPUT_DIR=str(out))
    env.pop('CUDA_VISIBLE_DEVICES', None)
    proc = subprocess.run(['bash', 'train_grpo.sh'], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert f'rollout dump: {out}/rollouts.jsonl' in proc.stdout
    assert (out / 'checkpoint-3' / 'adapter_model.safetensors').exists()
    rows = [json.loads(l) for l in (out / 'rollouts.jsonl').read_text().splitlines()]
    assert sorted({r['step'] for r in rows}) == [1, 2, 3] and len(rows) == 3 * 8
    names = ['tars_format', 'tars_accuracy', 'tars_representation', 'tars_behaviour']
    assert all(set(names) <= set(r) for r in rows)
    # the warm start makes the tiny model write the answer format at least sometimes
    assert any(r['tars_format'] > 0 for r in rows)
    logs = [json.loads(l) for l in (out / 'logging.jsonl').read_text().splitlines()]
    assert any('eval_speech/accuracy' in l or 'eval_reward' in l for l in logs), logs[-1]
    assert any('tars/groups_with_correct_text' in l for l in logs)
