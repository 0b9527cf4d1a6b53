"""The miniature's stage 3 at toy size (scripts.miniature.arms): the grpo, tars_global and dpo arms end to end."""
from __future__ import annotations

import dataclasses
import json

import pytest

METRIC_FIELDS = {'arm', 'seed', 'steps', 'train_wall_seconds', 'eval_wall_seconds', 'curve_wall_seconds',
                 'hearing_wall_seconds', 'speech_acc', 'text_acc', 'hearing_acc', 'checkpoint', 'start_checkpoint',
                 'curve', 'val_curve', 'allwrong', 'curve_every', 'curve_items'}


def test_arm_names_rewards_and_wrong_letters():
    from scripts.miniature import arms
    assert arms.ARMS == ('sft', 'dpo', 'grpo', 'grpo_rep', 'grpo_beh', 'tars', 'tars_global', 'opsd', 'rlsd')
    assert arms.ARM_REWARDS['grpo'] == ('tars_format', 'tars_accuracy')
    assert arms.ARM_REWARDS['tars'] == arms.ARM_REWARDS['tars_global'] == (
        'tars_format', 'tars_accuracy', 'tars_representation', 'tars_behaviour')
    for key in ('mini-train-00000', 'mini-train-00001', 'x'):
        for gold in range(4):
            assert arms.wrong_letter(key, gold) in 'ABCD' and arms.wrong_letter(key, gold) != 'ABCD'[gold]
    assert sorted(arms.data_order(10)) == list(range(10)) and arms.data_order(10) != list(range(10))
    assert set(arms.STAGE3) == {'full', 'quick'} and arms.STAGE3['quick']['steps'] == 2


def test_recipe_overrides_of_a_pilot_change_the_recipe_and_refuse_unknown_keys():
    from scripts.miniature import arms, stages
    assert arms.parse_override('grpo_questions=4') == ('grpo_questions', 4)
    assert arms.parse_override('learning_rate=3e-4') == ('learning_rate', 3e-4)
    assert arms.parse_override('overlong_filter=false') == ('overlong_filter', False)
    recipe = arms.recipe_for(stages.FULL, 120, {'grpo_questions': 4, 'learning_rate': 1})
    assert recipe == dict(arms.STAGE3['full'], steps=120, grpo_questions=4, learning_rate=1)
    assert arms.recipe_for(stages.FULL, None, {}) == arms.recipe_for(stages.FULL) == arms.STAGE3['full']
    with pytest.raises(ValueError, match='--set grpo_question: not a stage-3 recipe entry'):
        arms.recipe_for(stages.FULL, None, {'grpo_question': 4})
    with pytest.raises(ValueError, match="--set temperature='hot': expected a float"):
        arms.recipe_for(stages.FULL, None, {'temperature': 'hot'})
    with pytest.raises(ValueError, match='expected key=value'):
        arms.parse_override('grpo_questions')
    # a pilot-only entry is in the recipe only when given, so the arms' run names do not change
    assert 'train_questions' not in arms.recipe_for(stages.FULL)
    assert arms.recipe_for(stages.FULL, None, {'train_questions': 8})['train_questions'] == 8
    assert arms.cycled(['a', 'b', 'c', 'd'], 2, 5) == ['a', 'b', 'a', 'b', 'a']
    with pytest.raises(ValueError, match='train_questions must be in 1..4, got 5'):
        arms.cycled(['a', 'b', 'c', 'd'], 5, 8)
    with pytest.raises(SystemExit):   # refused by the command line before any stage runs
        arms.main(['grpo', '--set', 'nope=1', '--cache_dir', '/nonexistent'])
    # the arms train on the spoken train items stage 2 did not see: 3000..4499 of 6000 (4500 spoken)
    assert arms.train_range(stages.FULL) == (3000, 4500) and arms.train_rows(stages.FULL) == 1500
    assert arms.train_range(stages.QUICK) == (16, 24)
    assert arms.train_range(dataclasses.replace(stages.FULL, stage2_items=None)) == (0, 4500)
    with pytest.raises(ValueError, match='stage2_items=4500 leaves none of the 4500 spoken train items'):
        arms.train_range(dataclasses.replace(stages.FULL, stage2_items=4500))
    # more questions than that, or none: refused before any stage runs
    assert arms.recipe_for(stages.FULL, None, {'train_questions': 1500})['train_questions'] == 1500
    for n in (1501, 0):
        with pytest.raises(ValueError, match=rf'--set train_questions={n}: must be in 1..1500'):
            arms.recipe_for(stages.FULL, None, {'train_questions': n})


