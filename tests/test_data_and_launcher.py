"""Data preparation errors (before any training) and the launcher's cluster command (DRY_RUN)."""
import json
import os
import shlex
import subprocess

import datasets
import numpy as np
import pytest

from tests.conftest import REPO
from trainer.answer import format_score
from trainer.data import KEY, TEXT_PROMPT, prepare_grpo_dataset, prepare_warmstart_dataset
from trainer.schema import SchemaError, encode_wav_bytes, rows_to_dataset


def make_set(tmp_path, rows, name='set', extra_features=None):
    path = tmp_path / name
    datasets.DatasetDict({'train': rows_to_dataset(rows, extra_features=extra_features)}).save_to_disk(str(path))
    return str(path)


def good_row(key, audio=None, **over):
    t = np.arange(16000) / 16000
    wav = encode_wav_bytes((0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32))
    row = {'key': key, 'question': 'Which colour?', 'options': ['red', 'green', 'blue', 'black'], 'answer_index': 1,
           'prompt_for_tts': 'Which colour?\n\nOption A: red\nOption B: green\nOption C: blue\nOption D: black',
           'audio': audio or {'bytes': wav, 'path': None}}
    row.update(over)
    return row


def test_prepare_writes_speech_rows_with_the_text_prompt_alongside(tmp_path):
    path = make_set(tmp_path, [good_row('k1'), good_row('k2')])
    out = prepare_grpo_dataset(path, tmp_path / 'out')
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r[KEY] for r in rows] == ['k1', 'k2']
    assert rows[0]['messages'][0]['role'] == 'system' and rows[0]['messages'][-1]['content'] == '<audio>'
    assert rows[0][TEXT_PROMPT].startswith('Which colour?') and os.path.exists(rows[0]['audios'][0])
    warm = [json.loads(l) for l in prepare_warmstart_dataset(path, tmp_path / 'w').read_text().splitlines()]
    assert warm[0]['messages'][-1]['content'].endswith('<answer>The answer is B.</answer>')


def test_warmstart_speech_rows_carry_the_clip_and_the_thinking_column(tmp_path):
    path = make_set(tmp_path, [good_row('k1', thinking='Green is the second colour.')],
                    extra_features={'thinking': datasets.Value('string')})
    out = prepare_warmstart_dataset(path, tmp_path / 'w', modality='speech')
    [row] = [json.loads(l) for l in out.read_text().splitlines()]
    assert row['messages'][1]['content'].startswith('<audio>') and os.path.exists(row['audios'][0])
    assert row['messages'][-1]['content'] == ('<think>Green is the second colour.</think>'
                                              '<answer>The answer is B.</answer>')
    with pytest.raises(ValueError, match='modality must be one of text, speech, mixed, asr, asr_mixed'):
        prepare_warmstart_dataset(path, tmp_path / 'w2', modality='a')


def test_mixed_warmstart_rows_give_each_item_its_speech_then_its_text_prompt(tmp_path):
    path = make_set(tmp_path, [good_row('k1'), good_row('k2')])
    rows = [json.loads(l) for l in
            prepare_warmstart_dataset(path, tmp_path / 'w', modality='mixed').read_text().splitlines()]
    assert len(rows) == 4
    assert [('audios' in r, r['messages'][1]['content'].startswith('<audio>')) for r in rows] == \
        [(True, True), (False, False)] * 2
    assert rows[0]['audios'][0].endswith('.wav') and rows[0]['audios'] != rows[2]['audios']
    assert rows[1]['messages'][1]['content'].startswith('Which colour?')
    assert rows[0]['messages'][-1] == rows[1]['messages'][-1]   # the same answer after either prompt


