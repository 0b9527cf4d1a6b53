"""trainer.jsonl.guard_run_config: a results folder is tied to the settings its records were made with."""
from __future__ import annotations

import argparse
import json

import pytest

from trainer import jsonl
from trainer.engine import add_engine_arguments


def test_guard_run_config_writes_then_accepts_the_same_settings(tmp_path):
    run_dir = tmp_path / 'run'
    jsonl.guard_run_config(run_dir, {'model': 'm', 'modes': ('text', 'audio'), 'max_items': None}, 'results')
    assert json.loads((run_dir / 'config.json').read_text()) == {'model': 'm', 'modes': ['text', 'audio'],
                                                                  'max_items': None}
    assert [p.name for p in run_dir.iterdir()] == ['config.json']  # no temporary file left
    # the same settings, in another key order and with the tuple it was stored as a list from
    jsonl.guard_run_config(run_dir, {'max_items': None, 'modes': ('text', 'audio'), 'model': 'm'}, 'results')


def test_guard_run_config_refuses_other_settings_naming_folder_and_keys(tmp_path):
    run_dir = tmp_path / 'run'
    jsonl.guard_run_config(run_dir, {'model': 'm', 'seed': 1, 'split': 'test'}, 'samples')
    with pytest.raises(jsonl.RunConfigError) as err:
        jsonl.guard_run_config(run_dir, {'model': 'm', 'seed': 2, 'split': 'test', 'new': True}, 'samples')
    message = str(err.value)
    assert message == (f"{run_dir} holds samples made with other settings (new: None -> True, seed: 1 -> 2); "
                       'choose another --out')
    assert isinstance(err.value, RuntimeError) and '\n' not in message
    assert json.loads((run_dir / 'config.json').read_text()) == {'model': 'm', 'seed': 1, 'split': 'test'}


def test_guard_run_config_refuses_an_unreadable_config(tmp_path):
    (tmp_path / 'config.json').write_text('{"model": ')
    with pytest.raises(jsonl.RunConfigError, match='config.json: not valid JSON'):
        jsonl.guard_run_config(tmp_path, {'model': 'm'})


def test_add_engine_arguments_defines_the_shared_flags():
    p = argparse.ArgumentParser()
    add_engine_arguments(p, max_new_tokens=512, batch_size=None)
    args = p.parse_args(['--model', 'M', '--backend', 'transformers'])
    assert (args.model, args.base_model, args.model_type, args.backend, args.max_new_tokens) == \
        ('M', None, None, 'transformers', 512)
    assert not hasattr(args, 'batch_size')
    p = argparse.ArgumentParser()
    add_engine_arguments(p, model_type='qwen2_5_omni')
    args = p.parse_args(['--model', 'M', '--batch_size', '3'])
    assert (args.batch_size, args.max_new_tokens, args.model_type, args.backend) == (3, 1000, 'qwen2_5_omni', 'auto')
    with pytest.raises(SystemExit):
        p.parse_args(['--model', 'M', '--backend', 'tpu'])


class NoEngine:
    """Stands where an engine would be: the guard refuses before anything is generated."""

    def infer(self, *args, **kwargs):
        raise AssertionError('the run should have been refused before generating')


def test_the_evaluations_refuse_a_results_folder_made_with_other_settings(tmp_path):
    """eval.qa and eval.asr write config.json on the first run and refuse a rerun with other settings into
    the same folder, before any generation (no model is loaded: the engine is a stand-in)."""
    from eval.asr import evaluate_asr
    from eval.qa import evaluate
    from tests.test_data_and_launcher import good_row, make_set
    path = make_set(tmp_path, [good_row('k1')])
    run_dir = tmp_path / 'eval' / 'm' / 'SET' / 'text_systhink'
    jsonl.guard_run_config(run_dir, {'model': 'm', 'max_new_tokens': 8})
    with pytest.raises(jsonl.RunConfigError, match=r'text_systhink holds results made with other settings \('
                                                   r'.*max_new_tokens: 8 -> 4'):
        evaluate('m', [('SET', path)], modes=['text'], out=tmp_path / 'eval', split='train', max_new_tokens=4,
                 engine=NoEngine())
    asr_dir = tmp_path / 'eval' / 'm' / 'SET' / 'asr_wer'
    jsonl.guard_run_config(asr_dir, {'model': 'm', 'base': 'm', 'adapter': None, 'dataset': path, 'split': 'train',
                                     'max_items': None, 'max_new_tokens': 8, 'reference_column': 'prompt_for_tts',
                                     'prompt': 'Transcribe the audio clip into text.'})
    with pytest.raises(jsonl.RunConfigError, match=r"asr_wer holds results made with other settings "
                                                   r"\(max_new_tokens: 8 -> 4\)"):
        evaluate_asr('m', f'SET={path}', tmp_path / 'eval', split='train', max_new_tokens=4, engine=NoEngine())
