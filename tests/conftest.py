"""Shared fixtures: the tiny Qwen2.5-Omni twin and a tiny real speech QA set, built once per session.

Built under ``cache/`` of the repo (or ``$TARS_CACHE``) so that reruns reuse them.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


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
