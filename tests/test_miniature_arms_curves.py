"""The miniature's stage 3 (scripts.miniature.arms): the validation-curve flags, the all-wrong statistic of a rollout
dump, paths relative to the cache (fast: no model)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest


def _line(step, key, modality, accuracy, advantage):
    return {'step': step, 'key': key, 'modality': modality, 'completion': 'x', 'tars_format': 1.0,
            'tars_accuracy': accuracy, 'reward': accuracy + 1.0, 'advantage': advantage}


def test_allwrong_counts_speech_rollouts_of_groups_whose_speech_rollouts_all_failed(tmp_path):
    from scripts.miniature import arms
    lines = [
        # step 1, q1: both speech wrong (one with a non-zero advantage), text right: counted (2 rollouts, 1 non-zero)
        _line(1, 'q1', 'speech', 0.0, 0.25), _line(1, 'q1', 'speech', 0.0, 0.0),
        _line(1, 'q1', 'text', 1.0, 0.5), _line(1, 'q1', 'text', 0.0, -0.5),
        # step 1, q2: one speech right: not counted
        _line(1, 'q2', 'speech', 1.0, 0.5), _line(1, 'q2', 'speech', 0.0, -0.5),
        # step 2, q1: both speech wrong, advantages 0 up to float noise: counted (2 rollouts, 0 non-zero)
        _line(2, 'q1', 'speech', 0.0, 1e-9), _line(2, 'q1', 'speech', 0.0, -1e-9),
    ]
    dump = tmp_path / 'rollouts.jsonl'
    dump.write_text(''.join(json.dumps(x) + '\n' for x in lines))
    assert arms.allwrong(dump) == {'groups': 2, 'speech_rollouts': 4, 'nonzero_adv_share': 0.25}
    # opsd: the dumped advantages are 0, the teacher's per-token term is not (teacher_gap); rlsd's only reweights
    gapped = [dict(x, advantage=0.0, teacher_gap=g) for x, g in zip(lines, (0.1, 0.0, 0.2, 0.2, 0.1, 0.1, 0.3, 1e-9),
                                                                   strict=True)]
    dump.write_text(''.join(json.dumps(x) + '\n' for x in gapped))
    assert arms.allwrong(dump, additive_teacher=True) == {'groups': 2, 'speech_rollouts': 4, 'nonzero_adv_share': 0.5}
    assert arms.allwrong(dump) == {'groups': 2, 'speech_rollouts': 4, 'nonzero_adv_share': 0.0}
    dump.write_text(''.join(json.dumps(x) + '\n' for x in lines[4:6]))
    assert arms.allwrong(dump) == {'groups': 0, 'speech_rollouts': 0, 'nonzero_adv_share': None}


def test_curve_settings_and_save_flags():
    from scripts.miniature import arms, stages
    assert (stages.FULL.curve_every, stages.FULL.curve_items, stages.FULL.eval_items) == (10, 50, 1200)
    assert (stages.QUICK.curve_every, stages.QUICK.curve_items) == (1, 6)
    recipe = arms.recipe_for(stages.FULL)
    flags = arms.common_flags(Path('start'), recipe, 3, Path('out'), stages.FULL.curve_every)
    # a checkpoint every 10 steps, all 10 kept; the seeds and the one data order
    assert flags[flags.index('--save_steps') + 1] == '10' and flags[flags.index('--save_total_limit') + 1] == '11'
    assert flags[flags.index('--seed') + 1] == '3' and flags[flags.index('--data_seed') + 1] == str(arms.DATA_SEED)
    argv = arms.arm_argv('grpo', Path('start'), Path('d.jsonl'), recipe, 0, Path('out'), 10, Path('r.jsonl'))
    assert argv[argv.index('--dump_rollouts') + 1] == 'r.jsonl'
    assert '--dump_rollouts' not in arms.arm_argv('dpo', Path('start'), Path('d.jsonl'), recipe, 0, Path('out'), 10,
                                                  None)
    arms.check_curve_steps(stages.FULL, 100)
    with pytest.raises(ValueError, match=r'steps=45: must be a multiple of curve_every=10'):
        arms.check_curve_steps(stages.FULL, 45)
    with pytest.raises(SystemExit):   # refused by the command line before any stage runs
        arms.main(['grpo', '--steps', '45', '--cache_dir', '/nonexistent'])
    assert arms.check_curve_steps(dataclasses.replace(stages.FULL, curve_every=5), 45) is None


def test_paths_are_relative_to_the_miniature_cache(tmp_path):
    from scripts.miniature import arms
    run = tmp_path / 'miniature' / 'arms' / 'grpo-s0-abc' / 'train' / 'checkpoint-100'
    assert arms.relative(run, tmp_path) == 'arms/grpo-s0-abc/train/checkpoint-100'
    assert arms.relative(tmp_path / 'miniature' / 'stage2-123', tmp_path) == 'stage2-123'
    assert arms.cache_path('arms/grpo-s0-abc/train/checkpoint-100', tmp_path) == run
    with pytest.raises(ValueError):
        arms.relative(tmp_path / 'elsewhere', tmp_path)


def test_an_arms_hearing_probe_asks_arm_hearing_items(monkeypatch):
    """FULL probes an arm's adapter on its first 300 test items (the start on all 1200); a setting without
    arm_hearing_items probes eval_items."""
    import dataclasses

    from scripts.miniature import arms, hearing, stages
    asked = []
    monkeypatch.setattr(hearing, 'probe', lambda checkpoint, setting, cache_dir=None, split='test', max_items=None:
                        asked.append((split, max_items)) or {'hearing_acc': 0.5})
    assert arms.hearing_accuracy(Path('ck'), stages.FULL) == 0.5
    assert arms.hearing_accuracy(Path('ck'), dataclasses.replace(stages.FULL, arm_hearing_items=None)) == 0.5
    assert asked == [('test', 300), ('test', 1200)]
