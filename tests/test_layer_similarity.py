"""Layer-similarity analysis (docs/original.md §8): the per-layer statistics on constructed hidden states,
the inputs, the model loading (LoRA), and the measurement end to end on the tiny preset."""
import json
import math

import numpy as np
import pytest
import torch

from scripts.layer_similarity_analysis import aggregate, measure, sensitivity
from scripts.layer_similarity_analysis.inputs import SkipSample, collate, processor_messages, render, render_pair
from scripts.layer_similarity_analysis.outputs import new_run_dir, read_stats, short_name
from scripts.layer_similarity_analysis.plots import load_table
from scripts.layer_similarity_analysis.responses import load_text_responses
from scripts.layer_similarity_analysis.stats import RunningStats, pair_similarities, summary, t_interval

RESPONSE = '<think>Paris is in France.</think><answer>The answer is B.</answer>'


# ---------------------------------------------------------------- statistics on constructed states
def _mask(lengths, total):
    """Left-padded response masks: row i has its lengths[i] response tokens at the end."""
    mask = torch.zeros(len(lengths), total, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, total - n:] = True
    return mask


def test_identical_states_give_one():
    torch.manual_seed(0)
    a = torch.randn(3, 6, 8)
    token, pooled = pair_similarities(a, a.clone(), _mask([6, 4, 1], 6))
    assert torch.allclose(token, torch.ones(3), atol=1e-6)
    assert torch.allclose(pooled, torch.ones(3), atol=1e-6)


def test_a_known_rotation_gives_its_cosine():
    # rotate every coordinate pair (x_2k, x_2k+1) by 60 degrees: cos(v, Rv) = cos 60 = 0.5 for every v,
    # and mean(Rv) = R mean(v), so the pooled measure is 0.5 too
    theta = math.pi / 3
    block = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    rotation = torch.block_diag(block, block, block)  # D = 6
    torch.manual_seed(1)
    a = torch.randn(2, 5, 6)
    token, pooled = pair_similarities(a, a @ rotation.T, _mask([5, 3], 5))
    assert torch.allclose(token, torch.full((2,), 0.5), atol=1e-6)
    assert torch.allclose(pooled, torch.full((2,), 0.5), atol=1e-6)


def test_token_and_pooled_measures_differ_and_padding_is_ignored():
    # text tokens e1, e2; speech tokens e2, e1: each token pair is orthogonal (token measure 0) while the
    # means are both (0.5, 0.5) (pooled measure 1). Position 0 is padding with opposite vectors.
    a = torch.tensor([[[5.0, 5.0], [1.0, 0.0], [0.0, 1.0]]])
    b = torch.tensor([[[-5.0, -5.0], [0.0, 1.0], [1.0, 0.0]]])
    token, pooled = pair_similarities(a, b, _mask([2], 3))
    assert token.item() == pytest.approx(0.0, abs=1e-7)
    assert pooled.item() == pytest.approx(1.0, abs=1e-6)


def test_t_interval_against_a_hand_computed_one():
    # values 0.9, 0.8, 1.0: mean 0.9, sample sd sqrt((0 + 0.01 + 0.01) / 2) = 0.1, n = 3,
    # t_{0.975, 2} = 4.302652729749462 (t table: 4.303): half width 4.3026527 * 0.1 / sqrt(3) = 0.2484138
    acc = RunningStats(2)
    acc.add(torch.tensor([[0.9], [0.5]], dtype=torch.float64))  # batches of any size: 1 then 2 samples
    acc.add(torch.tensor([[0.8, 1.0], [0.5, 0.5]], dtype=torch.float64))
    assert acc.n == 3
    assert acc.mean.tolist() == pytest.approx([0.9, 0.5], abs=1e-12)
    assert acc.std().tolist() == pytest.approx([0.1, 0.0], abs=1e-12)
    lower, upper = t_interval(acc.mean, acc.std(), acc.n)
    assert lower.tolist() == pytest.approx([0.9 - 0.2484138, 0.5], abs=1e-6)
    assert upper.tolist() == pytest.approx([0.9 + 0.2484138, 0.5], abs=1e-6)


