"""Shared fixtures: the tiny Qwen2.5-Omni twin and a tiny real speech QA set, built once per session, and
the test tiers (docs/testing.md).

Built under ``cache/`` of the repo (or ``$TARS_CACHE``) so that reruns reuse them.

Tiers (docs/testing.md): a test is ``slow`` when it starts a process, trains, loads a model (a tiny twin,
Whisper), synthesises speech or builds a tokenizer. Test files mark them; a test that takes one of
``SLOW_FIXTURES`` is marked here. ``bash test.sh --quick`` runs
the rest (``-m 'not slow and not vllm_cpu'``, with ``TARS_TEST_TIER=quick``); in that tier starting a
process raises, and the test fails naming the command, so the quick tier stays what it says.
"""
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parent.parent

# fixtures that load a model or build a speech set with espeak: a test taking one (directly or through
# another fixture) is slow
SLOW_FIXTURES = frozenset({'tiny_model', 'tiny_adapter', 'tiny_speech_set', 'grpo_jsonl'})
QUICK = os.environ.get('TARS_TEST_TIER') == 'quick'
# ctypes.util.find_library (soundfile, torchaudio at import) asks ldconfig / the C compiler: not a test's process
_LIBRARY_LOOKUPS = ('ldconfig', 'gcc', 'cc', 'ld', 'objdump')
_started: List[str] = []


def _audit(event: str, args: tuple) -> None:
    """In the quick tier, refuse to start a process (the test then fails where it starts one)."""
    if event == 'subprocess.Popen':
        argv = args[1] if isinstance(args[1], (list, tuple)) else [args[1] if args[1] is not None else args[0]]
        argv = [os.fsdecode(a) if isinstance(a, (str, bytes)) else str(a) for a in argv]
        if not argv or Path(argv[0]).name in _LIBRARY_LOOKUPS:
            return
        command = ' '.join(argv)[:200]
    elif event in ('os.system', 'os.posix_spawn', 'os.spawn', 'os.exec'):
        command = f'{event} {str(args[0])[:200]}'
    else:
        return
    _started.append(command)
    raise RuntimeError(f'the quick tier starts no process ({command}): mark the test slow')


if QUICK:
    sys.addaudithook(_audit)  # audit hooks cannot be removed: only in the quick tier's own pytest process


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, 'fixturenames', ())):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _started.clear()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    if QUICK and _started:
        started, _started[:] = list(_started), []
        pytest.fail(f'{item.nodeid} starts a process in the quick tier ({started[0]}): mark it slow')


@pytest.fixture(scope='session')
def cache_dir() -> Path:
    from scripts.recipes.tiny_models import default_cache_dir
    return default_cache_dir()


@pytest.fixture(scope='session')
def tiny_model(cache_dir) -> Path:
    from scripts.recipes.tiny_models import tiny_model_dir
    return tiny_model_dir('qwen2_5_omni', cache_dir)


@pytest.fixture(scope='session')
def tiny_speech_set(tmp_path_factory) -> Path:
    """8 MMLU questions with espeak speech (short ones), saved as an hf_format DatasetDict."""
    from scripts.dataset_building.mmlu import build_speech_set
    from scripts.dataset_building.tts import EspeakTTS
    out = tmp_path_factory.mktemp('speech_set')
    build_speech_set(out, n_rows=8, seed=1, max_chars=100, tts=EspeakTTS(rate=260))
    return out / 'hf'


@pytest.fixture(scope='session')
def grpo_jsonl(tiny_speech_set, tmp_path_factory) -> Path:
    from trainer.data import prepare_grpo_dataset
    return prepare_grpo_dataset(str(tiny_speech_set), tmp_path_factory.mktemp('grpo_data'))


@pytest.fixture(scope='session')
def tiny_adapter(tiny_model, tmp_path_factory):
    """A random (non-zero) LoRA on the tiny model's LLM, saved the way peft/ms-swift save adapters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5OmniForConditionalGeneration
    torch.manual_seed(0)
    model = Qwen2_5OmniForConditionalGeneration.from_pretrained(str(tiny_model))
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                        target_modules=r'thinker\.model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)')
    peft_model = get_peft_model(model, config)
    out = tmp_path_factory.mktemp('adapter') / 'checkpoint-1'
    peft_model.save_pretrained(str(out))
    return out


def run(cmd, env=None, timeout=900, cwd=REPO):
    """Run a command from the repo root; fail the test with its output's tail when it fails."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        raise AssertionError(f'command failed ({proc.returncode}): {" ".join(map(str, cmd))}\n{tail}')
    return proc


PYTHON = sys.executable
