"""The miniature's small model: a random-weight ``Qwen2_5OmniForConditionalGeneration`` on the small tokenizer.

The class of the 7B checkpoint (thinker with its Whisper-style audio encoder and projector; the talker and
token2wav built minimal and never run, ``enable_audio_output=False``), built by the same function as the
preset's tiny twin (``scripts.recipes.tiny_models.build_qwen2_5_omni_on_tokenizer``) on the miniature tokenizer
(``scripts.miniature.tokenizer``): ``vocab_size = len(tokenizer)`` (854 for the default world), the Omni token ids
of the config (audio_token_index, ...) are the small tokenizer's (0..21). It loads through the preset
``qwen2_5_omni`` like the real checkpoint (ms-swift model type, template, trainer, eval.qa).

Sizes (MINI_QWEN2_5_OMNI): hidden 192, 4 layers, 6 query heads of size 32 (vLLM's CPU attention kernels take
head sizes of 32 and up) sharing 2 key/value heads; audio encoder d_model 128, 2 layers, 4 heads; audio
features padded to 30 s (the clips last about 10 s; the encoder runs on the valid frames only).

Cached under ``$TARS_CACHE/miniature/model-qwen2_5_omni-<recipe hash>``; the recipe holds the world config and
the tokenizer's vocabulary cap, so a new world or tokenizer gives a new model.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import shutil
from pathlib import Path
from typing import Dict, Optional

from scripts.miniature.tokenizer import DEFAULT_VOCAB_SIZE, tokenizer_dir
from scripts.miniature.whisper_init import WHISPER_TINY_AUDIO, load_whisper_tiny
from scripts.miniature.world import WorldConfig
from scripts.recipes.tiny_models import _cached_build, build_qwen2_5_omni_on_tokenizer

MODEL_TYPE = 'qwen2_5_omni'   # the preset (and ms-swift model type) the model loads through
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json')

# Every number that shapes the weights (the keys of scripts.recipes.tiny_models.TINY_QWEN2_5_OMNI).
MINI_QWEN2_5_OMNI: Dict = {
    'seed': 0,
    'hidden_size': 192,
    'intermediate_size': 512,
    'num_hidden_layers': 4,
    'num_attention_heads': 6,      # head size 32
    'num_key_value_heads': 2,
    'audio_d_model': 128,
    'audio_heads': 4,              # head size 32
    'audio_layers': 2,
    'mrope_section': [4, 6, 6],    # sums to head size / 2
    'audio_chunk_seconds': 30,
}

# The same LLM with Whisper tiny's encoder as its audio tower (scripts.miniature.whisper_init): the real model's
# encoder starts from Whisper's too. 80 mel bins, width 384, 4 layers, 6 heads; one attention window over the
# whole clip (n_window 1500 = 30 s, Whisper's context; the real model attends within 2-s windows).
WHISPER_QWEN2_5_OMNI: Dict = dict(MINI_QWEN2_5_OMNI, audio_d_model=WHISPER_TINY_AUDIO['d_model'],
                                  audio_heads=WHISPER_TINY_AUDIO['encoder_attention_heads'],
                                  audio_layers=WHISPER_TINY_AUDIO['encoder_layers'],
                                  audio_ffn_dim=WHISPER_TINY_AUDIO['encoder_ffn_dim'],
                                  audio_mel_bins=WHISPER_TINY_AUDIO['num_mel_bins'], audio_n_window=1500,
                                  audio_init='whisper_tiny')

# The QUICK setting's model (tests and `--quick`): the tiny twin's sizes.
QUICK_QWEN2_5_OMNI: Dict = dict(MINI_QWEN2_5_OMNI, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=1, audio_d_model=64, audio_heads=2,
                                audio_layers=1)


def model_recipe(shape: Dict, world: WorldConfig, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Dict:
    """The full recipe of a miniature model: its shape, and the world and vocabulary cap of its tokenizer."""
    return dict(shape, world=dataclasses.asdict(world), tokenizer_vocab_size=vocab_size)


def _build(out: Path, recipe: Dict, cache_dir: Optional[Path]) -> None:
    """Copy the world's tokenizer into out, then build and save the model on it."""
    world = WorldConfig(**recipe['world'])
    tokenizer = tokenizer_dir(world, recipe['tokenizer_vocab_size'], cache_dir)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer / name, out / name)
    init = None
    if recipe.get('audio_init') == 'whisper_tiny':
        init = load_whisper_tiny
    elif recipe.get('audio_init') not in (None, 'random'):
        raise ValueError(f"audio_init must be random or whisper_tiny, got {recipe['audio_init']!r}")
    ids = build_qwen2_5_omni_on_tokenizer(out, recipe, init=init)
    if ids['<|endoftext|>'] != 0 or ids['<|AUDIO|>'] != 3:   # the small tokenizer's layout (tokenizer.py)
        raise RuntimeError(f'{tokenizer}: unexpected special-token ids {ids}')


def miniature_model_dir(world: Optional[WorldConfig] = None, shape: Optional[Dict] = None,
                        vocab_size: int = DEFAULT_VOCAB_SIZE, cache_dir: Optional[Path] = None) -> Path:
    """The cached miniature model of ``world`` (default: the default world) with ``shape`` (default
    MINI_QWEN2_5_OMNI), built first when missing: ``<cache>/miniature/model-qwen2_5_omni-<hash>``."""
    recipe = model_recipe(shape or MINI_QWEN2_5_OMNI, world or WorldConfig(), vocab_size)
    return _cached_build(MODEL_TYPE, functools.partial(_build, cache_dir=cache_dir), recipe, cache_dir,
                         subdir='miniature', prefix='model')


def main() -> None:
    """Command line: build (or find) the cached miniature model and print its folder and size."""
    p = argparse.ArgumentParser(description="Build (or find) the miniature world's small Qwen2.5-Omni.")
    p.add_argument('--seed', type=int, default=0, help="the world's seed")
    p.add_argument('--quick', action='store_true', help='the toy-size model of the QUICK setting')
    p.add_argument('--whisper', action='store_true', help="Whisper tiny's encoder as the audio tower "
                   '(WHISPER_QWEN2_5_OMNI)')
    p.add_argument('--cache_dir', default=None)
    a = p.parse_args()
    shape = QUICK_QWEN2_5_OMNI if a.quick else WHISPER_QWEN2_5_OMNI if a.whisper else MINI_QWEN2_5_OMNI
    out = miniature_model_dir(WorldConfig(seed=a.seed), shape,
                              cache_dir=Path(a.cache_dir) if a.cache_dir else None)
    size = sum(f.stat().st_size for f in out.glob('*.safetensors'))
    print(f'{out} ({size / 2**20:.1f} MiB of weights)')


if __name__ == '__main__':
    main()