def test_speech_thinking_answers_the_later_speech_prompts_directly(tmp_path):
    path = make_set(tmp_path, [good_row('k1'), good_row('k2')])
    rows = [json.loads(l) for l in prepare_warmstart_dataset(path, tmp_path / 'w', modality='mixed',
                                                              speech_thinking=1).read_text().splitlines()]
    answers = [r['messages'][-1]['content'] for r in rows]
    thought = answers[1]   # a text prompt: always with its thinking
    assert thought.startswith('<think>') and not thought.startswith('<think></think>')
    # item 1 (speech, text) thinks; item 2's speech prompt is answered directly, its text prompt with the thinking
    assert answers == [thought, thought, '<think></think><answer>The answer is B.</answer>', thought]
    assert format_score(answers[2]) == 1.0   # the strict format accepts an empty thinking
    with pytest.raises(ValueError, match="speech_thinking=1 needs the speech or mixed modality, got 'text'"):
        prepare_warmstart_dataset(path, tmp_path / 't', modality='text', speech_thinking=1)


def test_asr_mixed_warmstart_rows_ask_for_the_transcript_then_answer_the_text_prompt(tmp_path):
    path = make_set(tmp_path, [good_row('k1'), good_row('k2')])
    rows = [json.loads(l) for l in
            prepare_warmstart_dataset(path, tmp_path / 'w', modality='asr_mixed').read_text().splitlines()]
    assert len(rows) == 4
    transcript = good_row('k1')['prompt_for_tts']
    assert rows[0]['messages'] == [{'role': 'user', 'content': '<audio>Transcribe the audio clip into text.'},
                                   {'role': 'assistant', 'content': transcript}]
    assert rows[0]['audios'][0].endswith('.wav') and os.path.exists(rows[0]['audios'][0])
    assert 'audios' not in rows[1] and rows[1]['messages'][1]['content'].startswith('Which colour?')
    assert rows[1]['messages'][-1]['content'].endswith('<answer>The answer is B.</answer>')
    asr_only = [json.loads(l) for l in
                prepare_warmstart_dataset(path, tmp_path / 'a', modality='asr').read_text().splitlines()]
    assert [r['messages'] for r in asr_only] == [rows[0]['messages'], rows[2]['messages']]
    # the first item also answers its speech prompt, after its transcription and before its text prompt
    some = [json.loads(l) for l in prepare_warmstart_dataset(path, tmp_path / 's', modality='asr_mixed',
                                                              speech_answers=1).read_text().splitlines()]
    assert len(some) == 5 and some[0]['messages'] == rows[0]['messages']
    assert some[1]['messages'][1]['content'] == '<audio>' and some[1]['audios'] == some[0]['audios']
    assert some[1]['messages'][-1] == some[2]['messages'][-1] == rows[1]['messages'][-1]
    assert [r['messages'] for r in some[3:]] == [rows[2]['messages'], rows[3]['messages']]
    with pytest.raises(ValueError, match="speech_answers=1 needs an asr modality, got 'mixed'"):
        prepare_warmstart_dataset(path, tmp_path / 'm', modality='mixed', speech_answers=1)


@pytest.mark.parametrize('bad, field', [
    ({'answer_index': 7}, 'answer_index'),
    ({'options': []}, 'options'),
    ({'audio': {'bytes': b'not a wav file', 'path': None}}, 'audio'),
])
def test_bad_rows_stop_before_training_naming_dataset_key_and_field(tmp_path, bad, field):
    path = make_set(tmp_path, [good_row('fine'), good_row('broken', **bad)])
    with pytest.raises(SchemaError) as err:
        prepare_grpo_dataset(path, tmp_path / 'out')
    message = str(err.value)
    assert path in message and "'broken'" in message and repr(field) in message
    assert not (tmp_path / 'out' / 'grpo.jsonl').exists()


def test_missing_column_is_named(tmp_path):
    rows = [good_row('k1')]
    del rows[0]['prompt_for_tts']
    path = make_set(tmp_path, rows)
    with pytest.raises(SchemaError, match='prompt_for_tts'):
        prepare_grpo_dataset(path, tmp_path / 'out')