def test_summary_has_the_originals_keys_and_one_sample_gives_the_point_interval():
    # one sample: the original's interval is (mean, mean); the standard deviation is undefined (None)
    token, pooled = RunningStats(3), RunningStats(3)
    token.add(torch.tensor([[1.0], [0.9], [0.8]]))
    pooled.add(torch.tensor([[1.0], [0.95], [0.9]]))
    s = summary(token, pooled)
    assert s['layers'] == [0, 1, 2] and s['n_samples'] == 1
    assert s['means'] == pytest.approx([1.0, 0.9, 0.8]) and s['pooled_means'] == pytest.approx([1.0, 0.95, 0.9])
    assert s['ci_lower'] == s['means'] and s['ci_upper'] == s['means']
    assert s['pooled_ci_lower'] == s['pooled_means'] and s['pooled_ci_upper'] == s['pooled_means']
    assert s['stds'] == [None, None, None] and s['pooled_stds'] == [None, None, None]  # JSON has no NaN
    assert s['n_per_layer'] == [1, 1, 1] and s['nan_dropped'] == [0, 0, 0]
    json.dumps(s, allow_nan=False)


def test_nan_values_are_dropped_per_layer_and_counted():
    nan = math.nan
    # four samples in two batches; per layer after dropping NaN:
    #   layer 0: 0.9, 0.8, 1.0 -> mean 0.9, sd 0.1, n 3, half width t_{0.975,2} 4.3026527 * 0.1 / sqrt 3 = 0.2484138
    #   layer 1: 0.5, 0.7      -> mean 0.6, sd sqrt(0.02) = 0.1414214, n 2,
    #                             half width t_{0.975,1} 12.7062047 * 0.1414214 / sqrt 2 = 1.2706205
    #   layer 2: 0.75          -> (0.75, 0.75), sd undefined
    #   layer 3: nothing       -> no mean, no interval
    values = torch.tensor([[0.9, nan, 0.8, 1.0],
                           [0.5, 0.7, nan, nan],
                           [nan, 0.75, nan, nan],
                           [nan, nan, nan, nan]], dtype=torch.float64)
    token, pooled = RunningStats(4), RunningStats(4)
    token.add(values[:, :2])
    token.add(values[:, 2:])
    pooled.add(torch.full((4, 4), 0.5, dtype=torch.float64))
    assert token.n == 4 and token.count.tolist() == [3, 2, 1, 0] and token.dropped.tolist() == [1, 2, 3, 4]
    s = summary(token, pooled)
    assert s['n_samples'] == 4
    assert s['n_per_layer'] == [3, 2, 1, 0] and s['nan_dropped'] == [1, 2, 3, 4]
    assert s['means'][:3] == pytest.approx([0.9, 0.6, 0.75], abs=1e-12) and s['means'][3] is None
    assert s['stds'][:2] == pytest.approx([0.1, 0.1414214], abs=1e-7) and s['stds'][2:] == [None, None]
    assert s['ci_lower'][:3] == pytest.approx([0.9 - 0.2484138, 0.6 - 1.2706205, 0.75], abs=1e-6)
    assert s['ci_upper'][:3] == pytest.approx([0.9 + 0.2484138, 0.6 + 1.2706205, 0.75], abs=1e-6)
    assert s['ci_lower'][3] is None and s['ci_upper'][3] is None
    # a NaN in one layer leaves the other layers' statistics as if the sample were there
    assert s['pooled_n_per_layer'] == [4, 4, 4, 4] and s['pooled_nan_dropped'] == [0, 0, 0, 0]
    assert s['pooled_ci_lower'] == pytest.approx([0.5] * 4) and s['pooled_ci_upper'] == pytest.approx([0.5] * 4)
    json.dumps(s, allow_nan=False)


def test_streaming_with_nan_equals_one_batch():
    torch.manual_seed(3)
    values = torch.rand(5, 40, dtype=torch.float64)
    values[torch.rand(5, 40) < 0.2] = math.nan
    whole, parts = RunningStats(5), RunningStats(5)
    whole.add(values)
    for chunk in values.split(7, dim=1):
        parts.add(chunk)
    assert torch.equal(whole.count, parts.count) and torch.equal(whole.dropped, parts.dropped)
    expected_mean = torch.tensor([row[~row.isnan()].mean().item() for row in values], dtype=torch.float64)
    expected_std = torch.tensor([row[~row.isnan()].std().item() for row in values], dtype=torch.float64)
    assert torch.allclose(parts.means(), expected_mean, atol=1e-12)
    assert torch.allclose(parts.std(), expected_std, atol=1e-12)


