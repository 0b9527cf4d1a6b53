"""Every preset beyond Qwen2.5-Omni (issue 6) on its tiny twin: audio tokens that match the features, ms-swift's
template equal to the native processor, TARS GRPO with all rewards, evaluation in speech and text mode, LoRA merge,
the layer analysis. Parametrised by ``CASES``: a new preset adds its row (Qwen2.5-Omni has its own tests)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import torch

from tests.conftest import PYTHON, run
from tests.test_grpo_integration import REWARDS, check_advantage_rule, grpo_args, lora_b_norm, read_dump

pytestmark = pytest.mark.slow  # every test here builds or loads a preset's twin (tests/conftest.py: tiers)


@dataclass(frozen=True)
class Case:
    model_class: str        # transformers class of the full model (what ms-swift loads and trains)
    audio_token: str        # the placeholder the template expands, one per audio frame group
    tokens_per_3s: int      # hand-computed number of audio tokens of a 3 s clip
    llm_linear: str         # regex of the LLM's linear layers (the random test adapter's targets)
    layers: int             # decoder layers of the twin's LLM (layer analysis entries)
    # native processor inputs of a rendered chat text and one 16 kHz clip
    processor_inputs: Callable
    # the base as ms-swift's loader builds it, from the twin's directory (None: the class's from_pretrained)
    load_base: Optional[Callable] = None
    # hand-computed trainable parameters of the training's r 8 LoRA on the LLM's Linears (None: not counted here)
    lora_r8: Optional[int] = None


def _qwen2_audio_inputs(processor, text, wav):
    return processor(text=[text], audio=[wav], return_tensors='pt')


def _phi4_speech_base(path):
    """Phi-4-MM's twin with its speech-lora/ merged, as the preset's loader does (docs/original.md §2.1)."""
    from transformers import Phi4MultimodalForCausalLM

    from trainer.models.phi4_speech_base import merge_speech_lora
    return merge_speech_lora(Phi4MultimodalForCausalLM.from_pretrained(str(path)), path / 'speech-lora')


CASES = {
    # 3 s = 300 mel frames -> (300 - 1) // 2 + 1 = 150 after the stride-2 conv -> (150 - 2) // 2 + 1 = 75 pooled
    'qwen2_audio': Case('Qwen2AudioForConditionalGeneration', '<|AUDIO|>', 75,
                        r'model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)',
                        4, _qwen2_audio_inputs),
    # 3 s = (48000 - 400) // 160 + 1 = 298 log-mel frames -> ceil(298 / 8) = 38 audio embeddings
    'phi4_multimodal': Case('Phi4MultimodalForCausalLM', '<|endoftext11|>', 38,
                            r'model\.layers\.\d+\.(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj))',
                            4, _qwen2_audio_inputs, _phi4_speech_base),
    # 3 s = 300 mel frames = 3 chunks of 100 (n_window 50 x 2), each 100 -> 50 -> 25 -> 13 after three stride-2
    # convolutions: 3 x 13 = 39 audio tokens. The full class has no forward of its own: the thinker runs it.
    # LoRA on attention only: the experts are fused 3-D parameters, not Linears (docs/design.md §4). r 8 per layer:
    # q 64 -> 64 and o 64 -> 64: 8 x 128 each; k, v 64 -> 32 (1 kv head of 32): 8 x 96 each; 8 x 448 x 3 layers.
    # The audio encoder's q/k/v_proj (2 layers) stay frozen: LoRA there would add 2 x 3 x 8 x 128 = 6,144.
    'qwen3_omni_moe': Case('Qwen3OmniMoeForConditionalGeneration', '<|audio_pad|>', 39,
                           r'thinker\.model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj', 3, _qwen2_audio_inputs,
                           lora_r8=8 * 448 * 3),
}
PRESETS = sorted(CASES)


def logits(model, **inputs):
    """The model's logits; a full Qwen-Omni model (no forward of its own) runs its thinker, as ms-swift does."""
    from peft import PeftModel
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return getattr(base, 'thinker', base)(**inputs).logits


def check_adapter(case: Case, checkpoint: Path) -> None:
    """The saved adapter is LoRA on the LLM's Linears only (encoder and projector frozen), with the hand-counted
    number of parameters where ``case`` has one."""
    from safetensors.torch import load_file
    tensors = load_file(str(checkpoint / 'adapter_model.safetensors'))
    assert tensors and not [n for n in tensors if 'audio' in n or not re.search(case.llm_linear, n)]
    if case.lora_r8 is not None:
        assert sum(t.numel() for t in tensors.values()) == case.lora_r8


def model_inputs(model, batch):
    """The collated batch's tensors the model's forward takes (labels left out: no loss needed)."""
    import inspect
    accepted = inspect.signature(model.forward).parameters
    return {k: v for k, v in batch.items() if k in accepted and k != 'labels'}