def dry_run(env):
    full = dict(os.environ, DRY_RUN='1', **env)
    proc = subprocess.run(['bash', 'train_grpo.sh'], cwd=REPO, env=full, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [l[2:] for l in proc.stdout.splitlines() if l.startswith('+ ')]
    assert len(lines) == 2, proc.stdout
    return shlex.split(lines[0]), shlex.split(lines[1])


def flag(cmd, name):
    return cmd[cmd.index(name) + 1]


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_launcher_dry_run_for_eight_gpus(tmp_path):
    prepare, train = dry_run({'NPROC_PER_NODE': '8', 'MODEL': 'Qwen/Qwen2.5-Omni-7B', 'DATASET_PATH': 'some/hub-set',
                              'OUTPUT_DIR': str(tmp_path / 'run')})
    assert prepare[:4] == ['python', '-m', 'trainer.data', 'grpo'] and flag(prepare, '--dataset') == 'some/hub-set'
    assert train[:3] == ['torchrun', '--nproc_per_node', '8'] and 'trainer.grpo' in train
    assert flag(train, '--per_device_train_batch_size') == '2'
    assert flag(train, '--gradient_accumulation_steps') == '4'  # 64 rollouts / (8 GPUs x 2)
    assert flag(train, '--deepspeed') == 'zero2' and flag(train, '--use_vllm') == 'true'
    assert flag(train, '--vllm_mode') == 'colocate' and json.loads(flag(train, '--vllm_limit_mm_per_prompt')) == {
        'audio': 1, 'image': 0, 'video': 0}   # the preset's limits: vLLM skips the vision tower (docs/memory.md)
    assert flag(train, '--prompt_modality') == 'mixed' and flag(train, '--model') == 'Qwen/Qwen2.5-Omni-7B'
    rewards = train[train.index('--reward_funcs') + 1:train.index('--output_dir')]
    assert rewards == ['tars_format', 'tars_accuracy', 'tars_representation', 'tars_behaviour']
    assert flag(train, '--embedder') == 'Qwen/Qwen3-Embedding-0.6B'  # the paper's behaviour embedder on a cluster
    _, embedded = dry_run({'NPROC_PER_NODE': '0', 'OUTPUT_DIR': str(tmp_path / 'cpu')})
    assert '--embedder' not in embedded  # the CPU default keeps the offline MiniLM (trainer.config)


def test_the_launchers_default_preset_is_the_libraries():
    from trainer.presets import DEFAULT_PRESET
    text = (REPO / 'scripts' / 'launcher_env.sh').read_text()
    assert f'MODEL_PRESET=${{MODEL_PRESET:-{DEFAULT_PRESET}}}' in text
    assert 'python -c' not in text + (REPO / 'train_grpo.sh').read_text() + (
        REPO / 'scripts' / 'preference_launcher.sh').read_text()  # one question to Python: the preflight


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_launcher_dry_run_original_reward_names_and_bad_world_batch(tmp_path):
    _, train = dry_run({'NPROC_PER_NODE': '8', 'MODEL': 'm', 'OUTPUT_DIR': str(tmp_path / 'r'), 'DEEPSPEED': 'zero3',
                        'REWARD_FUNCS': 'reward_format reward_xfinder hsorm.hidden_state_sim'})
    assert flag(train, '--deepspeed') == 'zero3'
    assert train[train.index('--reward_funcs') + 1:train.index('--output_dir')] == [
        'reward_format', 'reward_xfinder', 'hsorm.hidden_state_sim']
    full = dict(os.environ, DRY_RUN='1', NPROC_PER_NODE='3', MODEL='m', OUTPUT_DIR=str(tmp_path / 'x'))
    proc = subprocess.run(['bash', 'train_grpo.sh'], cwd=REPO, env=full, capture_output=True, text=True)
    assert proc.returncode == 2 and 'WORLD_BATCH_SIZE' in proc.stderr


def test_the_paper_defaults_reach_ms_swift():
    from trainer.grpo import build_swift_argv
    argv = build_swift_argv(['--num_generations', '4'])
    assert argv[argv.index('--loss_type') + 1] == 'dapo' and argv[argv.index('--epsilon_high') + 1] == '0.28'
    assert argv[argv.index('--lora_rank') + 1] == '8' and argv[argv.index('--lora_alpha') + 1] == '32'
    # a user flag comes after the default, so argparse keeps the user's value
    assert max(i for i, a in enumerate(argv) if a == '--num_generations') > argv.index('--lora_rank')
    assert argv[argv.index('--external_plugins') + 1].endswith('tars_plugin.py')
    assert argv[argv.index('--callbacks') + 1] == 'tars_run_logs'  # trainer.run_logs
    assert argv[-1].endswith('tars_plugin.py')
    # the user's plugins and callbacks are kept, after ours (the last flag wins in ms-swift's parser)
    from trainer.grpo import PLUGIN
    argv = build_swift_argv(['--callbacks', 'early_stop', '--external_plugins', 'my.py'])
    assert argv[-6:] == ['--callbacks', 'tars_run_logs', 'early_stop', '--external_plugins', str(PLUGIN), 'my.py']


def test_a_rebuilt_set_whose_row_keeps_its_key_gets_its_new_clip(tmp_path):
    """The clip cache is keyed by the row's audio as well as its key: a dataset rebuilt under the same name
    (another voice, the same keys) never reads the old clip back."""
    import soundfile as sf
    from trainer.data import write_clip
    from trainer.schema import encode_wav_bytes
    clips = tmp_path / 'audio'
    clips.mkdir()
    first = write_clip({'key': 'k1', 'audio': {'bytes': encode_wav_bytes(np.zeros(1600)), 'path': None}}, 'd', clips)
    again = write_clip({'key': 'k1', 'audio': {'bytes': encode_wav_bytes(np.zeros(1600)), 'path': None}}, 'd', clips)
    assert again == first   # the same clip is written once
    tone = 0.5 * np.sin(np.linspace(0, 400, 1600))
    rebuilt = write_clip({'key': 'k1', 'audio': {'bytes': encode_wav_bytes(tone), 'path': None}}, 'd', clips)
    assert rebuilt != first and np.abs(sf.read(rebuilt)[0]).max() > 0.4 and np.abs(sf.read(first)[0]).max() == 0


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_env_sh_stops_before_a_new_venv_when_the_disk_is_too_full(tmp_path):
    # a stub df on PATH reports 1 GB free: env.sh must stop with one line naming the disk, before creating anything
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'df').write_text('#!/bin/sh\necho "Filesystem 1024-blocks Used Available Capacity Mounted"\n'
                                'echo "/dev/x 100000000 99000000 1048576 99% /"\n')
    (bin_dir / 'df').chmod(0o755)
    venv = tmp_path / 'venvs' / 'v'
    venv.parent.mkdir()
    env = {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'TARS_VENV': str(venv), 'TARS_STACK': 'cpu'}
    r = subprocess.run(['bash', str(REPO / 'env.sh')], env=env, capture_output=True, text=True)
    assert r.returncode == 1
    assert f'env.sh: 1 GB free on the disk of {venv.parent}; a new {venv} (cpu stack) needs about 8 GB' in r.stderr
    assert not venv.exists()
    # TARS_DISK_CHECK=0 skips the check (checked up to the set-up message only: the stub venv command fails)
    (bin_dir / 'python3').write_text('#!/bin/sh\nexit 3\n')
    (bin_dir / 'python3').chmod(0o755)
    r = subprocess.run(['bash', str(REPO / 'env.sh')], capture_output=True, text=True,
                       env={**env, 'TARS_DISK_CHECK': '0', 'PYTHON': str(bin_dir / 'python3')})
    assert 'GB free' not in r.stderr and 'setting up' in r.stderr and r.returncode == 1