# ---------------------------------------------------------------- files
def test_text_responses_files(tmp_path):
    jsonl = tmp_path / 'r.jsonl'
    jsonl.write_text('{"key": "a", "output": "x"}\n\n{"key": "b", "llm_output": "y", "correct": false}\n')
    assert load_text_responses(str(jsonl)) == {'a': 'x', 'b': 'y'}
    as_dict = tmp_path / 'r.json'
    as_dict.write_text(json.dumps({'a': {'llm_output': 'x'}, 'b': 'y'}))
    assert load_text_responses(str(as_dict)) == {'a': 'x', 'b': 'y'}
    run_dir = tmp_path / 'text_systhink'  # an eval.qa run directory; a failed item has output null
    run_dir.mkdir()
    (run_dir / 'results.jsonl').write_text('{"key": "a", "mode": "text", "output": "x"}\n'
                                           '{"key": "b", "mode": "text", "output": null, "error": "audio"}\n')
    assert load_text_responses(str(run_dir)) == {'a': 'x'}
    bad = tmp_path / 'bad.jsonl'
    bad.write_text('{"key": "a", "text": "x"}\n')
    with pytest.raises(ValueError, match='output or llm_output'):
        load_text_responses(str(bad))


def test_run_directories_are_named_and_never_reused(tmp_path):
    assert short_name('/data/sets/mmsu/hf/') == 'mmsu-hf'
    assert short_name('yuantuo666/MMLU_FULL') == 'yuantuo666-MMLU_FULL'
    first = new_run_dir(tmp_path, 'mmsu-hf', 't2-checkpoint-15')
    (first / 'layer_stats.json').write_text('{}')
    second = new_run_dir(tmp_path, 'mmsu-hf', 't2-checkpoint-15')
    assert first.name == 'mmsu-hf--t2-checkpoint-15' and second.name == 'mmsu-hf--t2-checkpoint-15-2'


def test_the_papers_sensitivity_table(tmp_path):
    rows = load_table(str(sensitivity.PAPER_TABLE))
    assert [(r[0], r[1]) for r in rows] == [('Shallow', 72.62), ('Middle', 75.48), ('Deep', 73.31),
                                            ('Last', 72.34), ('All', 75.83)]
    paths = sensitivity.main(['--out', str(tmp_path / 'sens')])
    assert all(p.stat().st_size > 0 for p in paths) and {p.suffix for p in paths} == {'.png', '.pdf'}


# ---------------------------------------------------------------- inputs on the real processor
@pytest.fixture(scope='module')
def processor(tiny_model):
    from transformers import AutoProcessor
    return AutoProcessor.from_pretrained(str(tiny_model))


def test_audio_tag_becomes_an_audio_part():
    msgs = [{'role': 'system', 'content': 'S'}, {'role': 'user', 'content': '<audio>\nAnswer.'}]
    assert processor_messages(msgs) == [{'role': 'system', 'content': [{'type': 'text', 'text': 'S'}]},
                                        {'role': 'user', 'content': [{'type': 'audio'},
                                                                     {'type': 'text', 'text': '\nAnswer.'}]}]


def test_response_tokens_are_located_and_aligned_in_a_left_padded_batch(processor):
    tok = processor.tokenizer
    pair = render_pair(processor, 'systhink', 'Which city is the capital of France?\nA: Rome\nB: Paris', RESPONSE)
    assert pair['text'].response_ids == tok(RESPONSE, add_special_tokens=False)['input_ids']
    assert pair['text'].tail == 2  # <|im_end|> and the newline the template adds
    assert '<|audio_bos|><|AUDIO|><|audio_eos|>' in pair['speech'].text
    short = render_pair(processor, 'systhink', 'Is 2 prime?\nA: yes\nB: no', 'Yes.')
    wav = np.zeros(16000, dtype=np.float32)
    inputs, mask = collate(processor, [pair, short], [wav, wav])
    ids = inputs['input_ids']
    assert ids.shape[0] == 4 and mask.shape == (2, ids.shape[1])
    for i, p in enumerate((pair, short)):
        positions = mask[i].nonzero().flatten()
        for row in (i, 2 + i):  # the text row and the speech row hold the response at the same indices
            assert ids[row, positions].tolist() == p['text'].response_ids
    assert int((ids[2:] == tok.convert_tokens_to_ids('<|AUDIO|>')).sum()) == 2 * 25  # 1 s = 25 audio tokens


