"""Qwen3-Omni-30B-A3B (issue 28): the MoE decisions (LoRA targets counted on the real configuration on ``meta``,
the router auxiliary loss, the Thinking model's format under the systhink prompt) and long audio (a 40 s clip
reaches the audio encoder whole, in training and in evaluation). The shared preset tests (template, hooks,
GRPO, evaluation, DPO/SFT, merge, layer analysis) run on its twin in tests/test_presets.py."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

NAME = 'qwen3_omni_moe'


def sine(seconds: float) -> np.ndarray:
    return (0.1 * np.sin(np.arange(int(16000 * seconds)) / 16000 * 2 * np.pi * 440)).astype(np.float32)


def test_both_released_checkpoints_are_the_preset():
    from trainer.presets import detect_model_type, get_preset
    assert get_preset(NAME).checkpoint == 'Qwen/Qwen3-Omni-30B-A3B-Instruct'
    for variant in ('Instruct', 'Thinking'):
        assert detect_model_type(f'Qwen/Qwen3-Omni-30B-A3B-{variant}') == NAME
    assert detect_model_type('Qwen/Qwen3-Omni-30B-A3B-Captioner') is None


def test_lora_targets_attention_only_counted_on_the_real_configuration():
    """r 8 'all-linear' on the real 48-layer thinker adapts q/k/v/o only: the 128 experts per layer are fused 3-D
    parameters (gate_up_proj, down_proj) and the router is not a Linear. Hand count, per layer:
    q 2048 -> 4096, k and v 2048 -> 512, o 4096 -> 2048: 8 x (6144 + 2560 + 2560 + 6144) = 139,264; x 48 =
    6,684,672. LoRA on the experts too would add 8 x ((2048 + 1536) + (768 + 2048)) x 128 x 48 = 314,572,800."""
    from trainer.memory_plan import MODEL_SPECS, build_meta, preset_count
    count = preset_count(NAME)
    assert count.layer_linears == (4, 2048 + 2048 + 2048 + 4096)
    assert count.lora_per_rank * 8 == 6_684_672
    model, _ = build_meta(MODEL_SPECS[NAME])
    layer = model.model.layers[0]
    linears = sorted(n for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear))
    assert linears == ['self_attn.k_proj', 'self_attn.o_proj', 'self_attn.q_proj', 'self_attn.v_proj']
    experts = {n: tuple(p.shape) for n, p in layer.mlp.experts.named_parameters()}
    assert experts == {'gate_up_proj': (128, 1536, 2048), 'down_proj': (128, 2048, 768)}
    per_expert = 8 * ((2048 + 1536) + (768 + 2048))
    assert per_expert * 128 * len(model.model.layers) == 314_572_800


def test_router_auxiliary_loss_stays_off():
    """The router is frozen (not a LoRA target) and the paper's objective has no load-balancing term: ms-swift's
    GRPO trainer adds none, its router_aux_loss_coef defaults to 0 and the GRPO defaults do not set it."""
    from swift.arguments import RLHFArguments

    from trainer.grpo import PAPER_DEFAULTS
    default = {f.name: f.default for f in dataclasses.fields(RLHFArguments)}['router_aux_loss_coef']
    assert default == 0 and '--router_aux_loss_coef' not in PAPER_DEFAULTS
    from trainer.memory_plan import read_config
    assert not read_config(NAME)['thinker_config']['text_config'].get('output_router_logits', False)


@pytest.fixture(scope='module')
def twin(cache_dir):
    from scripts.recipes.tiny_models import tiny_model_dir
    return tiny_model_dir(NAME, cache_dir)


@pytest.mark.slow
def test_thinking_models_own_format_is_what_the_format_reward_sees(twin):
    """ms-swift's qwen3_omni template (the Instruct's and the Thinking's) puts no <think> into the prompt, and
    <think> / </think> are not special tokens: a completion in the systhink format, which the Thinking model's own
    <think>...</think> opens, decodes with its tags and scores 1; its bare native format (no <answer>) scores 0."""
    from swift.model import get_model_processor
    from swift.template import get_template

    from trainer.answer import format_score
    _, processor = get_model_processor(str(twin), model_type=NAME, load_model=False)
    template = get_template(processor)
    template.set_mode('pt')
    prompt = processor.tokenizer.decode(template.encode({'messages': [{'role': 'user', 'content': 'Hi'}]})['input_ids'])
    assert prompt == '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n'
    tok = processor.tokenizer
    systhink = '<think>\nA is prime.\n</think><answer>The answer is A.</answer>'
    decoded = tok.decode(tok(systhink)['input_ids'] + [tok.convert_tokens_to_ids('<|im_end|>')],
                         skip_special_tokens=True)
    assert decoded == systhink and format_score(decoded) == 1.0
    assert format_score('<think>\nA is prime.\n</think>\n\nThe answer is A.') == 0.0


@pytest.mark.slow
def test_40_second_clip_reaches_the_encoder_whole_in_training_and_evaluation(twin, tmp_path):
    """ms-swift #9182 (no 30 s truncation of Qwen3-Omni audio) and #9669 (training loads audio as vLLM does:
    trimmed to whole hops) are in the installed ms-swift: a 40 s clip is 4000 mel frames, 40 chunks of 100 ->
    40 x 13 = 520 audio tokens, and the encoder receives all 4000 frames both when training encodes it and when
    the evaluation's engine generates from it."""
    import soundfile as sf
    from swift.model import get_model_processor
    from swift.template import get_template

    from trainer.engine import ModelSpec, generate, new_transformers_engine
    clip = tmp_path / 'long.wav'
    sf.write(str(clip), sine(40), 16000)
    model, processor = get_model_processor(str(twin), model_type=NAME, torch_dtype=torch.float32)
    seen = []

    def record(module, args, kwargs, output):
        seen.append((args[0].shape[-1], kwargs['feature_lens'].tolist(), output.last_hidden_state.shape[0]))

    template = get_template(processor)
    template.set_mode('train')
    encoded = template.encode({'messages': [{'role': 'user', 'content': '<audio>What is said?'},
                                            {'role': 'assistant', 'content': 'A.'}], 'audios': [str(clip)]})
    audio_id = processor.tokenizer.convert_tokens_to_ids('<|audio_pad|>')
    assert encoded['input_ids'].count(audio_id) == 520 and encoded['feature_attention_mask'].sum() == 4000
    batch = template.data_collator([encoded])
    hook = model.thinker.audio_tower.register_forward_hook(record, with_kwargs=True)
    with torch.no_grad():
        model(**{k: batch[k] for k in ('input_ids', 'attention_mask', 'input_features', 'feature_attention_mask',
                                       'position_ids')})
    hook.remove()
    assert seen == [(4000, [4000], 520)]

    seen.clear()
    engine = new_transformers_engine(ModelSpec(str(twin), None, NAME), batch_size=1)
    engine.model.thinker.audio_tower.register_forward_hook(record, with_kwargs=True)
    out = generate(engine, [([{'role': 'user', 'content': '<audio>What is said?'}], [str(clip)])],
                   ModelSpec(str(twin), None, NAME), use_adapter=False, max_new_tokens=2)
    assert isinstance(out[0], str) and seen and seen[0] == (4000, [4000], 520)