def sine(seconds: float) -> np.ndarray:
    return (0.1 * np.sin(np.arange(int(16000 * seconds)) / 16000 * 2 * np.pi * 440)).astype(np.float32)


@pytest.fixture(scope='module', params=PRESETS)
def preset(request, cache_dir):
    from scripts.recipes.tiny_models import tiny_model_dir
    return request.param, CASES[request.param], tiny_model_dir(request.param, cache_dir)


@pytest.fixture(scope='module')
def swift_model(preset):
    """The twin loaded the way training and evaluation load it: ms-swift's model type and template."""
    from swift.model import get_model_processor
    from swift.template import get_template

    from trainer.model_registry import register_models
    register_models()
    name, _, path = preset
    model, processor = get_model_processor(str(path), model_type=name, torch_dtype=torch.float32)
    template = get_template(processor)
    template.set_mode('train')
    return model.eval(), processor, template


@pytest.fixture(scope='module')
def tiny_adapter(preset, tmp_path_factory):
    """A random (non-zero) LoRA on the twin's LLM, saved the way peft/ms-swift save adapters."""
    import transformers
    from peft import LoraConfig, get_peft_model
    _, case, path = preset
    torch.manual_seed(0)
    model = getattr(transformers, case.model_class).from_pretrained(str(path))
    # full names, as trainer.lora_targets gives them: peft reduces a regex to leaf names on some models
    targets = [n for n, _ in model.named_modules() if re.fullmatch(case.llm_linear, n)]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                  target_modules=targets))
    out = tmp_path_factory.mktemp('adapter') / 'checkpoint-1'
    peft_model.save_pretrained(str(out))
    return out


def test_preset_rows_and_model_type_detection(preset):
    from trainer.presets import detect_model_type, get_preset
    name, _, path = preset
    assert get_preset(name).has_tiny_twin and get_preset(name).model_type == name
    assert detect_model_type(str(path)) == name  # from the twin's config.json
    assert detect_model_type(get_preset(name).checkpoint) == name and detect_model_type('org/other') is None


@pytest.mark.parametrize('name', PRESETS)
def test_launcher_takes_the_preset(name, tmp_path):
    from tests.test_data_and_launcher import dry_run, flag
    from trainer.presets import get_preset
    _, train = dry_run({'MODEL_PRESET': name, 'NPROC_PER_NODE': '8', 'OUTPUT_DIR': str(tmp_path / 'c')})
    assert flag(train, '--model') == get_preset(name).checkpoint and flag(train, '--model_type') == name
    # vLLM rollouts only for architectures the GPU stack's vLLM serves (not the native Phi-4-MM class)
    assert flag(train, '--use_vllm') == ('false' if name == 'phi4_multimodal' else 'true')
    # a 30 B model shards its weights (ZeRO-3); the others keep ZeRO-2
    assert flag(train, '--deepspeed') == ('zero3' if name == 'qwen3_omni_moe' else 'zero2')
    # and two GPUs share one colocated vLLM engine, which splits its 58 GiB of bf16 weights (docs/memory.md §3)
    if name != 'phi4_multimodal':
        assert flag(train, '--vllm_tensor_parallel_size') == ('2' if name == 'qwen3_omni_moe' else '1')
    from trainer.engine import choose_backend
    if name == 'phi4_multimodal':
        assert choose_backend('auto', name) == 'transformers'
    _, train = dry_run({'MODEL_PRESET': name, 'NPROC_PER_NODE': '0', 'OUTPUT_DIR': str(tmp_path / 'e')})
    assert flag(train, '--model') == f'<tiny warm-started {name}>' and flag(train, '--model_type') == name


def test_template_expands_audio_before_the_model_like_the_processor(preset, swift_model, tmp_path):
    """ms-swift's encoding of a speech turn is token for token the native processor's, with one
    placeholder per audio frame group; the forward then takes the non-legacy path and runs."""
    import soundfile as sf
    _, case, _ = preset
    model, processor, template = swift_model
    wav = sine(3)
    clip = tmp_path / 'clip.wav'
    sf.write(str(clip), wav, 16000)
    messages = [{'role': 'user', 'content': '<audio>What is said?'}]
    encoded = template.encode({'messages': messages, 'audios': [str(clip)]})
    audio_id = processor.tokenizer.convert_tokens_to_ids(case.audio_token)
    assert encoded['input_ids'].count(audio_id) == case.tokens_per_3s

    chat = [{'role': 'user', 'content': [{'type': 'audio'}, {'type': 'text', 'text': 'What is said?'}]}]
    text = processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    native = case.processor_inputs(processor, text, wav)
    assert encoded['input_ids'] == native['input_ids'][0].tolist()

    batch = template.data_collator([encoded])
    inputs = model_inputs(model, batch)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    assert out.logits.shape[:2] == batch['input_ids'].shape
    assert len(out.hidden_states) == case.layers + 1 and torch.isfinite(out.logits).all()