def test_unusable_responses_are_skipped_with_a_reason(processor):
    with pytest.raises(SkipSample, match='empty response'):
        render(processor, 'systhink', 'text', 'Q?', '')


# ---------------------------------------------------------------- model loading, measurement
@pytest.fixture(scope='module')
def lora_checkpoint(tiny_model, tmp_path_factory):
    """A LoRA adapter on the full Qwen2_5OmniForConditionalGeneration module names, as ms-swift saves it
    (``thinker.model.layers.N...``), with non-zero weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5OmniForConditionalGeneration
    model = Qwen2_5OmniForConditionalGeneration.from_pretrained(str(tiny_model))
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                        target_modules=r'^(thinker\.model(?=\.).*\.(q_proj|v_proj|down_proj))$')
    torch.manual_seed(3)
    peft_model = get_peft_model(model, config)
    out = tmp_path_factory.mktemp('lora') / 'checkpoint-3'
    peft_model.save_pretrained(str(out))
    merged = peft_model.merge_and_unload().thinker.model.layers[1].self_attn.q_proj.weight.detach().clone()
    return out, merged


def test_a_lora_checkpoint_is_applied_to_the_thinker(lora_checkpoint, tiny_model, tmp_path):
    import shutil

    from scripts.layer_similarity_analysis.models import load_model
    path, expected = lora_checkpoint
    loaded = load_model(str(path))  # base from adapter_config.json
    assert loaded.base_model == str(tiny_model)
    assert torch.allclose(loaded.thinker.model.layers[1].self_attn.q_proj.weight, expected, atol=1e-6)
    moved = tmp_path / 'checkpoint-3'
    shutil.copytree(path, moved)
    config = json.loads((moved / 'adapter_config.json').read_text())
    config['base_model_name_or_path'] = str(tmp_path / 'gone')
    (moved / 'adapter_config.json').write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match='--base_model'):
        load_model(str(moved))
    assert load_model(str(moved), base_model=str(tiny_model)).base_model == str(tiny_model)


def test_hooks_match_all_hidden_states_for_any_batch_size(tiny_model, tiny_speech_set):
    """The streaming measurement equals the original's way (every hidden state, one sample at a time)."""
    from scripts.layer_similarity_analysis.analysis import measure as run_measure
    from scripts.layer_similarity_analysis.models import load_model
    from trainer.schema import load_audio, load_hf_dataset
    loaded = load_model(str(tiny_model))
    rows = list(load_hf_dataset(str(tiny_speech_set), 'train').select(range(3)))
    responses = [RESPONSE, 'B. Because of the second option.', None]
    per_sample = []
    for row, response in zip(rows[:2], responses, strict=False):
        pair = render_pair(loaded.processor, 'systhink', row['prompt_for_tts'], response)
        r, tail = len(pair['text'].response_ids), pair['text'].tail
        with torch.no_grad():
            text = loaded.thinker(**loaded.processor(text=[pair['text'].text], return_tensors='pt'),
                                  output_hidden_states=True).hidden_states
            speech = loaded.thinker(**loaded.processor(text=[pair['speech'].text], audio=[load_audio(row['audio'])],
                                                       return_tensors='pt'), output_hidden_states=True).hidden_states
        window = slice(-tail - r, -tail)
        per_sample.append([torch.nn.functional.cosine_similarity(text[l][0, window], speech[l][0, window],
                                                                 dim=-1).mean().item() for l in range(1, len(text))])
    expected = torch.tensor(per_sample).mean(0).tolist()
    for batch_size in (1, 3):
        result = run_measure(loaded.thinker, loaded.processor, rows, responses, batch_size=batch_size)
        assert result['n_samples'] == 2 and result['skipped'] == [{'key': rows[2]['key'],
                                                                   'reason': 'no text response for this key'}]
        assert result['means'] == pytest.approx(expected, abs=1e-5)


