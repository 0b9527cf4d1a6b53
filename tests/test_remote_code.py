"""A model folder never runs its own code unless the user opts in (``trainer.model_loading``, docs/design.md §9).

The malicious folder is a copy of the tiny Qwen2.5-Omni twin whose ``config.json`` gains
``"auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}`` and a ``configuration_evil.py`` that writes a
marker file when imported. Every entry point (inference, evaluation, ASR evaluation, merge, GRPO and DPO/SFT
training, the warm start, the layer analysis) must refuse it before any of its code runs, in one line naming
the folder and the entry; with ``--trust_remote_code`` the libraries load it as before, so the marker is
written (ms-swift 4.6 itself passes ``trust_remote_code=True``: the last tests show the guard is what stops it).
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO
from trainer.model_loading import (CUSTOM_GENERATE, RemoteCodeError, check_no_remote_code, check_swift_argv,
                                   remote_code_entries, swift_argv_models)

ENTRY = 'config.json: auto_map {"AutoConfig": "configuration_evil.EvilConfig"}'
LARGE = ('model.safetensors', 'tokenizer.json', 'vocab.json', 'merges.txt', 'spk_dict.pt')


def evil_copy(tiny_model: Path, dest: Path, marker: Path) -> Path:
    """``dest``: the tiny twin (large files linked) with an AutoConfig ``auto_map`` whose module writes ``marker``."""
    dest.mkdir(parents=True)
    for path in tiny_model.iterdir():
        if path.name in LARGE:
            (dest / path.name).symlink_to(path)
        elif path.is_file():
            shutil.copy(path, dest / path.name)
    config = json.loads((dest / 'config.json').read_text())
    config['auto_map'] = {'AutoConfig': 'configuration_evil.EvilConfig'}
    (dest / 'config.json').write_text(json.dumps(config, indent=1))
    (dest / 'configuration_evil.py').write_text(
        'from pathlib import Path\n'
        f'Path({str(marker)!r}).write_text("the model folder ran its own code")\n'
        'from transformers import Qwen2_5OmniConfig\n\n\n'
        'class EvilConfig(Qwen2_5OmniConfig):\n'
        '    pass\n')
    return dest


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / 'marker.txt'


@pytest.fixture
def evil(tiny_model, tmp_path, marker) -> Path:
    """A fresh malicious folder per test; its name is unique because transformers imports the folder's module
    as ``transformers_modules.<folder name>`` (a copy in its modules cache, removed afterwards)."""
    folder = evil_copy(tiny_model, tmp_path / f'evil_{tmp_path.name}', marker)
    yield folder
    from transformers.utils import HF_MODULES_CACHE
    shutil.rmtree(Path(HF_MODULES_CACHE) / 'transformers_modules' / folder.name, ignore_errors=True)


def adapter_on(adapter: Path, base: Path) -> None:
    """A LoRA checkpoint folder (config only) whose base is ``base``."""
    adapter.mkdir()
    config = {'base_model_name_or_path': str(base), 'peft_type': 'LORA'}
    (adapter / 'adapter_config.json').write_text(json.dumps(config))


def refused(call, folder: Path, marker: Path, entry: str = ENTRY) -> str:
    """Run ``call``; it must raise RemoteCodeError naming ``folder`` and ``entry`` in one line, with no marker."""
    with pytest.raises(RemoteCodeError) as err:
        call()
    message = str(err.value)
    assert '\n' not in message
    assert message.startswith(f'{folder}: ') and entry in message and '--trust_remote_code' in message, message
    assert not marker.exists()
    return message


# ---------------------------------------------------------------- what counts as remote code

def test_the_tiny_twin_runs_no_code(tiny_model):
    assert remote_code_entries(tiny_model) == []
    check_no_remote_code([str(tiny_model)])  # no error


def test_every_auto_map_and_custom_generate_is_found(tmp_path):
    nested = {'model_type': 'x', 'text_config': {'auto_map': {'AutoConfig': 'c.C'}}}
    (tmp_path / 'config.json').write_text(json.dumps(nested))
    (tmp_path / 'tokenizer_config.json').write_text(json.dumps({'auto_map': ['tok.T', None]}))  # the older list form
    (tmp_path / 'processor_config.json').write_text(json.dumps({'auto_map': {'AutoProcessor': 'proc.P'}}))
    (tmp_path / 'preprocessor_config.json').write_text(json.dumps({'auto_map': {'AutoFeatureExtractor': 'fe.F'}}))
    (tmp_path / 'generation_config.json').write_text(json.dumps({'auto_map': {}}))  # empty: nothing to run
    (tmp_path / 'broken.json').write_text('{')
    (tmp_path / 'custom_generate').mkdir()
    (tmp_path / CUSTOM_GENERATE).write_text('print(1)\n')
    assert remote_code_entries(tmp_path) == [
        'broken.json: unreadable (JSONDecodeError)',
        'config.json: text_config.auto_map {"AutoConfig": "c.C"}',
        'preprocessor_config.json: auto_map {"AutoFeatureExtractor": "fe.F"}',
        'processor_config.json: auto_map {"AutoProcessor": "proc.P"}',
        'tokenizer_config.json: auto_map ["tok.T", null]',
        'custom_generate/generate.py',
    ]
    refused(lambda: check_no_remote_code([str(tmp_path)]), tmp_path, tmp_path / 'no-marker',
            'preprocessor_config.json: auto_map {"AutoFeatureExtractor": "fe.F"}')
    check_no_remote_code([str(tmp_path)], trust_remote_code=True)  # the opt-in checks nothing


def test_swift_argv_models():
    argv = ['--model', 'a', '--reward_model', 'b', 'c', '--lora_rank', '8', '--adapters=d', '--ref_model', 'e']
    assert swift_argv_models(argv) == ['a', 'e', 'b', 'c', 'd']


def test_swift_argv_adapter_base_from_args_json(tmp_path, evil, marker):
    """Without --model, ms-swift takes the base from the adapter's args.json: that base is checked too."""
    adapter = tmp_path / 'ckpt'
    adapter.mkdir()
    (adapter / 'args.json').write_text(json.dumps({'model': str(evil)}))
    assert swift_argv_models(['--adapters', str(adapter)]) == [str(adapter), str(evil)]
    refused(lambda: check_swift_argv(['--adapters', str(adapter)]), evil, marker)


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_hub_id_is_checked_on_its_snapshot(tmp_path, evil, marker):
    """A hub id: the snapshot ms-swift's safe_snapshot_download returns (here from an offline HF cache)."""
    revision = '0' * 40
    repo = tmp_path / 'hub' / 'models--evil-org--tiny'
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(revision)
    snapshot = repo / 'snapshots' / revision
    snapshot.mkdir(parents=True)
    for name in ('config.json', 'configuration_evil.py'):
        shutil.copy(evil / name, snapshot / name)
    code = ('from trainer.model_loading import check_no_remote_code, RemoteCodeError\n'
            'try:\n    check_no_remote_code(["evil-org/tiny"])\nexcept RemoteCodeError as e:\n    print(e)\n')
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_CACHE=str(tmp_path / 'hub'), HF_HUB_OFFLINE='1', USE_HF='1')
    out = subprocess.run([PYTHON, '-c', code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().startswith(f'evil-org/tiny ({snapshot}): {ENTRY}'), out.stdout + out.stderr[-2000:]
    assert not marker.exists()


# ---------------------------------------------------------------- every entry point refuses by default

@pytest.mark.parametrize('model_type', [None, 'phi4_multimodal'])
def test_inference_refuses(evil, marker, model_type):
    from infer.answer import main
    argv = ['--model', str(evil), '--text', 'Q?'] + (['--model_type', model_type] if model_type else [])
    refused(lambda: main(argv), evil, marker)


def test_evaluation_refuses(evil, marker, tmp_path):
    from eval.qa import main
    refused(lambda: main(['--model', str(evil), '--dataset', f'SET={tmp_path}/none', '--out', str(tmp_path / 'o'),
                          '--backend', 'transformers']), evil, marker)


def test_asr_evaluation_refuses(evil, marker, tmp_path):
    from eval.asr import main
    refused(lambda: main(['--model', str(evil), '--dataset', f'SET={tmp_path}/none', '--out', str(tmp_path / 'o'),
                          '--backend', 'transformers']), evil, marker)


def test_merge_refuses_an_evil_base_and_an_evil_checkpoint(evil, marker, tmp_path, tiny_model):
    from scripts.merge_lora import main
    adapter = tmp_path / 'checkpoint-1'
    adapter_on(adapter, evil)
    refused(lambda: main(['--adapter', str(adapter)]), evil, marker)
    # a checkpoint folder of its own with a processor that would run code
    (adapter / 'processor_config.json').write_text(json.dumps({'auto_map': {'AutoProcessor': 'p.P'}}))
    refused(lambda: main(['--adapter', str(adapter), '--base_model', str(tiny_model)]), adapter, marker,
            'processor_config.json: auto_map {"AutoProcessor": "p.P"}')
    assert not (tmp_path / 'checkpoint-1-merged').exists()


def test_an_unreachable_hub_id_is_refused(marker):
    """Offline without a cached snapshot the folder cannot be checked: refused rather than loaded unchecked."""
    with pytest.raises(RemoteCodeError, match=r'^no-such-org/no-such-model: cannot fetch its configuration files'):
        check_no_remote_code(['no-such-org/no-such-model'])


def test_merge_never_reads_the_checkpoints_plugins():
    """ms-swift imports args.json's external_plugins only when the command line has none: ours names the TARS plugin."""
    from scripts.merge_lora import export_argv
    from trainer.grpo import PLUGIN
    argv = export_argv('base', 'qwen2_5_omni', 'ckpt', Path('out'))
    assert argv[argv.index('--external_plugins') + 1:] == [str(PLUGIN)]


def test_merge_ignores_plugins_named_by_the_checkpoint(tiny_model, tmp_path):
    """A checkpoint's args.json names a plugin that writes a marker: ms-swift's own export imports it (its
    command line names no plugin), our merge does not and still merges."""
    from peft import LoraConfig, get_peft_model
    from swift.pipelines import export_main
    from transformers import Qwen2_5OmniForConditionalGeneration

    from scripts.merge_lora import merge_lora
    model = Qwen2_5OmniForConditionalGeneration.from_pretrained(str(tiny_model))
    adapter = tmp_path / 'checkpoint-1'
    get_peft_model(model, LoraConfig(r=2, target_modules=r'thinker\.model\.layers\.0\.self_attn\.q_proj')
                   ).save_pretrained(str(adapter))
    marker = tmp_path / 'plugin-marker.txt'
    plugin = tmp_path / 'evil_plugin.py'
    plugin.write_text(f'from pathlib import Path\nPath({str(marker)!r}).write_text("plugin ran")\n')
    (adapter / 'args.json').write_text(json.dumps({'model': str(tiny_model), 'model_type': 'qwen2_5_omni',
                                                   'external_plugins': [str(plugin)]}))
    out = merge_lora(str(adapter), str(tmp_path / 'merged'))
    assert (out / 'model.safetensors').is_file() and not marker.exists()
    with pytest.raises(FileExistsError, match='already exists'):  # stops once its arguments are built
        export_main(['--adapters', str(adapter), '--merge_lora', 'true', '--output_dir', str(out)])
    assert marker.read_text() == 'plugin ran'


def test_training_refuses(evil, marker, tmp_path, tiny_model):
    from trainer import grpo, preference_train
    refused(lambda: grpo.main(['--model', str(evil), '--dataset', str(tmp_path / 'none.jsonl')]), evil, marker)
    refused(lambda: grpo.main(['--model', str(tiny_model), '--ref_model', str(evil)]), evil, marker)
    for kind in ('dpo', 'sft'):
        refused(lambda: preference_train.main([kind, '--model', str(evil)]), evil, marker)


def test_warm_start_refuses(evil, marker, tmp_path):
    from scripts.recipes.embedded import warm_started_model
    refused(lambda: warm_started_model(evil, tmp_path / 'data', tmp_path / 'cache'), evil, marker)


def test_layer_analysis_refuses(evil, marker):
    from scripts.layer_similarity_analysis.models import load_model
    refused(lambda: load_model(str(evil), device='cpu'), evil, marker)


# ---------------------------------------------------------------- the opt-in reaches the loaders

def test_ms_swift_runs_the_folder_code_without_the_guard(evil, marker):
    """ms-swift 4.6 loads every model with trust_remote_code=True (``_get_model_info``): called directly, it
    imports configuration_evil.py. This is why every load path of ours checks first; should a later ms-swift
    stop trusting folders by default, this test fails and docs/design.md §9 can say so."""
    from swift.model import get_model_info_meta
    get_model_info_meta(str(evil), model_type='qwen2_5_omni')
    assert marker.read_text() == 'the model folder ran its own code'


def _opt_in(cmd, marker: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([PYTHON, '-m'] + cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert marker.read_text() == 'the model folder ran its own code', (proc.stdout + proc.stderr)[-4000:]
    return proc


def test_inference_opt_in(evil, marker):
    proc = _opt_in(['infer.answer', '--model', str(evil), '--text', 'Q?', '--backend', 'transformers',
                    '--max_new_tokens', '2', '--trust_remote_code'], marker)
    assert proc.returncode == 0 and '--- text ---' in proc.stdout, proc.stderr[-3000:]


def test_evaluation_opt_in(evil, marker, tmp_path):
    # the dataset does not exist: the model is loaded (and its code run) before the dataset is read
    _opt_in(['eval.qa', '--model', str(evil), '--dataset', f'SET={tmp_path}/none', '--out', str(tmp_path / 'o'),
             '--backend', 'transformers', '--trust_remote_code'], marker)


def test_merge_opt_in(evil, marker, tmp_path):
    adapter = tmp_path / 'checkpoint-1'  # no weights: ms-swift reads the base's config before the adapter
    adapter_on(adapter, evil)
    _opt_in(['scripts.merge_lora', '--adapter', str(adapter), '--trust_remote_code'], marker)


def test_training_opt_in(evil, marker, tmp_path):
    """ms-swift reads the model's config while building its arguments; the run then stops at the missing
    dataset, i.e. after ms-swift's check for unknown flags: ``--trust_remote_code`` was ours, not passed on."""
    missing = tmp_path / 'none.jsonl'
    proc = _opt_in(['trainer.grpo', '--model', str(evil), '--dataset', str(missing), '--output_dir',
                    str(tmp_path / 'out'), '--num_generations', '2', '--per_device_train_batch_size', '2',
                    '--trust_remote_code'], marker)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and last.startswith('ValueError: The local path does not exist') \
        and str(missing) in last, proc.stderr[-3000:]