@pytest.mark.slow
def test_lora_targets_are_named_so_the_audio_encoder_stays_frozen(twin):
    """peft 0.20 reduces ms-swift's LLM-scoped ``all-linear`` regex to leaf names on this model type (its v4 -> v5 MoE
    config conversion, huggingface/peft #3232), which the audio encoder's q/k/v_proj also match; the full names
    ``trainer.lora_targets`` gives adapt the LLM's attention only: 3 layers x 8 x (128 + 96 + 96 + 128) = 10,752."""
    import types

    from peft import LoraConfig, get_peft_model
    from swift.model import get_model_processor
    from swift.utils import get_multimodal_target_regex

    from trainer.lora_targets import resolve_target_names

    def adapted(targets):
        model, _ = get_model_processor(str(twin), model_type=NAME, torch_dtype=torch.float32)
        peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=targets))
        lora = {n: p.numel() for n, p in peft_model.named_parameters() if 'lora_' in n}
        return {n.split('.lora_')[0].removeprefix('base_model.model.') for n in lora}, sum(lora.values())

    model, _ = get_model_processor(str(twin), model_type=NAME, torch_dtype=torch.float32)
    regex = get_multimodal_target_regex(model)
    names, _ = adapted(regex)
    assert 'thinker.audio_tower.layers.0.self_attn.q_proj' in names  # the upstream behaviour worked around
    args = types.SimpleNamespace(model_type=NAME, tuner_type='lora', resume_from_checkpoint=None, adapters=[],
                                 target_modules=['all-linear'], freeze_llm=False, freeze_vit=True, freeze_aligner=True)
    resolve_target_names(args, model)
    assert len(args.target_modules) == 12 and all(n.startswith('thinker.model.layers.') for n in args.target_modules)
    names, count = adapted(args.target_modules)
    assert names == set(args.target_modules) and count == 10_752
    kept = types.SimpleNamespace(**{**vars(args), 'model_type': 'qwen2_5_omni', 'target_modules': ['all-linear']})
    resolve_target_names(kept, model)
    assert kept.target_modules == ['all-linear']  # other presets: ms-swift's own resolution