def test_generation_without_the_prompts_full_logits_is_the_same(tiny_model, tiny_speech_set):
    from scripts.layer_similarity_analysis.models import load_model
    from scripts.layer_similarity_analysis.responses import generate_text_responses
    from trainer.schema import load_hf_dataset
    loaded = load_model(str(tiny_model))
    rows = list(load_hf_dataset(str(tiny_speech_set), 'train').select(range(2)))
    with_hook = generate_text_responses(loaded.thinker, loaded.processor, rows, 'systhink', 6)
    assert not loaded.thinker.get_output_embeddings()._forward_pre_hooks  # removed after generation
    from trainer.prompts import build_messages
    chats = [processor_messages(build_messages('systhink', 'text', r['prompt_for_tts'])) for r in rows]
    prompts = [loaded.processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]
    inputs = loaded.processor(text=prompts, return_tensors='pt', padding=True, padding_side='left')
    with torch.no_grad():
        out = loaded.thinker.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert with_hook == loaded.processor.batch_decode(out[:, inputs['input_ids'].shape[1]:], skip_special_tokens=True)


def test_end_to_end_on_the_tiny_preset(tiny_model, tiny_speech_set, lora_checkpoint, tmp_path):
    """Two runs (the tiny base with generated responses; a LoRA checkpoint with its text-mode answers as
    eval.qa stores them, or from a plain JSONL) on two datasets, then the comparison figure."""
    import datasets

    from trainer.engine import resolve_model
    from trainer.schema import load_hf_dataset
    full = load_hf_dataset(str(tiny_speech_set), 'train')
    second = tmp_path / 'second_set'
    datasets.DatasetDict({'train': full.select(range(4, 8))}).save_to_disk(str(second))
    lines = ''.join(json.dumps({'key': r['key'], 'mode': 'text', 'output': RESPONSE}) + '\n' for r in full)
    eval_run = tmp_path / 'eval' / resolve_model(str(lora_checkpoint[0])).name / 'D1' / 'text_systhink'
    eval_run.mkdir(parents=True)
    (eval_run / 'results.jsonl').write_text(lines)
    plain = tmp_path / 'lora_text_mode.jsonl'
    plain.write_text(lines.replace('"output"', '"llm_output"'))

    root = tmp_path / 'out'
    common = ['--split', 'train', '--max_samples', '4', '--batch_size', '3', '--output_root', str(root)]
    lora_sources = {'D1': ['--eval_dir', str(tmp_path / 'eval'), '--eval_dataset', 'D1'],
                    'D2': ['--text_responses', str(plain)]}
    runs = []
    for dataset_label, dataset in (('D1', tiny_speech_set), ('D2', second)):
        base_dir = measure.main(['--model', str(tiny_model), '--dataset', str(dataset), '--max_new_tokens', '8',
                                 '--dataset_name', dataset_label, *common])
        lora_dir = measure.main(['--model', str(lora_checkpoint[0]), '--dataset', str(dataset),
                                 '--dataset_name', dataset_label, *lora_sources[dataset_label], *common])
        runs += [('tiny base', dataset_label, base_dir), ('LoRA', dataset_label, lora_dir)]
    assert len({r[2] for r in runs}) == 4
    for _, _, run_dir in runs:
        stats = read_stats(str(run_dir))
        assert stats['layers'] == [0, 1, 2, 3]  # one entry per layer of the 4-layer twin
        assert stats['n_samples'] + stats['n_skipped'] == 4 and stats['n_samples'] >= 2
        for key in ('means', 'ci_lower', 'ci_upper', 'pooled_means', 'pooled_ci_lower', 'pooled_ci_upper'):
            assert len(stats[key]) == 4 and all(v is not None and math.isfinite(v) for v in stats[key])
        assert all(-1.0 - 1e-6 <= v <= 1.0 + 1e-6 for v in stats['means'])
        for ext in ('png', 'pdf'):
            assert (run_dir / f'layer_similarity.{ext}').stat().st_size > 0
    lora_d1 = read_stats(str(runs[1][2]))
    assert lora_d1['base_model'] == str(tiny_model) and lora_d1['n_samples'] == 4
    assert lora_d1['text_responses'] == str(eval_run / 'results.jsonl')

    argv = [a for label, ds, path in runs for a in ('--run', label, ds, str(path))]
    paths, drawn = aggregate.main(argv + ['--out', str(tmp_path / 'figs' / 'combined')])
    assert drawn == {'D1': ['tiny base', 'LoRA'], 'D2': ['tiny base', 'LoRA']}
    assert all(p.stat().st_size > 0 for p in paths) and {p.suffix for p in paths} == {'.png', '.pdf'}