def test_qwen2_audio_clip_too_short_to_expand_is_a_clear_error(preset, swift_model, tmp_path):
    import soundfile as sf
    if preset[0] != 'qwen2_audio':
        pytest.skip('Qwen2-Audio only')
    _, _, template = swift_model
    # 30 ms = 3 mel frames -> 1 audio token, which Qwen2AudioModel would take for an unexpanded placeholder
    sf.write(str(tmp_path / 'short.wav'), sine(0.03), 16000)
    with pytest.raises(ValueError, match='too short'):
        template.encode({'messages': [{'role': 'user', 'content': '<audio>Hi'}],
                         'audios': [str(tmp_path / 'short.wav')]})


def test_mixed_batch_and_pooled_hidden_states(preset, swift_model, tmp_path):
    """A speech row and a text-only row in one left-padded batch: the representation reward's hooks
    (found through ms-swift's model architecture) pool the same states as output_hidden_states."""
    import soundfile as sf

    from trainer.hidden_states import PooledStateCapture
    from trainer.tars_math import masked_mean_pool
    _, case, _ = preset
    model, processor, template = swift_model
    clip = tmp_path / 'clip.wav'
    sf.write(str(clip), sine(2), 16000)
    rows = [{'messages': [{'role': 'user', 'content': '<audio>Answer.'},
                          {'role': 'assistant', 'content': 'B, I think.'}],
             'audios': [str(clip)]},
            {'messages': [{'role': 'user', 'content': 'Is 2 prime? A: yes B: no'},
                          {'role': 'assistant', 'content': 'A.'}]}]
    template.padding_side = 'left'
    batch = template.data_collator([template.encode(r) for r in rows])
    assert 'input_features' not in batch or batch['input_features'].shape[0] == 1  # only the speech row has features
    inputs = model_inputs(model, batch)
    mask = batch['labels'] != -100
    capture = PooledStateCapture(model)
    assert capture.num_layers == case.layers
    with torch.no_grad(), capture.pooling(mask):
        out = model(**inputs, output_hidden_states=True)
    expected = torch.stack([masked_mean_pool(h, mask) for h in out.hidden_states[1:]], dim=1)
    assert torch.allclose(capture.pooled, expected, atol=1e-5)


def test_grpo_steps_with_all_tars_rewards(preset, grpo_jsonl, tmp_path):
    name, _, path = preset
    out = tmp_path / 'run'
    args = grpo_args(path, grpo_jsonl, out)
    args[args.index('--model_type') + 1] = name
    run([PYTHON, '-m', 'trainer.grpo', *args])
    rows = read_dump(out / 'rollouts.jsonl')
    assert {r['step'] for r in rows} == {1, 2} and len(rows) == 16
    check_advantage_rule(rows)
    assert all(set(REWARDS) <= set(r) for r in rows)
    assert {r['modality'] for r in rows} == {'speech', 'text'}
    assert lora_b_norm(out / 'checkpoint-1') > 0
    assert lora_b_norm(out / 'checkpoint-2') != pytest.approx(lora_b_norm(out / 'checkpoint-1'))
    assert json.loads((out / 'checkpoint-2' / 'args.json').read_text())['model_type'] == name
    check_adapter(preset[1], out / 'checkpoint-2')


@pytest.fixture(scope='module')
def preference_set(tiny_speech_set, tmp_path_factory):
    """A preference set joined from hand-made generation files on the tiny speech set (speech prompts)."""
    from datasets import load_from_disk

    from scripts.dataset_building.preference import build
    keys = load_from_disk(str(tiny_speech_set))['train']['key'][:4]
    root = tmp_path_factory.mktemp('preference')
    for mode, field in (('text', 'chosen'), ('audio', 'rejected')):
        (root / 'samples' / mode).mkdir(parents=True)
        (root / 'samples' / mode / 'samples.jsonl').write_text(''.join(
            json.dumps({'key': k, field: f'<think>{mode} {i}</think><answer>The answer is {"AB"[i % 2]}.</answer>'})
            + '\n' for i, k in enumerate(keys)))
    return build(str(tiny_speech_set), root / 'samples', root / 'set', val_rows=1)


