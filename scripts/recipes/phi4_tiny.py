"""The tiny random-weight twin of Phi-4-multimodal-instruct (docs/design.md §4; issue 6).

Same transformers class as the real checkpoint in its native format (``Phi4MultimodalForCausalLM``), a
few decoder layers of width 64, a two-block Conformer audio encoder, the o200k tokenizer with Phi-4's
added tokens at their real ids (``scripts.recipes.phi4_tokenizer``), the real processor classes
(``Phi4MultimodalProcessor``, ``Phi4MultimodalFeatureExtractor`` with the real feature settings, so a
clip gets the real number of audio tokens), and a random ``speech-lora/`` PEFT adapter on the same four
projections as the official one, so that the speech-base merge (docs/original.md §2.1) is exercised. Called by
``scripts.recipes.tiny_models`` (cache, recipe hash).
"""
from __future__ import annotations

import json
from pathlib import Path

from scripts.recipes import phi4_tokenizer as tk

# Every number that shapes the tiny weights (scripts.recipes.tiny_models hashes it into the cache name).
TINY_PHI4_MULTIMODAL = {
    'seed': 0,
    'hidden_size': 64,
    'intermediate_size': 128,
    'num_hidden_layers': 4,
    'num_attention_heads': 4,
    'num_key_value_heads': 2,
    'partial_rotary_factor': 0.75,  # as the real model: RoPE on 3/4 of each head
    'audio_hidden_size': 32,
    'audio_blocks': 2,
    'audio_heads': 4,
    'speech_lora_rank': 16,  # the real speech LoRA: r 320, alpha 640 (same alpha/r)
    'speech_lora_alpha': 32,
    'tokenizer': 'o200k_base (toktok-rs 0.3.0)',
    'version': 2,  # bump when the build changes outside these numbers (tokenizer files, chat template)
}


def build(out: Path, recipe: dict) -> None:
    """Write the tiny twin (weights, tokenizer, processor, generation config, speech-lora/) to ``out``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoTokenizer, Phi4MultimodalConfig, Phi4MultimodalFeatureExtractor,
                              Phi4MultimodalForCausalLM, Phi4MultimodalImageProcessor, Phi4MultimodalProcessor)

    tk.write_tokenizer(out)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    processor = Phi4MultimodalProcessor(image_processor=Phi4MultimodalImageProcessor(),
                                        audio_processor=Phi4MultimodalFeatureExtractor(), tokenizer=tokenizer,
                                        chat_template=tk.CHAT_TEMPLATE)

    h, heads = recipe['hidden_size'], recipe['num_attention_heads']
    rotary_half = int(h // heads * recipe['partial_rotary_factor']) // 2
    rope = dict(rope_type='longrope', rope_theta=10000.0, partial_rotary_factor=recipe['partial_rotary_factor'],
                short_factor=[1.0] * rotary_half, long_factor=[1.0 + 0.5 * i for i in range(rotary_half)])
    a = recipe['audio_hidden_size']
    audio = dict(hidden_size=a, intermediate_size=2 * a, num_blocks=recipe['audio_blocks'],
                 num_attention_heads=recipe['audio_heads'], depthwise_separable_out_channel=a, ext_pw_out_channel=a,
                 nemo_conv_channels=a, time_reduction=8, downsample_rate=1, bias_max_distance=500,
                 audio_token_id=tk.AUDIO_TOKEN_ID)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_token_id=tk.IMAGE_TOKEN_ID)  # never run by the audio preset, built by the class
    config = Phi4MultimodalConfig(
        vocab_size=tk.VOCAB_SIZE, hidden_size=h, intermediate_size=recipe['intermediate_size'],
        num_hidden_layers=recipe['num_hidden_layers'], num_attention_heads=heads,
        num_key_value_heads=recipe['num_key_value_heads'], max_position_embeddings=131072,
        original_max_position_embeddings=4096, rope_parameters=rope, tie_word_embeddings=True,
        bos_token_id=tk.ENDOFTEXT, pad_token_id=tk.ENDOFTEXT, eos_token_id=[tk.ENDOFTEXT, tk.END],
        audio_config=audio, vision_config=vision)
    config.architectures = ['Phi4MultimodalForCausalLM']

    torch.manual_seed(recipe['seed'])
    model = Phi4MultimodalForCausalLM(config)
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = [tk.END, tk.ENDOFTEXT], tk.ENDOFTEXT, tk.ENDOFTEXT
    # A random model samples any id; an audio or image token in a completion breaks the next forward (it
    # would be taken for a media position). Suppress every added token but the end-of-turn <|end|>, and
    # the unused ids past the tokenizer's table.
    gen.suppress_tokens = sorted(i for i in range(tk.NUM_RANKS, tk.VOCAB_SIZE) if i != tk.END)
    model.save_pretrained(str(out), safe_serialization=True)
    processor.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))

    # A random speech LoRA in the native hub layout (speech-lora/ as a PEFT adapter folder).
    lora = LoraConfig(r=recipe['speech_lora_rank'], lora_alpha=recipe['speech_lora_alpha'], lora_dropout=0.01,
                      target_modules=['qkv_proj', 'o_proj', 'gate_up_proj', 'down_proj'],
                      layers_to_transform=list(range(recipe['num_hidden_layers'])), layers_pattern='layers',
                      init_lora_weights=False, task_type='CAUSAL_LM')
    torch.manual_seed(recipe['seed'] + 1)
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():  # a visible but bounded effect on the tiny weights
        for name, p in peft_model.named_parameters():
            if 'lora_' in name:
                p.mul_(0.5)
    peft_model.save_pretrained(str(out / 'speech-lora'), safe_serialization=True)
    (out / 'speech-lora' / 'README.md').unlink(missing_ok=True)  # peft's model-card stub
    cfg = out / 'speech-lora' / 'adapter_config.json'
    data = json.loads(cfg.read_text())
    data['base_model_name_or_path'] = 'TBA'  # as in the official folder: no path to a base
    cfg.write_text(json.dumps(data, indent=1))
