"""Fidelity to the original's training settings (issue 10): ms-swift's advantage flags mapped onto the
per-modality advantages or refused, the importance-sampling correction for vLLM rollouts, the pooled
states of the representation reward (dropout off, exactly the generated tokens) for every preset."""
from __future__ import annotations

import json
from collections import defaultdict
from contextlib import nullcontext

import pytest
import torch

from tests.conftest import PYTHON, run
from trainer import config as tars_config
from trainer import tars_math as tm

PRESETS = ['qwen2_5_omni', 'qwen2_audio', 'phi4_multimodal', 'qwen3_omni_moe']


# ---- advantage flags ----

def test_scale_rewards_maps_onto_per_modality_std_and_refuses_the_rest():
    assert tars_config.std_scaling('none') is False
    assert tars_config.std_scaling('group') is True
    for value in ('batch', 'gdpo'):
        with pytest.raises(ValueError, match=f'--scale_rewards {value} is not supported'):
            tars_config.std_scaling(value)
    with pytest.raises(ValueError, match='--advantage_estimator rloo'):
        tars_config.std_scaling('none', advantage_estimator='rloo')
    with pytest.raises(ValueError, match='--kl_in_reward true'):
        tars_config.std_scaling('none', kl_in_reward=True, beta=0.04)
    assert tars_config.std_scaling('none', kl_in_reward=True, beta=0.0) is False  # no KL term: a no-op