@pytest.mark.parametrize('kind', ['dpo', 'sft'])
def test_dpo_and_sft_steps(preset, preference_set, kind, tmp_path):
    name, case, path = preset
    out = tmp_path / kind
    run([PYTHON, '-m', 'trainer.preference_train', kind, '--model', str(path), '--model_type', name,
         '--dataset', str(preference_set[kind]), '--val_dataset', str(preference_set[f'{kind}_val']),
         '--split_dataset_ratio', '0', '--output_dir', str(out), '--add_version', 'false', '--max_steps', '2',
         '--per_device_train_batch_size', '2', '--gradient_accumulation_steps', '1', '--learning_rate', '1e-3',
         '--warmup_ratio', '0', '--torch_dtype', 'float32', '--gradient_checkpointing', 'false', '--logging_steps', '1',
         '--save_steps', '2', '--eval_steps', '2', '--report_to', 'none', '--dataloader_num_workers', '0',
         '--dataset_num_proc', '1', '--check_model', 'false'])
    assert lora_b_norm(out / 'checkpoint-2') > 0  # LoRA B starts at zero
    check_adapter(case, out / 'checkpoint-2')
    logs = [json.loads(l) for l in (out / 'logging.jsonl').read_text().splitlines()]
    assert any('eval_loss' in l for l in logs)
    if kind == 'dpo':
        assert any('rewards/margins' in l for l in logs)


def test_evaluation_in_speech_and_text_mode(preset, tiny_adapter, tiny_speech_set, tmp_path):
    from eval import metrics as M
    from trainer.engine import resolve_model
    from eval.qa import evaluate
    name, _, path = preset
    assert resolve_model(str(tiny_adapter), str(path)).model_type == name  # detected from the base's config.json
    result = evaluate(str(tiny_adapter), [('SET', str(tiny_speech_set))], modes=['audio', 'text'], out=tmp_path,
                      base_model=str(path), split='train', max_items=2, max_new_tokens=6, batch_size=2,
                      backend='transformers')
    for mode in ('audio', 'text'):
        rows = M.read_results(Path(result['dir']) / 'SET' / f'{mode}_systhink' / 'results.jsonl')
        assert len(rows) == 2 and all(r.get('error') is None and isinstance(r['output'], str) for r in rows)
    config = json.loads((Path(result['dir']) / 'SET' / 'audio_systhink' / 'config.json').read_text())
    assert config['base'] == str(path) and config['adapter'] == str(tiny_adapter)


def test_inference_answers_speech_and_text(preset, tiny_adapter, tiny_speech_set, tmp_path, capsys):
    from infer.answer import main
    from trainer.data import write_clip
    from trainer.schema import load_hf_dataset
    _, _, path = preset
    row = load_hf_dataset(str(tiny_speech_set))[0]
    wav = write_clip(row, 'set', tmp_path)
    main(['--model', str(tiny_adapter), '--base_model', str(path), '--audio', wav, '--text', row['prompt_for_tts'],
          '--max_new_tokens', '6', '--backend', 'transformers'])
    out = capsys.readouterr().out
    assert out.count('--- speech ---') == 1 and out.count('--- text ---') == 1 and out.count('answer: ') == 2


def test_merged_model_equals_base_plus_adapter(preset, tiny_adapter, tmp_path):
    import transformers
    from peft import PeftModel

    from scripts.merge_lora import merge_lora
    _, case, path = preset
    cls = getattr(transformers, case.model_class)
    merged_dir = merge_lora(str(tiny_adapter), str(tmp_path / 'merged'), str(path))  # model type detected
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    ids = torch.tensor([tok.apply_chat_template([{'role': 'user', 'content': 'What is 2+2?'}], tokenize=True,
                                                add_generation_prompt=True)['input_ids']])
    load_base = case.load_base or (lambda p: cls.from_pretrained(str(p)))
    with torch.no_grad():
        a = logits(PeftModel.from_pretrained(load_base(path), str(tiny_adapter)).eval(), input_ids=ids)
        b = logits(cls.from_pretrained(str(merged_dir)).eval(), input_ids=ids)
        plain = logits(load_base(path).eval(), input_ids=ids)
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, plain, atol=1e-4)  # the adapter really changes the model


def test_layer_analysis_loads_the_preset(preset, tiny_adapter, tiny_speech_set, tmp_path):
    from scripts.layer_similarity_analysis import measure
    from scripts.layer_similarity_analysis.models import load_model
    from scripts.layer_similarity_analysis.outputs import read_stats
    from trainer.presets import get_preset
    name, case, path = preset
    loaded = load_model(str(tiny_adapter), base_model=str(path))
    assert type(loaded.thinker).__name__ == get_preset(name).llm_class and loaded.base_model == str(path)
    run_dir = measure.main(['--model', str(path), '--dataset', str(tiny_speech_set), '--split', 'train',
                            '--max_samples', '2', '--batch_size', '2', '--max_new_tokens', '6',
                            '--output_root', str(tmp_path / 'out')])
    stats = read_stats(str(run_dir))
    assert stats['layers'] == list(range(case.layers))
    assert stats['n_samples'] + stats['n_skipped'] == 2
