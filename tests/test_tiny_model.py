"""The tiny Qwen2.5-Omni twin: real tokenizer layout, real processor, audio tokens that match the features."""
import json

import numpy as np
import pytest
import torch

from scripts.recipes.tiny_models import TINY_QWEN2_5_OMNI, _recipe_hash, tiny_model_dir

pytestmark = pytest.mark.slow  # every test here builds or loads the tiny twin (tests/conftest.py: tiers)


def test_tokenizer_has_the_real_checkpoints_special_token_ids(tiny_model):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    assert tok.convert_tokens_to_ids('<|AUDIO|>') == 151646
    assert tok.convert_tokens_to_ids('<|im_end|>') == 151645
    assert len(tok) == 151665
    # <think> is plain text in Qwen2.5-Omni: it survives skip_special_tokens, as the format reward needs
    ids = tok('<think>x</think><answer>The answer is B.</answer>')['input_ids']
    assert len(ids) > 5 and all(i < 151643 for i in ids)
    assert tok.decode(ids, skip_special_tokens=True) == '<think>x</think><answer>The answer is B.</answer>'


def test_generation_config_suppresses_special_tokens_but_the_end_tokens(tiny_model):
    gen = json.loads((tiny_model / 'generation_config.json').read_text())
    assert 151646 in gen['suppress_tokens'] and 151645 not in gen['suppress_tokens']
    assert sorted(gen['eos_token_id']) == [151643, 151645]


def test_forward_with_audio_has_one_token_per_audio_frame_group(tiny_model):
    from transformers import AutoProcessor, Qwen2_5OmniThinkerForConditionalGeneration
    processor = AutoProcessor.from_pretrained(str(tiny_model))
    model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(str(tiny_model)).eval()
    wav = (0.1 * np.sin(np.arange(16000 * 3) / 16000 * 2 * np.pi * 440)).astype(np.float32)  # 3 s
    inputs = processor(text=['<|audio_bos|><|AUDIO|><|audio_eos|>What is said?'], audio=[wav], return_tensors='pt')
    n_audio_tokens = int((inputs['input_ids'] == 151646).sum())
    assert n_audio_tokens == 75  # 3 s x 100 frames/s, /2 by the conv stride, /2 by pooling
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    assert out.logits.shape == (1, inputs['input_ids'].shape[1], 151665)
    assert len(out.hidden_states) == TINY_QWEN2_5_OMNI['num_hidden_layers'] + 1
    assert torch.isfinite(out.logits).all()


def test_build_is_cached_and_keyed_by_the_recipe(tiny_model, cache_dir):
    assert tiny_model_dir('qwen2_5_omni', cache_dir) == tiny_model  # no rebuild
    assert tiny_model.name.endswith(_recipe_hash(TINY_QWEN2_5_OMNI))
    assert _recipe_hash(dict(TINY_QWEN2_5_OMNI, num_hidden_layers=5)) != _recipe_hash(TINY_QWEN2_5_OMNI)
    with pytest.raises(ValueError, match='no tiny twin'):
        tiny_model_dir('no_such_model_type', cache_dir)


def test_twins_served_by_vllm_have_the_real_checkpoints_weight_names_and_head_size(cache_dir):
    """vLLM loads checkpoints by the real weight names, and its CPU attention needs head sizes of 32 and up."""
    from safetensors import safe_open
    from scripts.recipes.tiny_models import tiny_model_dir
    audio = tiny_model_dir('qwen2_audio', cache_dir)
    with safe_open(str(audio / 'model.safetensors'), 'pt') as f:
        keys = set(f.keys())
    assert 'language_model.model.layers.0.self_attn.q_proj.weight' in keys and 'language_model.lm_head.weight' in keys
    assert not any(k.startswith('language_model.model.model.') for k in keys)
    omni = json.loads((tiny_model_dir('qwen2_5_omni', cache_dir) / 'config.json').read_text())['thinker_config']
    text = omni['text_config']
    assert text['hidden_size'] // text['num_attention_heads'] == 32
    config = json.loads((audio / 'config.json').read_text())['text_config']
    assert config['hidden_size'] // config['num_attention_heads'] == 32
