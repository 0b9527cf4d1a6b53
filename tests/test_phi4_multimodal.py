"""Phi-4-multimodal specifics on its tiny twin: tokenizer, prompt layout, audio tokens and their collation,
the speech base, the LoRA targets, vLLM serving arguments (issue 6; docs/original.md §2.1, §2.2, §7). GRPO, evaluation,
merge and the layer analysis run for this preset in tests/test_presets.py."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytestmark = pytest.mark.slow  # every test here loads the Phi-4 twin (tests/conftest.py: tiers)


MODEL_TYPE = 'phi4_multimodal'


@pytest.fixture(scope='module')
def phi4(cache_dir) -> Path:
    from scripts.recipes.tiny_models import tiny_model_dir
    return tiny_model_dir(MODEL_TYPE, cache_dir)


@pytest.fixture(scope='module')
def swift_model(phi4):
    from swift.model import get_model_processor
    from swift.template import get_template

    from trainer.model_registry import register_models
    register_models()
    model, processor = get_model_processor(str(phi4), model_type=MODEL_TYPE, torch_dtype=torch.float32)
    template = get_template(processor, template_type=MODEL_TYPE)
    return model.eval(), processor, template


@pytest.fixture(scope='module')
def clips(tmp_path_factory):
    """A 3 s and a 2 s tone (16 kHz)."""
    root = tmp_path_factory.mktemp('clips')
    wav = (0.1 * np.sin(np.arange(16000 * 3) / 16000 * 2 * np.pi * 440)).astype(np.float32)
    sf.write(root / 'a3.wav', wav, 16000)
    sf.write(root / 'a2.wav', wav[:32000], 16000)
    return root / 'a3.wav', root / 'a2.wav'


def test_tokenizer_is_o200k_with_phi4s_special_tokens_at_their_real_ids(phi4):
    import toktok
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(phi4))
    expected = {'<|endoftext|>': 199999, '<|endoftext10|>': 200010, '<|endoftext11|>': 200011, '<|assistant|>': 200019,
                '<|end|>': 200020, '<|user|>': 200021, '<|system|>': 200022}
    assert {t: tok.convert_tokens_to_ids(t) for t in expected} == expected
    assert tok.pad_token_id == 199999 and tok.audio_token_id == 200011
    o200k = toktok._encoding('o200k_base')
    texts = ['<think>x</think><answer>The answer is B.</answer>', "Which isn't prime?\nA. 2  B. 9\r\n émigré 12345"]
    for text in texts:
        ids = tok(text, add_special_tokens=False)['input_ids']
        assert ids == list(o200k.encode_ordinary(text))  # GPT-4o's BPE ids, as the real checkpoint
        assert tok.decode(ids, skip_special_tokens=True) == text  # <think> is plain text
    gen = json.loads((phi4 / 'generation_config.json').read_text())
    assert 200011 in gen['suppress_tokens'] and 200020 not in gen['suppress_tokens']
    assert sorted(gen['eos_token_id']) == [199999, 200020]


def test_prompt_layout_and_text_rows(swift_model):
    _, processor, template = swift_model
    template.set_mode('transformers')
    enc = template.encode({'messages': [{'role': 'system', 'content': 'S'}, {'role': 'user', 'content': 'Q?'}]})
    assert processor.tokenizer.decode(enc['input_ids']) == '<|system|>S<|end|><|user|>Q?<|end|><|assistant|>'
    assert 'audio_input_features' not in enc


def test_forward_with_audio_has_one_token_per_audio_embedding(swift_model, clips):
    """3 s -> (48000 - 400) // 160 + 1 = 298 frames -> ceil(298 / 8) = 38 audio tokens; 2 s -> 198 -> 25."""
    model, processor, template = swift_model
    template.set_mode('train')
    template.padding_side = 'left'
    rows = [{'messages': [{'role': 'user', 'content': '<audio>'}, {'role': 'assistant', 'content': 'A'}],
             'audios': [str(clips[0])]},
            {'messages': [{'role': 'user', 'content': 'text only'}, {'role': 'assistant', 'content': 'B'}]},
            {'messages': [{'role': 'user', 'content': '<audio>'}, {'role': 'assistant', 'content': 'C'}],
             'audios': [str(clips[1])]}]
    encoded = [template.encode(r) for r in rows]
    assert [e['input_ids'].count(200011) for e in encoded] == [38, 0, 25]
    assert [e.get('audio_embed_sizes') for e in encoded] == [[38], None, [25]]
    batch = template.data_collator(encoded)
    assert batch['audio_input_features'].shape == (2, 298, 80)
    assert batch['audio_attention_mask'].sum(-1).tolist() == [298, 198]
    # collated as the native feature extractor batches the two clips itself
    native = processor.audio_processor([sf.read(str(c))[0] for c in clips], sampling_rate=16000, return_tensors='pt')
    mask = batch['audio_attention_mask']
    assert torch.equal(mask, native['audio_attention_mask'])
    assert torch.allclose(batch['audio_input_features'][mask], native['audio_input_features'][mask], atol=1e-4)
    assert batch['audio_embed_sizes'].tolist() == native['audio_embed_sizes'].tolist() == [38, 25]
    inputs = {k: v for k, v in batch.items() if k != 'labels'}

    def last_logits(rows):
        with torch.no_grad():
            return model(**{k: v for k, v in template.data_collator(rows).items() if k != 'labels'}).logits[:, -1]

    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    assert out.logits.shape == (3, batch['input_ids'].shape[1], 200064)
    assert len(out.hidden_states) == 4 + 1
    # in a mixed, left-padded batch the longest clip and the text row give the logits they give alone:
    # features, positions and audio tokens line up. (A shorter clip does not: Phi-4-MM's Conformer
    # normalises and convolves the zero padding, as in the original's padded batches.)
    assert torch.allclose(out.logits[0, -1], last_logits([encoded[0]])[0], atol=1e-4)
    assert torch.allclose(out.logits[1, -1], last_logits([encoded[1]])[0], atol=1e-4)
    assert torch.allclose(last_logits([encoded[1], encoded[2]])[1], last_logits([encoded[2]])[0], atol=1e-4)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[200022, 50, 200020, 200021, 13225, 2375, 11, 4128, 3413, 30, 200020, 200019]])


