"""The miniature's small model and stage 1 at toy size (scripts.miniature.model, scripts.miniature.stages)."""
from __future__ import annotations

import json

import pytest


def test_warmstart_row_uses_the_thinking_column():
    from trainer.data import warmstart_row
    row = {'prompt_for_tts': 'Q?\nA. 1\nB. 2\nC. 3\nD. 4', 'answer_index': 2, 'thinking': '3 plus 4 is 7.'}
    text = warmstart_row(row, 'systhink')
    assert text['messages'][-1] == {'role': 'assistant',
                                    'content': '<think>3 plus 4 is 7.</think><answer>The answer is C.</answer>'}
    assert 'audios' not in text and text['messages'][1]['content'].startswith('Q?\nA. 1')
    speech = warmstart_row(row, 'systhink', '/clips/a.wav')
    assert speech['audios'] == ['/clips/a.wav'] and speech['messages'][1]['content'].startswith('<audio>')
    assert speech['messages'][-1] == text['messages'][-1]
    direct = warmstart_row(row, 'systhink', '/clips/a.wav', think=False)   # stage 2's direct speech answers
    assert direct['messages'][-1]['content'] == '<think></think><answer>The answer is C.</answer>'
    assert direct['messages'][:-1] == speech['messages'][:-1]
    generic = warmstart_row({'prompt_for_tts': 'Q?', 'answer_index': 0, 'subject': 'law'}, 'systhink')
    assert generic['messages'][-1]['content'] == ('<think>The question is about law. Let me check each option.'
                                                  '</think><answer>The answer is A.</answer>')


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_quick_model_and_stage1_end_to_end(tmp_path):
    """The QUICK model builds on the small tokenizer with its ids, two SFT steps of stage 1 change the LLM's
    weights (not the frozen audio encoder's) and write a checkpoint; a rerun finds it instead of training."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    from scripts.miniature import stages

    base = stages.model_dir(stages.QUICK, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    config = AutoConfig.from_pretrained(str(base))
    assert config.model_type == 'qwen2_5_omni'
    thinker = config.thinker_config
    assert thinker.text_config.vocab_size == len(tokenizer) < 1000
    assert (thinker.audio_token_index, thinker.audio_start_token_id, thinker.audio_end_token_id) == (3, 4, 5)
    assert tokenizer.convert_ids_to_tokens([3, 4, 5]) == ['<|AUDIO|>', '<|audio_bos|>', '<|audio_eos|>']

    out = stages.stage1(stages.QUICK, tmp_path)
    info = json.loads((out / 'warm_start.json').read_text())
    assert info['recipe']['steps'] == 2 and info['modality'] == 'text'
    before, after = load_file(str(base / 'model.safetensors')), load_file(str(out / 'model.safetensors'))
    llm = 'thinker.model.layers.0.self_attn.q_proj.weight'
    assert not torch.equal(before[llm], after[llm])
    audio = 'thinker.audio_tower.layers.0.fc1.weight'
    assert torch.equal(before[audio], after[audio])   # frozen in stage 1
    mtime = (out / 'model.safetensors').stat().st_mtime
    assert stages.stage1(stages.QUICK, tmp_path) == out and (out / 'model.safetensors').stat().st_mtime == mtime
    # eval.qa's text mode reads a text-only set (no audio column)
    text_set = stages.world_dataset(stages.QUICK, False, tmp_path)
    assert 'audio' not in json.loads((text_set / 'test' / 'dataset_info.json').read_text())['features']
    accuracy = stages.evaluate(out, text_set, ['text'], stages.QUICK, tmp_path)
    assert set(accuracy) == {'text'} and 0.0 <= accuracy['text'] <= 1.0
    results = list((tmp_path / 'miniature' / 'eval').glob('*/miniature/text_systhink/results.jsonl'))
    assert len(results) == 1 and len(results[0].read_text().splitlines()) == stages.QUICK.eval_items
    by_template = stages.accuracy_by_template(out, 'text', tmp_path)
    assert set(by_template) <= {'arithmetic', 'comparison', 'knowledge'} and by_template