def test_a_finished_training_is_kept_only_when_whole(tmp_path):
    from scripts.miniature import arms
    argv = ['grpo', '--seed', '0']
    assert arms.finished_training(tmp_path / 'none', argv) is None
    (tmp_path / 'train' / 'checkpoint-10').mkdir(parents=True)
    (tmp_path / arms.TRAINED).write_text('{"train_wall_seconds": 12.5, "argv": ["grpo", "--se')   # torn
    assert arms.finished_training(tmp_path, argv) is None
    (tmp_path / arms.TRAINED).write_text(json.dumps({'train_wall_seconds': 12.5, 'argv': argv}))
    assert arms.finished_training(tmp_path, argv) == {'train_wall_seconds': 12.5, 'argv': argv}
    assert arms.finished_training(tmp_path, argv + ['--more']) is None   # another training
    (tmp_path / 'train' / 'checkpoint-10').rmdir()
    assert arms.finished_training(tmp_path, argv) is None                 # no checkpoint left


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp('arms')


def warm_quick():
    """QUICK with a longer stage 1 (40 steps at 5e-3, a few seconds): the model then writes the systhink format
    on its training questions, so the GRPO rewards vary within a (question, modality) cell and the advantages,
    hence the LoRA update, are not all zero (after QUICK's two stage-1 steps every reward is 0). Stage 2 trains
    the LLM too, at 1e-4 here so that its two steps keep that format."""
    from scripts.miniature import stages
    return dataclasses.replace(stages.QUICK, stage1=dict(stages.QUICK.stage1, steps=40, learning_rate=5e-3,
                                                         batch_size=8),
                               stage2=dict(stages.QUICK.stage2, learning_rate=1e-4))


def _lora_b_nonzero(checkpoint) -> bool:
    from safetensors.torch import load_file
    weights = load_file(str(checkpoint / 'adapter_model.safetensors'))
    b = [t for k, t in weights.items() if 'lora_B' in k]
    assert b, 'no LoRA B matrices in the adapter'
    return any(bool(t.abs().sum() > 0) for t in b)   # B starts at zero: non-zero means trained