def test_reward_std_stats_hand_computed():
    # group 0: {1, 3} -> population std 1; group 1: {2, 2} -> 0; group 2: {NaN, 5} -> {5} -> 0
    rewards = torch.tensor([1.0, 3.0, 2.0, 2.0, float('nan'), 5.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    std, zero = tm.reward_std_stats(rewards, groups)
    assert std == pytest.approx(1 / 3)
    assert zero == pytest.approx(2 / 3)
    assert tm.reward_std_stats(torch.tensor([float('nan')]), torch.tensor([0])) == (0.0, 1.0)


PARSE = """
import json, sys
from swift.arguments import RLHFArguments
from swift.utils import parse_args
from trainer.grpo import build_swift_argv
args, remaining = parse_args(RLHFArguments, build_swift_argv(sys.argv[1:], plugin=False))
t = args.training_args
print(json.dumps({'remaining': remaining, 'mode': t.rollout_importance_sampling_mode,
                  'threshold': t.rollout_importance_sampling_threshold, 'scale_rewards': t.scale_rewards}))
"""


def test_paper_defaults_parse_into_ms_swift_arguments(tiny_model, tmp_path):
    """The flags trainer.grpo hands to ms-swift, read back from ms-swift's own parsed arguments: vLLM rollouts
    get token-level truncated importance sampling capped at 2.0 (the original's correction), and the
    advantages are not std-scaled. (A subprocess: ms-swift's argument parsing sets up a process group.)"""
    from trainer.grpo import build_swift_argv
    common = ['--model', str(tiny_model), '--model_type', 'qwen2_5_omni', '--dataset', 'unused.jsonl',
              '--check_model', 'false', '--output_dir', str(tmp_path / 'out'), '--per_device_train_batch_size', '8',
              '--torch_dtype', 'float32', '--fp16', 'false', '--bf16', 'false']
    proc = run([PYTHON, '-c', PARSE, *common, '--use_vllm', 'true', '--vllm_mode', 'colocate'],
               env={'MASTER_PORT': '29651'})
    parsed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert parsed == {'remaining': [], 'mode': 'token_truncate', 'threshold': 2.0, 'scale_rewards': 'none'}
    # no vLLM: the rollouts are the policy's own samples, nothing to correct
    argv = build_swift_argv(common + ['--use_vllm', 'false'], plugin=False)
    assert '--rollout_importance_sampling_mode' not in argv
    # a user's own choice wins
    argv = build_swift_argv(common + ['--use_vllm', 'true', '--rollout_importance_sampling_mode', 'token_mask'],
                            plugin=False)
    assert argv.count('--rollout_importance_sampling_mode') == 1


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_ms_swift_token_truncate_equals_the_original_correction():
    """ms-swift's token_truncate weights = min(exp(old - sampling), 2.0) per token, the original's TIS."""
    from swift.rlhf_trainers import GRPOTrainer

    class Probe:
        rollout_importance_sampling_mode = 'token_truncate'
        rollout_importance_sampling_threshold = 2.0
    old = torch.tensor([[-1.0, -2.0, -0.5]])
    sampling = torch.tensor([[-1.5, -1.0, -2.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    weights = GRPOTrainer._apply_rollout_importance_sampling(Probe(), old - sampling, mask)
    expected = torch.clamp(torch.exp(old - sampling), max=2.0)  # exp(.5)=1.65, exp(-1)=.37, exp(1.5)=4.5 -> 2
    assert torch.allclose(weights, expected)
    assert weights[0, 2].item() == 2.0


@pytest.mark.parametrize('flag', [['--advantage_estimator', 'rloo'], ['--scale_rewards', 'batch']])
def test_an_unsupported_advantage_flag_stops_the_run(tiny_model, grpo_jsonl, tmp_path, flag):
    from tests.test_grpo_integration import grpo_args
    out = tmp_path / 'refused'
    with pytest.raises(AssertionError) as err:
        run([PYTHON, '-m', 'trainer.grpo', *grpo_args(tiny_model, grpo_jsonl, out, *flag, steps=1)])
    assert f'{flag[0]} {flag[1]}' in str(err.value) and 'not supported by TARS' in str(err.value)
    assert not (out / 'rollouts.jsonl').exists()


def test_scale_rewards_group_divides_by_the_modality_std(tiny_model, grpo_jsonl, tmp_path):
    """A real step with --scale_rewards group: every dumped advantage is (r - cell mean) / (cell std + 1e-4),
    the cell being the question's rollouts of the same modality; the std metrics are logged per modality."""
    from tests.test_grpo_integration import grpo_args, read_dump
    out = tmp_path / 'group'
    run([PYTHON, '-m', 'trainer.grpo', *grpo_args(tiny_model, grpo_jsonl, out, '--scale_rewards', 'group', steps=1)])
    rows = read_dump(out / 'rollouts.jsonl')
    cells = defaultdict(list)
    for r in rows:
        cells[(r['key'], r['modality'])].append(r)
    scaled = 0
    for members in cells.values():
        valid = [m['reward'] for m in members if m['reward'] is not None]
        mean = sum(valid) / len(valid)
        std = (sum((v - mean) ** 2 for v in valid) / len(valid)) ** 0.5
        for m in members:
            expected = 0.0 if m['reward'] is None else (m['reward'] - mean) / (std + 1e-4)
            assert m['advantage'] == pytest.approx(expected, rel=1e-4, abs=1e-5)
            scaled += std > 1e-3 and abs(m['advantage']) > 1e-6
    assert scaled, 'no cell had a reward spread: the test would not tell scaling from no scaling'
    logs = [json.loads(line) for line in (out / 'logging.jsonl').read_text().splitlines()]
    train = [entry for entry in logs if 'speech/reward' in entry][0]
    assert {'reward_std', 'frac_reward_zero_std', 'speech/reward_std', 'text/frac_reward_zero_std'} <= set(train)


# ---- pooled states ----

def _template_and_ends(name, cache_dir):
    from swift.model import get_model_processor
    from swift.template import get_template
    from transformers import GenerationConfig

    from trainer.grpo_trainer import end_token_ids
    from trainer.model_registry import register_models
    from scripts.recipes.tiny_models import tiny_model_dir
    register_models()
    path = tiny_model_dir(name, cache_dir)
    _, processor = get_model_processor(str(path), model_type=name, load_model=False)
    template = get_template(processor)
    template.set_mode('train')
    tokenizer = getattr(processor, 'tokenizer', processor)
    return template, tokenizer, end_token_ids(tokenizer, GenerationConfig.from_pretrained(str(path)))


@pytest.mark.slow  # the slow tier (tests/conftest.py)
@pytest.mark.parametrize('name', PRESETS)
def test_pooled_tokens_are_exactly_the_generated_ones(name, cache_dir):
    """Encoded and collated as the trainer does (ms-swift's encode_sample + collate): a finished completion
    pools its generated tokens without the final end-of-turn token, a truncated one all of its generated
    tokens, never a template suffix (a truncated Qwen completion encoded with the suffix gets
    ``<|im_end|>`` + newline after it), with or without the generated token counts."""
    from swift.rl_core.data import GRPOSample
    from swift.rlhf_trainers.utils import collate_to_grpo_micro_batch, encode_sample

    from trainer.grpo_trainer import generated_length
    from trainer.hidden_states import completion_token_mask
    template, tokenizer, ends = _template_and_ends(name, cache_dir)
    stop = tokenizer.convert_tokens_to_ids('<|end|>' if name == 'phi4_multimodal' else '<|im_end|>')
    assert stop in ends
    text = tokenizer.encode(' <think>x</think><answer>The answer is C.</answer>', add_special_tokens=False)
    cases = [(text + [stop], 'stop', False), (text, 'length', True), (text, 'length', False)]
    samples = [GRPOSample(messages=[{'role': 'user', 'content': 'Which option?'},
                                    {'role': 'assistant', 'content': tokenizer.decode(ids)}],
                          response_token_ids=[ids], finish_reason=reason, add_eos=suffix)
               for ids, reason, suffix in cases]
    for s in samples:
        s.encoded = encode_sample(s, template)
        s.encoded.pop('_extra_kwargs', None)
    inputs, batch = collate_to_grpo_micro_batch(samples, template, device=torch.device('cpu'), use_logits_to_keep=True)
    mask = completion_token_mask(inputs['input_ids'], batch.completion_mask, ends,
                                 [generated_length(s) for s in samples])
    for row in range(len(samples)):
        assert inputs['input_ids'][row][mask[row]].tolist() == text, (name, cases[row][1:])
    # the trained completion of the suffixed truncated row is longer than what was generated (on the Qwen
    # templates); without the generated lengths the mask finds the completion's end itself, same tokens
    c = batch.completion_mask.shape[1]
    trained = int(batch.completion_mask[1].sum())
    assert trained >= len(text)
    if name != 'phi4_multimodal':
        assert trained == len(text) + 2  # <|im_end|> and the newline the template appends
    found = completion_token_mask(inputs['input_ids'], batch.completion_mask, ends)
    assert found.tolist() == mask.tolist()
    assert int(mask[:, :-c].sum()) == 0  # never a prompt token


@pytest.mark.slow  # the slow tier (tests/conftest.py)
def test_dropout_off_makes_two_pooled_captures_identical(cache_dir):
    """A LoRA with dropout 0.5 in train mode: two captures of one batch differ unless dropout is off."""
    from peft import LoraConfig, get_peft_model
    from swift.model import get_model_processor

    from trainer.hidden_states import PooledStateCapture, dropout_off
    from trainer.model_registry import register_models
    from scripts.recipes.tiny_models import tiny_model_dir
    register_models()
    path = tiny_model_dir('qwen2_5_omni', cache_dir)
    model, _ = get_model_processor(str(path), model_type='qwen2_5_omni', torch_dtype=torch.float32)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, init_lora_weights=False,
                                             target_modules=r'.*thinker\.model\.layers\.\d+\.self_attn\.(q|v)_proj'))
    model.train()
    capture = PooledStateCapture(model)
    input_ids = torch.randint(0, 1000, (2, 12))
    token_mask = torch.zeros(2, 12, dtype=torch.bool)
    token_mask[:, 6:] = True

    def pooled(off: bool) -> torch.Tensor:
        with torch.no_grad(), (dropout_off(model) if off else nullcontext()), capture.pooling(token_mask):
            model.base_model.model.thinker(input_ids=input_ids)
        return capture.pooled.clone()

    assert not torch.equal(pooled(False), pooled(False))  # dropout on: the test can fail
    first, second = pooled(True), pooled(True)
    assert torch.equal(first, second)
    assert all(m.training for m in model.modules() if isinstance(m, torch.nn.Dropout))  # restored
