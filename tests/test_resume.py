"""Resume after a kill (issue 11): torn JSONL lines, incomplete checkpoints, run manifests, log trimming.

No model is loaded here; the real resume of a tiny GRPO run is tests/test_grpo_integration.py
(test_resume_continues_the_step_count). The launcher tests use DRY_RUN=1 on fake run directories.
"""
import json
import logging
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from trainer import jsonl
from trainer.run_state import (MANIFEST, RunStateError, last_complete_checkpoint, plan_run, read_manifest,
                               write_manifest)


# ---------------------------------------------------------------- JSONL
def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_read_drops_a_torn_last_line_and_names_the_file(tmp_path, caplog):
    path = write_text(tmp_path / 'rollouts.jsonl', '{"step": 1}\n{"step": 2}\n{"step": 3, "compl')
    with caplog.at_level(logging.WARNING):
        assert jsonl.read(path) == [{'step': 1}, {'step': 2}]
    assert str(path) in caplog.text and 'torn last line' in caplog.text


def test_read_names_file_and_line_of_a_corruption_elsewhere(tmp_path):
    path = write_text(tmp_path / 'results.jsonl', '{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(jsonl.JsonlError, match=rf'{path}, line 2: not valid JSON'):
        jsonl.read(path)


def test_read_of_a_missing_file(tmp_path):
    assert jsonl.read(tmp_path / 'none.jsonl') == []
    with pytest.raises(FileNotFoundError, match='none.jsonl'):
        jsonl.read(tmp_path / 'none.jsonl', missing_ok=False)


def test_append_cuts_a_torn_tail_first_so_no_corrupt_line_is_left_in_the_middle(tmp_path):
    path = write_text(tmp_path / 'r.jsonl', '{"k": "a"}\n{"k": "b", "out')
    assert jsonl.append(path, [{'k': 'b'}, {'k': 'c'}]) == 2
    assert path.read_text() == '{"k": "a"}\n{"k": "b"}\n{"k": "c"}\n'
    assert jsonl.read(path) == [{'k': 'a'}, {'k': 'b'}, {'k': 'c'}]


def test_nan_and_inf_are_written_as_null(tmp_path):
    path = tmp_path / 'log.jsonl'
    jsonl.append(path, {'loss': float('nan'), 'r': [1.0, float('inf')], 'ok': 0.5})
    assert path.read_text() == '{"loss": null, "r": [1.0, null], "ok": 0.5}\n'


def test_write_atomic_keeps_the_old_file_and_leaves_no_temp_file_on_failure(tmp_path):
    path = write_text(tmp_path / 'data.jsonl', '{"old": 1}\n')

    def rows():
        yield {'new': 1}
        raise RuntimeError('disk full')

    with pytest.raises(RuntimeError, match='disk full'):
        jsonl.write_atomic(path, rows())
    assert path.read_text() == '{"old": 1}\n' and sorted(os.listdir(tmp_path)) == ['data.jsonl']
    assert jsonl.write_atomic(path, [{'new': 1}, {'new': 2}]) == 2
    assert jsonl.read(path) == [{'new': 1}, {'new': 2}] and sorted(os.listdir(tmp_path)) == ['data.jsonl']


def test_drop_unsaved_steps_survives_a_torn_last_line(tmp_path):
    from trainer.grpo_trainer import drop_unsaved_steps
    lines = [json.dumps({'step': s, 'key': f'q{s}'}) for s in (1, 1, 2, 2, 3)]
    path = write_text(tmp_path / 'rollouts.jsonl', '\n'.join(lines) + '\n{"step": 3, "key": "q')
    assert drop_unsaved_steps(str(path), 2) == 1  # the step-3 record; the torn line goes too
    assert [r['step'] for r in jsonl.read(path)] == [1, 1, 2, 2] and path.read_text().endswith('}\n')
    assert drop_unsaved_steps(str(path), 2) == 0


def test_eval_results_tolerate_a_torn_last_line_and_name_a_corrupt_file(tmp_path):
    from eval.metrics import read_results, run_metrics
    row = {'key': 'k1', 'correct': True, 'extracted': 'A'}
    path = write_text(tmp_path / 'results.jsonl', json.dumps(row) + '\n{"key": "k2", "corr')
    assert run_metrics(read_results(path))['count'] == 1
    write_text(path, '{"key": "k1"\n' + json.dumps(row) + '\n')
    with pytest.raises(jsonl.JsonlError, match=rf'{path}, line 1'):
        read_results(path)


def test_preference_records_tolerate_a_torn_last_line(tmp_path):
    from scripts.dataset_building.preference import read_records
    a = write_text(tmp_path / 'samples.shard0of2.jsonl', '{"key": "a"}\n{"key": "b"')
    b = write_text(tmp_path / 'samples.shard1of2.jsonl', '{"key": "c"}\n')
    assert [r['key'] for r in read_records([a, b])] == ['a', 'c']
    write_text(b, 'oops\n{"key": "c"}\n')
    with pytest.raises(jsonl.JsonlError, match=rf'{b}, line 1'):
        read_records([a, b])


# ---------------------------------------------------------------- checkpoints
def fake_checkpoint(run: Path, step: int, state=True, weights=True) -> Path:
    path = run / f'checkpoint-{step}'
    path.mkdir(parents=True)
    if state:
        (path / 'trainer_state.json').write_text(json.dumps({'global_step': step}) if state is True else state)
    if weights:
        (path / 'adapter_model.safetensors').write_bytes(b'x')
    return path


def test_the_newest_complete_checkpoint_is_chosen_and_the_incomplete_ones_named(tmp_path):
    run = tmp_path / 'my-run-2'  # a dash in the path fooled `sort -t- -k2 -n`
    five, hundred = fake_checkpoint(run, 5), fake_checkpoint(run, 100)
    assert last_complete_checkpoint(run) == (hundred, [])
    killed = fake_checkpoint(run, 105, state=False)  # killed during the save
    torn = fake_checkpoint(run, 110, state='{"global_st')
    no_weights = fake_checkpoint(run, 115, weights=False)
    (run / 'checkpoint-120-tmp').mkdir()  # not a checkpoint name
    (run / 'last-checkpoint').symlink_to('checkpoint-115')
    chosen, skipped = last_complete_checkpoint(run)
    assert chosen == hundred
    assert [p for p, _ in skipped] == [no_weights, torn, killed]
    assert 'no weights' in skipped[0][1] and 'not valid JSON' in skipped[1][1]
    assert skipped[2][1] == 'no trainer_state.json'
    for p in (killed, torn, no_weights):
        shutil.rmtree(p)
    # the same choice as transformers' get_last_checkpoint when every checkpoint is complete
    from transformers.trainer_utils import get_last_checkpoint
    assert Path(get_last_checkpoint(str(run))) == last_complete_checkpoint(run)[0] == hundred
    assert five.exists()


def test_a_deepspeed_checkpoint_counts_as_complete(tmp_path):
    path = fake_checkpoint(tmp_path, 3, weights=False)
    (path / 'global_step3').mkdir()
    assert last_complete_checkpoint(tmp_path) == (path, [])


# ---------------------------------------------------------------- run manifest and plan
INPUTS = {'DATASET_PATH': 'a/set', 'MODEL': 'm', 'PROMPT_MODALITY': 'mixed'}


def test_plan_refuses_a_resume_with_other_inputs_naming_each_difference(tmp_path):
    write_manifest(tmp_path, 'train_grpo.sh', INPUTS)
    assert read_manifest(tmp_path)['inputs'] == INPUTS
    plan = plan_run(tmp_path, True, INPUTS)
    assert plan.prepared and plan.checkpoint is None
    fake_checkpoint(tmp_path, 2)  # trained with INPUTS (without a checkpoint: tests/test_reliability.py)
    with pytest.raises(RunStateError) as err:
        plan_run(tmp_path, True, dict(INPUTS, DATASET_PATH='b/set', PROMPT_MODALITY='a'))
    assert "DATASET_PATH 'a/set' -> 'b/set'; PROMPT_MODALITY 'mixed' -> 'a'" in str(err.value)


def test_plan_of_a_new_run(tmp_path):
    assert plan_run(tmp_path / 'new', False, INPUTS).checkpoint is None
    (tmp_path / 'empty').mkdir()  # e.g. left by an older launcher whose start failed: reusable
    assert not plan_run(tmp_path / 'empty', False, INPUTS).prepared
    fake_checkpoint(tmp_path / 'used', 1)
    with pytest.raises(RunStateError, match='exists; set RESUME=1'):
        plan_run(tmp_path / 'used', False, INPUTS)
    (tmp_path / 'file').write_text('')
    with pytest.raises(RunStateError, match='is not a directory'):
        plan_run(tmp_path / 'file', True, INPUTS)


# ---------------------------------------------------------------- launchers (DRY_RUN)
def launch(script, env, ok=True):
    full = {**os.environ, 'DRY_RUN': '1', **env}
    proc = subprocess.run(['bash', script], cwd=REPO, env=full, capture_output=True, text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def commands(proc):
    return [shlex.split(l[2:]) for l in proc.stdout.splitlines() if l.startswith('+ ')]


def flag(cmd, name):
    return cmd[cmd.index(name) + 1]


GRPO_CLUSTER = {'NPROC_PER_NODE': '8', 'MODEL': 'm', 'DATASET_PATH': 'a/set'}


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_grpo_launcher_resumes_the_newest_complete_checkpoint(tmp_path):
    run = tmp_path / 'tars-run-1'
    fake_checkpoint(run, 5)
    fake_checkpoint(run, 10, state=False)  # SIGKILL while checkpoint-10 was being written
    proc = launch('train_grpo.sh', dict(GRPO_CLUSTER, OUTPUT_DIR=str(run), RESUME='1'))
    prepare, train = commands(proc)  # no run.json: the data is prepared (again)
    assert prepare[:4] == ['python', '-m', 'trainer.data', 'grpo']
    assert flag(train, '--resume_from_checkpoint') == str(run / 'checkpoint-5')
    assert f'skipping {run / "checkpoint-10"}: incomplete (no trainer_state.json' in proc.stderr


@pytest.mark.parametrize('script, env', [
    ('train_dpo.sh', {'PREFERENCE_DATA': 'pref/set'}),
    ('train_sft.sh', {'DATASET_PATH': 'a/dpo-set'}),
])
@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_preference_launchers_resume_the_newest_complete_checkpoint(tmp_path, script, env):
    run = tmp_path / 'dpo-run'
    fake_checkpoint(run, 100)
    fake_checkpoint(run, 5)
    fake_checkpoint(run, 104, state='{')
    proc = launch(script, dict(env, NPROC_PER_NODE='8', MODEL='m', OUTPUT_DIR=str(run), RESUME='1'))
    train = commands(proc)[-1]
    assert flag(train, '--resume_from_checkpoint') == str(run / 'checkpoint-100')
    assert 'checkpoint-104: incomplete' in proc.stderr


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_grpo_launcher_refuses_a_resume_with_another_dataset_before_loading_anything(tmp_path):
    run = tmp_path / 'run'
    first = launch('train_grpo.sh', dict(GRPO_CLUSTER, OUTPUT_DIR=str(run)))
    assert len(commands(first)) == 2
    # what the launcher records after preparing (the record step of a real run, with the same inputs)
    inputs = {'MODEL': 'm', 'DATASET_PATH': 'a/set', 'MODEL_PRESET': 'qwen2_5_omni', 'PROMPT_TYPE': 'systhink',
              'PROMPT_MODALITY': 'mixed',
              'REWARD_FUNCS': 'tars_format tars_accuracy tars_representation tars_behaviour'}
    write_manifest(run, 'train_grpo.sh', inputs)
    fake_checkpoint(run, 4)
    proc = launch('train_grpo.sh', dict(GRPO_CLUSTER, OUTPUT_DIR=str(run), RESUME='1', DATASET_PATH='b/set'),
                  ok=False)
    assert proc.returncode == 2 and not commands(proc)
    assert proc.stderr.strip().splitlines()[-1] == (
        f"train_grpo.sh: RESUME=1 with other inputs than {run / MANIFEST} records: DATASET_PATH 'a/set' -> "
        "'b/set' (restore them, or start a new OUTPUT_DIR)")
    # the same inputs: no preparation again, and the output says so
    proc = launch('train_grpo.sh', dict(GRPO_CLUSTER, OUTPUT_DIR=str(run), RESUME='1'))
    (train,) = commands(proc)
    assert flag(train, '--resume_from_checkpoint') == str(run / 'checkpoint-4')
    assert '= data prepared before' in proc.stdout and 'trainer.data' in proc.stdout


@pytest.mark.parametrize('script, env, message', [
    ('train_grpo.sh', {'NPROC_PER_NODE': 'abc'}, "NPROC_PER_NODE must be a whole number >= 0, got 'abc'"),
    ('train_dpo.sh', {'NPROC_PER_NODE': '-1'}, "NPROC_PER_NODE must be a whole number >= 0, got '-1'"),
    ('train_sft.sh', {'WORLD_BATCH_SIZE': '6x'}, "WORLD_BATCH_SIZE must be a whole number >= 1, got '6x'"),
    ('train_grpo.sh', {'MAX_STEPS': '0'}, "MAX_STEPS must be a whole number >= 1, got '0'"),
    ('train_grpo.sh', {'MASTER_PORT': '70000'}, "MASTER_PORT must be a whole number >= 1 and <= 65535, got '70000'"),
    ('train_grpo.sh', {'DEEPSPEED': 'zero4'}, 'DEEPSPEED must be none, zero0-zero3, zero2_offload, zero3_offload '
                                              "or a json file, got 'zero4'"),
    ('train_grpo.sh', {'REWARD_FUNCS': 'tars_format tars_acuracy'}, "unknown reward name(s) ['tars_acuracy']"),
    ('train_grpo.sh', {'PROMPT_MODALITY': 'speech'}, "PROMPT_MODALITY='speech' is not one of a t mixed"),
    ('train_dpo.sh', {'PROMPT_MODALITY': 'mixed'}, "PROMPT_MODALITY='mixed' is not one of a t"),
    ('train_sft.sh', {'MODEL_PRESET': 'gpt2'}, "MODEL_PRESET='gpt2' is not one of"),
    ('train_grpo.sh', {'PROMPT_TYPE': 'chat'}, "PROMPT_TYPE='chat' is not one of"),
])
@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_launcher_input_errors_are_one_line_before_anything_loads(tmp_path, script, env, message):
    proc = launch(script, dict({'DRY_RUN': '0', 'OUTPUT_DIR': str(tmp_path / 'run')}, **env), ok=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert message in lines[-1] and lines[-1].startswith(f'{script}: '), proc.stderr
    assert 'Traceback' not in proc.stderr and 'integer expression' not in proc.stderr
    assert 'no GPU found' not in proc.stderr and not (tmp_path / 'run').exists()


def test_launchers_quote_the_tensorboard_path():
    for script in ('train_grpo.sh', 'scripts/preference_launcher.sh'):
        text = (REPO / script).read_text()
        assert '--logdir $(printf \'%q\' "$OUTPUT_DIR/runs")' in text


# ---------------------------------------------------------------- data preparation
def test_a_bad_test_split_leaves_nothing_behind(tmp_path):
    import datasets

    from tests.test_data_and_launcher import good_row
    from trainer.data import prepare_grpo_files
    from trainer.schema import SchemaError, rows_to_dataset
    path = tmp_path / 'set'
    datasets.DatasetDict({'train': rows_to_dataset([good_row('k1')]),
                          'test': rows_to_dataset([good_row('t1', answer_index=9)])}).save_to_disk(str(path))
    out = tmp_path / 'run' / 'data'
    with pytest.raises(SchemaError, match="'t1'"):
        prepare_grpo_files(str(path), out, val_split='test')
    assert not (tmp_path / 'run').exists()
    datasets.DatasetDict({'train': rows_to_dataset([good_row('k1')]),
                          'test': rows_to_dataset([good_row('t1')])}).save_to_disk(str(tmp_path / 'set2'))
    paths = prepare_grpo_files(str(tmp_path / 'set2'), out, val_split='test')
    assert paths == [out / 'grpo.jsonl', out / 'val.jsonl']
    assert [r['tars_key'] for r in jsonl.read(out / 'val.jsonl')] == ['t1']


# ---------------------------------------------------------------- run logs
def log_line(step, max_steps=12, **metrics):
    return dict(metrics, **{'global_step/max_steps': f'{step}/{max_steps}'})


def test_trim_logs_leaves_what_an_uninterrupted_run_logged_up_to_the_checkpoint(tmp_path):
    from trainer.run_logs import trim_logs
    attempt1 = [log_line(s, loss=s / 10) for s in range(1, 10)] + [{'global_step': 9, 'log_history': []}]
    attempt2 = [log_line(s, loss=s / 10) for s in range(6, 11)] + [{'global_step': 10, 'log_history': []}]
    completions = [{'step': [str(s)] * 2, 'completion': ['a', 'b']} for s in range(1, 11)]
    jsonl.write_atomic(tmp_path / 'logging.jsonl', attempt1 + attempt2)
    jsonl.write_atomic(tmp_path / 'completions.jsonl', completions)
    with open(tmp_path / 'logging.jsonl', 'a') as fh:
        fh.write('{"loss": 1.1, "global_step/max')  # killed mid-line
    assert trim_logs(tmp_path, 5) == {'logging.jsonl': 11, 'completions.jsonl': 5}
    assert jsonl.read(tmp_path / 'logging.jsonl') == [log_line(s, loss=s / 10) for s in range(1, 6)]
    assert [c['step'][0] for c in jsonl.read(tmp_path / 'completions.jsonl')] == ['1', '2', '3', '4', '5']
    assert trim_logs(tmp_path, 5) == {}
    jsonl.append(tmp_path / 'logging.jsonl', [log_line(12, train_runtime=3.0)])
    assert trim_logs(tmp_path, 12) == {'logging.jsonl': 1}  # the end of an earlier attempt goes


def test_the_callback_writes_null_for_nan_metrics():
    from trainer.run_logs import RunLogCallback
    logs = {'loss': float('nan'), 'reward': 0.5, 'grad_norm': float('inf'), 'global_step/max_steps': '1/2'}
    RunLogCallback().on_log(None, None, None, logs=logs)
    assert logs == {'loss': None, 'reward': 0.5, 'grad_norm': None, 'global_step/max_steps': '1/2'}
    assert json.dumps(logs) == '{"loss": null, "reward": 0.5, "grad_norm": null, "global_step/max_steps": "1/2"}'


def test_tensorboard_restart_marker_hides_the_killed_attempts_later_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from trainer.run_logs import tensorboard_restart_marker
    assert not tensorboard_restart_marker(tmp_path, 6)  # nothing to hide in a new run
    with SummaryWriter(str(tmp_path)) as w:  # attempt 1: steps 1-9, killed; checkpoint-5 is the last
        for s in range(1, 10):
            w.add_scalar('train/loss', s, s)
    assert tensorboard_restart_marker(tmp_path, 6)
    with SummaryWriter(str(tmp_path)) as w:  # the resumed attempt: steps 6-12
        for s in range(6, 13):
            w.add_scalar('train/loss', 100 + s, s)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars('train/loss')] == (
        [(s, s) for s in range(1, 6)] + [(s, 100 + s) for s in range(6, 13)])


# ---------------------------------------------------------------- the launcher, for real (tiny model)
@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_train_grpo_resume_after_a_kill_during_a_save(tmp_path):
    """bash train_grpo.sh (embedded default, 2 steps, a checkpoint each step); checkpoint-2 loses its
    trainer_state.json as in a kill during the save; RESUME=1 continues from checkpoint-1 without preparing
    the data again, and the logs read as one uninterrupted run."""
    out = tmp_path / 'tars-run'
    env = {k: v for k, v in os.environ.items() if k != 'CUDA_VISIBLE_DEVICES'}
    env.update(MAX_STEPS='2', OUTPUT_DIR=str(out), DRY_RUN='0')

    def train(**extra):
        return subprocess.run(['bash', 'train_grpo.sh', '--save_steps', '1'], cwd=REPO, env={**env, **extra},
                              capture_output=True, text=True, timeout=1500)

    proc = train()
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert json.loads((out / MANIFEST).read_text())['inputs']['PROMPT_MODALITY'] == 'mixed'
    first = jsonl.read(out / 'logging.jsonl')
    (out / 'checkpoint-2' / 'trainer_state.json').unlink()
    proc = train(RESUME='1')
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert f'skipping {out / "checkpoint-2"}: incomplete (no trainer_state.json' in proc.stderr
    assert '= data prepared before' in proc.stdout and '+ python -m trainer.data' not in proc.stdout
    train_cmd = [shlex.split(l[2:]) for l in proc.stdout.splitlines() if l.startswith('+ ')][-1]
    assert flag(train_cmd, '--resume_from_checkpoint') == str(out / 'checkpoint-1')
    assert json.loads((out / 'checkpoint-2' / 'trainer_state.json').read_text())['global_step'] == 2
    assert [r['step'] for r in jsonl.read(out / 'rollouts.jsonl')] == [1] * 8 + [2] * 8
    logs = jsonl.read(out / 'logging.jsonl')
    shape = [(l.get('global_step/max_steps'), sorted(k for k in l if not k.startswith(('eval_', 'train_'))))
             for l in logs]
    assert shape == [(l.get('global_step/max_steps'), sorted(k for k in l if not k.startswith(('eval_', 'train_'))))
                     for l in first]  # the same records, step by step, as the uninterrupted first attempt
    assert logs[0] == first[0] and sum('log_history' in l for l in logs) == 1
    proc = train(RESUME='1', DATASET_PATH='another/set')
    assert proc.returncode == 2 and "DATASET_PATH 'small MMLU speech set (embedded default)' -> 'another/set'" in (
        proc.stderr.strip().splitlines()[-1])