def _check_run(out, arm, cache, setting):
    from scripts.miniature import arms
    metrics = json.loads((out / 'metrics.json').read_text())
    assert METRIC_FIELDS <= set(metrics)
    assert metrics['arm'] == arm and metrics['seed'] == 0 and metrics['steps'] == 2
    assert 0.0 <= metrics['speech_acc'] <= 1.0 and 0.0 <= metrics['text_acc'] <= 1.0
    # the hearing probe of the evaluated adapter, on the eval_items test items
    from scripts.miniature import hearing
    probed = hearing.probe(out / 'train' / 'checkpoint-2', setting, cache, split='test', max_items=setting.eval_items)
    assert probed['n'] == setting.eval_items and metrics['hearing_acc'] == probed['hearing_acc']
    assert 0.0 <= metrics['hearing_acc'] <= 1.0
    assert [p['step'] for p in metrics['curve']] == [1, 2]
    assert all(p['loss'] is not None for p in metrics['curve'])
    checkpoint = out / 'train' / 'checkpoint-2'
    # paths relative to the miniature cache root, none absolute (the report carries them)
    assert metrics['checkpoint'] == f'arms/{out.name}/train/checkpoint-2'
    assert metrics['start_checkpoint'].startswith('stage2-') and '/' not in metrics['start_checkpoint']
    assert (cache / 'miniature' / metrics['checkpoint'] / 'adapter_config.json').exists()
    assert str(cache) not in json.dumps(metrics)
    assert _lora_b_nonzero(checkpoint)
    # the validation curve: the stage-2 start, then every step (QUICK curve_every 1), each on curve_items items
    assert [p['step'] for p in metrics['val_curve']] == [0, 1, 2]
    assert all(0.0 <= p['speech_acc'] <= 1.0 and 0.0 <= p['text_acc'] <= 1.0 for p in metrics['val_curve'])
    assert sorted(p.name for p in (out / 'train').glob('checkpoint-*')) == ['checkpoint-1', 'checkpoint-2']
    for step in (1, 2):
        for mode in ('audio', 'text'):
            results = list((out / 'curve' / f'checkpoint-{step}').glob(f'*/miniature/{mode}_systhink/results.jsonl'))
            assert len(results) == 1 and len(results[0].read_text().splitlines()) == setting.curve_items
            assert all(json.loads(line)['key'].startswith('mini-validation-')
                       for line in results[0].read_text().splitlines())
    # step 0 is evaluated once, in the cache, for every arm and seed
    assert list((cache / 'miniature').glob(f'eval-curve{setting.curve_items}/*/miniature/audio_systhink'))
    for mode in ('audio', 'text'):
        results = list((out / 'eval').glob(f'*/miniature/{mode}_systhink/results.jsonl'))
        assert len(results) == 1 and len(results[0].read_text().splitlines()) == setting.eval_items
    assert out.name.startswith(f'{arm}-s0-') and not out.with_name(out.name + '.tmp').exists()
    # a rerun finds the finished run and does no work
    mtime = (out / 'metrics.json').stat().st_mtime
    assert arms.run_arm(arm, 0, setting, cache_dir=cache) == out
    assert (out / 'metrics.json').stat().st_mtime == mtime
    return metrics, json.loads((out / 'argv.json').read_text())


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_quick_grpo_arm(cache):
    from scripts.miniature import arms
    out = arms.run_arm('grpo', 0, warm_quick(), cache_dir=cache)
    metrics, argv = _check_run(out, 'grpo', cache, warm_quick())
    for point in metrics['curve']:
        assert set(point['rewards']) == {'tars_format', 'tars_accuracy'}
        assert point['speech_acc'] is not None and point['text_acc'] is not None
        assert set(point['rewards_by_modality']) == {'speech', 'text'}
    assert argv[argv.index('--advantage_norm') + 1] == 'modality'
    assert argv[argv.index('--prompt_modality') + 1] == 'mixed'
    assert argv[argv.index('--dataset_shuffle') + 1] == 'false'
    # the rollout dump the all-wrong statistic reads: 2 steps x 2 questions x 4 rollouts, half speech
    dump = [json.loads(line) for line in (out / 'rollouts.jsonl').read_text().splitlines()]
    assert len(dump) == 16 and sum(r['modality'] == 'speech' for r in dump) == 8
    assert metrics['allwrong'] == arms.allwrong(out / 'rollouts.jsonl')
    assert set(metrics['allwrong']) == {'groups', 'speech_rollouts', 'nonzero_adv_share'}
    assert metrics['allwrong']['speech_rollouts'] == 2 * metrics['allwrong']['groups']


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_quick_tars_global_arm(cache):
    from scripts.miniature import arms
    out = arms.run_arm('tars_global', 0, warm_quick(), cache_dir=cache)
    metrics, argv = _check_run(out, 'tars_global', cache, warm_quick())
    assert argv[argv.index('--advantage_norm') + 1] == 'group'
    assert set(metrics['curve'][0]['rewards']) == set(arms.ARM_REWARDS['tars'])


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_quick_dpo_arm_restarts_a_killed_run_and_shares_the_data_order(cache, monkeypatch):
    from trainer import jsonl
    from scripts.miniature import arms, stages
    # a killed attempt: a temporary folder with a half-written file; the next call removes it and starts over
    out = arms.run_dir('dpo', 0, stages.QUICK, cache_dir=cache)
    tmp = out.with_name(out.name + '.tmp')
    (tmp / 'train').mkdir(parents=True)
    (tmp / 'train' / 'logging.jsonl').write_text('{"loss": 1.0, "global_st')
    assert arms.run_arm('dpo', 0, stages.QUICK, cache_dir=cache) == out
    metrics, argv = _check_run(out, 'dpo', cache, stages.QUICK)
    assert argv[0] == 'dpo' and argv[argv.index('--data_seed') + 1] == str(arms.DATA_SEED)
    # killed after its training finished, during the test evaluation: the rerun keeps the training
    metrics_before = json.loads((out / 'metrics.json').read_text())
    out.rename(tmp)
    (tmp / 'metrics.json').unlink()
    results = next((tmp / 'eval').glob('*/miniature/audio_systhink/results.jsonl'))
    results.write_text(results.read_text().splitlines()[0] + '\n{"key": "mini-te')   # one answer and a torn line
    from trainer import preference_train

    def no_training(argv):
        raise AssertionError('a finished training was run again')

    monkeypatch.setattr(preference_train, 'main', no_training)
    assert arms.run_arm('dpo', 0, stages.QUICK, cache_dir=cache) == out
    again = json.loads((out / 'metrics.json').read_text())
    assert again['train_wall_seconds'] == metrics_before['train_wall_seconds'] > 0
    for key in ('speech_acc', 'text_acc', 'curve', 'checkpoint'):
        assert again[key] == metrics_before[key], key
    assert any(k.startswith('rewards/') for k in metrics['curve'][0]['rewards'])
    assert metrics['allwrong'] is None and not (out / 'rollouts.jsonl').exists()
    # the preference rows: gold answer chosen, a wrong letter rejected, in the GRPO arms' order
    rows = jsonl.read(arms.preference_data(stages.QUICK, cache)['dpo'], missing_ok=False)
    grpo_rows = jsonl.read(arms.grpo_data(stages.QUICK, cache), missing_ok=False)
    assert [r['tars_key'] for r in rows] == [r['tars_key'] for r in grpo_rows]
    # only the train items after stage 2's first 16: questions stage 2 never answered
    assert sorted(r['tars_key'] for r in rows) == [f'mini-train-{i:05d}' for i in range(16, 24)]
    for row in rows:
        chosen, rejected = row['messages'][-1]['content'], row['rejected_response']
        assert chosen.startswith('<think>') and chosen.endswith('.</answer>') and chosen != rejected
        assert chosen[:-len('X.</answer>')] == rejected[:-len('X.</answer>')]
        assert row['audios'] and all(p.startswith(str(cache)) and '.tmp' not in p for p in row['audios'])


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_quick_sft_arm_on_one_cycled_question(cache):
    from trainer import jsonl
    from scripts.miniature import arms, stages
    out = arms.run_arm('sft', 0, stages.QUICK, cache_dir=cache, overrides={'train_questions': 1})
    assert out != arms.run_dir('sft', 0, stages.QUICK, cache_dir=cache)   # its own run name
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['recipe']['train_questions'] == 1 and len(metrics['curve']) == 2
    argv = json.loads((out / 'argv.json').read_text())
    data = argv[argv.index('--dataset') + 1]
    assert data.endswith('.tmp/sft.jsonl')   # written in the run's folder (argv names it before the rename)
    rows = jsonl.read(out / 'sft.jsonl', missing_ok=False)
    first = jsonl.read(arms.preference_data(stages.QUICK, cache)['sft'], missing_ok=False)[0]
    recipe = arms.STAGE3['quick']
    assert len(rows) == recipe['steps'] * recipe['pref_batch_size'] and all(r == first for r in rows)