def test_speech_base_equals_base_plus_speech_lora(phi4, swift_model, tmp_path):
    from peft import PeftModel
    from transformers import Phi4MultimodalForCausalLM

    from trainer.models.phi4_speech_base import write_speech_base
    out = write_speech_base(str(phi4), tmp_path / 'speech-base')
    assert not (out / 'speech-lora').exists()
    for name in ('tokenizer.json', 'tokenizer_config.json', 'processor_config.json', 'chat_template.jinja',
                 'generation_config.json', 'speech_base.json'):
        assert (out / name).is_file(), name
    assert all(f.suffix != '.bin' for f in out.iterdir())
    assert json.loads((out / 'speech_base.json').read_text())['merged_modules'] == 16  # 4 layers x 4 projections
    raw = Phi4MultimodalForCausalLM.from_pretrained(str(phi4)).eval()
    plain = _logits(raw, IDS)
    with_lora = PeftModel.from_pretrained(raw, str(phi4 / 'speech-lora')).eval()
    expected = _logits(with_lora, IDS)
    merged = _logits(Phi4MultimodalForCausalLM.from_pretrained(str(out)).eval(), IDS)
    assert torch.allclose(merged, expected, atol=1e-4)
    assert not torch.allclose(merged, plain, atol=1e-3)  # the speech LoRA really changes the model
    # ms-swift's loader merges it on load the same way when the checkpoint still has speech-lora/
    assert torch.allclose(_logits(swift_model[0], IDS), expected, atol=1e-4)
    with pytest.raises(FileExistsError):
        write_speech_base(str(phi4), out)


def test_all_linear_resolves_to_the_originals_lora_targets(swift_model):
    """The project's LoRA flags (--target_modules all-linear, encoder and projectors frozen) give exactly the
    original's adapter modules for this preset: qkv/o/gate_up/down of every decoder layer, none of the audio
    encoder's same-named linears (docs/original.md §2.1)."""
    from swift.utils.transformers_utils import get_multimodal_target_regex

    from trainer.models.phi4_multimodal import LORA_TARGET_REGEX
    model = swift_model[0]
    regex = get_multimodal_target_regex(model, freeze_llm=False, freeze_vit=True, freeze_aligner=True)
    chosen = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and re.fullmatch(regex, n)}
    assert len(chosen) == 16 and all(re.match(LORA_TARGET_REGEX, n) for n in chosen)
    assert any(n.endswith('audio_embed.encoder.encoders.0.self_attn.o_proj') for n, _ in model.named_modules())


@pytest.fixture(scope='module')
def trained_adapter(phi4, tmp_path_factory):
    """An r 8 adapter saved on the twin the way peft/ms-swift save one (base_model_name_or_path = the twin)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Phi4MultimodalForCausalLM

    from trainer.models.phi4_multimodal import LORA_TARGET_REGEX
    model = Phi4MultimodalForCausalLM.from_pretrained(str(phi4))
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=LORA_TARGET_REGEX))
    out = tmp_path_factory.mktemp('phi4_adapter') / 'checkpoint-1'
    peft_model.save_pretrained(str(out))
    return out


def test_vllm_serving_command(trained_adapter):
    from trainer.models.phi4_serving import vllm_serve_command
    adapter = str(trained_adapter)
    with pytest.raises(ValueError, match='speech base'):  # its base still has speech-lora/: vLLM cannot stack
        vllm_serve_command(adapter)
    argv = vllm_serve_command(adapter, base='/ckpt/Phi-4-MM-speech')
    assert argv[:3] == ['vllm', 'serve', '/ckpt/Phi-4-MM-speech']
    assert argv[argv.index('--lora-modules') + 1] == f'tars={adapter}'
    assert argv[argv.index('--max-lora-rank') + 1] == '8' and argv[argv.index('--max-loras') + 1] == '1'
    assert json.loads(argv[argv.index('--limit-mm-per-prompt') + 1]) == {'audio': 1}
    assert argv[argv.index('--max-model-len') + 1] == '6400'
    merged = vllm_serve_command(merged='/ckpt/merged')
    assert merged[2] == '/ckpt/merged' and '--enable-lora' not in merged
