"""Phi-4-multimodal (``microsoft/Phi-4-multimodal-instruct``) registered with ms-swift against transformers'
native ``Phi4MultimodalForCausalLM`` (docs/design.md §4; docs/original.md §2.1, §2.2; issue 6).

ms-swift 4.6 registers ``phi4_multimodal`` for the checkpoint's remote code (transformers < 4.49). The
native class differs from it in the three places the original relies on:

* **LoRAs.** The remote code carries the official speech and vision LoRAs inside the model and switches
  them with ``input_mode`` (0 text, 1 vision, 2 speech). The native format keeps them as PEFT adapter
  folders next to the weights (``speech-lora/``, ``vision-lora/``) and has no ``input_mode``. The
  original merges the speech LoRA into the base and then runs every forward, speech or text, in speech
  mode (docs/original.md §2.1). Here the loader does the same: a checkpoint with ``speech-lora/`` gets it merged
  on load (``trainer.models.phi4_speech_base``), and a "speech base" written by that module (no
  ``speech-lora/`` folder) is loaded as it is. Either way the policy is base + speech LoRA, which is
  what "speech mode" means in the native format.
* **Audio tokens.** The remote processor expands ``<|audio_1|>`` into N copies of token 200011; the native
  processor expands its ``tokenizer.audio_token``. The template below expands ms-swift's ``<audio>`` tag
  to ``audio_embed_sizes`` copies of the audio token id itself, before the model, so completion
  positions, log-probs and hidden states line up with the sequence the LLM runs on.
* **Features.** ``audio_input_features`` [clips, frames, 80], ``audio_embed_sizes`` and, when clips of
  different lengths share a batch, ``audio_attention_mask`` (the original's ``input_audio_embeds`` /
  ``audio_embed_sizes`` / ``audio_attention_mask``). Text-only rows carry no features: the native model
  scatters the clips of a batch into its audio-token positions in row order, so mixed speech/text
  batches need no zero placeholder (the remote code's training assertion is gone).

Module names also changed: the audio encoder's linears are now called ``o_proj``, ``gate_up_proj``,
``down_proj`` like the LLM's, so the original's LoRA target names would also hit the encoder; the
preset's LoRA targets are the linears under the LLM's decoder layers only (``LORA_TARGET_REGEX``).

Registered under ms-swift's own names (model type and template ``phi4_multimodal``) through its public
``register_model_arch`` / ``register_template`` / ``register_model`` with ``exist_ok=True``; the
architecture gets a name of its own. No remote code is executed (``trust_remote_code`` off).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Dict, List, Sequence

from trainer.models.phi4_speech_base import merge_speech_lora, speech_lora_dir

MODEL_TYPE = 'phi4_multimodal'
ARCH = 'tars_phi4_multimodal'  # module layout of transformers' native Phi4MultimodalForCausalLM
CHECKPOINT = 'microsoft/Phi-4-multimodal-instruct'
SAMPLING_RATE = 16000
AUDIO_PLACEHOLDER = -200  # id the template puts where <audio> was, replaced by the audio tokens in _encode
VLLM_AUDIO_PLACEHOLDER = '<|audio_1|>'  # the prompt text vLLM's Phi4MM expects (docs/original.md §7)

# The original's adapter targets (docs/original.md §2.1): qkv_proj, o_proj, gate_up_proj, down_proj of every decoder
# layer. The project's LoRA defaults (trainer.grpo LORA_DEFAULTS: r 8, alpha 32, dropout 0.05,
# ``--target_modules all-linear``, ``--freeze_vit/--freeze_aligner true``) give exactly these modules for
# this preset: ms-swift resolves all-linear over the architecture's ``language_model`` (``model.layers``),
# whose only linears are these four. This regex states the set (tests check the trained adapter against it).
LORA_TARGET_REGEX = r'^model\.layers\.\d+\.(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj))$'


@lru_cache(maxsize=None)
def template_class() -> type:
    """The ``phi4_multimodal`` template class (built on first use: ms-swift is imported lazily)."""
    from swift.template import Template
    from swift.template.utils import findall
    from swift.template.vision_utils import load_audio

    class Phi4MultimodalTemplate(Template):
        """Phi-4 prompt layout with each ``<audio>`` expanded to its clip's number of audio tokens."""

        def replace_tag(self, media_type, index, inputs):
            if media_type != 'audio':
                raise ValueError(f'the {MODEL_TYPE} preset takes audio only; got a {media_type} in {inputs.messages!r}')
            if self.mode == 'vllm':  # vLLM's processor expands the placeholder itself
                return [VLLM_AUDIO_PLACEHOLDER]
            inputs.audios[index] = load_audio(inputs.audios[index], SAMPLING_RATE)
            return [[AUDIO_PLACEHOLDER]]

        def _encode(self, inputs) -> Dict[str, Any]:
            encoded = super()._encode(inputs)
            positions = findall(encoded['input_ids'], AUDIO_PLACEHOLDER)
            if not positions:
                return encoded
            if len(positions) != len(inputs.audios):
                raise ValueError(f'{MODEL_TYPE} template: {len(positions)} <audio> tags for {len(inputs.audios)} '
                                 f'audios in {inputs.messages!r}')
            audio_id = self.processor.audio_token_id
            clips = [self.processor.audio_processor([a], sampling_rate=SAMPLING_RATE, return_tensors='pt')
                     for a in inputs.audios]
            sizes = [int(c['audio_embed_sizes'][0]) for c in clips]
            input_ids, labels, loss_scale = self._extend_tokens(encoded['input_ids'], encoded['labels'],
                                                                encoded.get('loss_scale'), positions,
                                                                lambda i: [audio_id] * sizes[i])
            encoded['input_ids'], encoded['labels'], encoded['loss_scale'] = input_ids, labels, loss_scale
            encoded['audio_input_features'] = [c['audio_input_features'][0] for c in clips]  # [frames, 80] each
            encoded['audio_embed_sizes'] = sizes
            return encoded

        def _data_collator_mm_data(self, batch: List[Dict[str, Any]]) -> Dict[str, Any]:
            res = super()._data_collator_mm_data(batch)
            clips = [f for b in batch for f in (b.get('audio_input_features') or [])]
            if not clips:
                return res
            sizes = [s for b in batch for s in (b.get('audio_embed_sizes') or [])]
            res.update(collate_audio(clips, sizes, self.model_info.torch_dtype))
            return res

    return Phi4MultimodalTemplate


def collate_audio(clips: Sequence[Any], sizes: Sequence[int], dtype: Any = None) -> Dict[str, Any]:
    """Batch per-clip log-mel features [frames_i, 80] as the native feature extractor does for a batch:
    zero padding to the longest clip, and a frame mask when there is more than one clip."""
    import torch
    frames = [c.shape[0] for c in clips]
    features = torch.zeros(len(clips), max(frames), clips[0].shape[-1], dtype=dtype or clips[0].dtype)
    for i, clip in enumerate(clips):
        features[i, :frames[i]] = clip
    out = {'audio_input_features': features, 'audio_embed_sizes': torch.tensor(sizes, dtype=torch.long)}
    if len(clips) > 1:
        out['audio_attention_mask'] = torch.arange(max(frames))[None, :] < torch.tensor(frames)[:, None]
    return out


@lru_cache(maxsize=None)
def loader_class() -> type:
    from swift.model.register import ModelLoader

    class Phi4MultimodalLoader(ModelLoader):
        """Loads ``Phi4MultimodalForCausalLM`` and its processor without remote code; merges the official
        speech LoRA when the checkpoint still has it as ``speech-lora/`` (docs/original.md §2.1)."""
        default_trust_remote_code = False

        def get_processor(self, model_dir, config):
            from transformers import Phi4MultimodalProcessor
            processor = Phi4MultimodalProcessor.from_pretrained(model_dir)
            if processor.chat_template is None:  # its from_pretrained drops chat_template.jinja (transformers 5.19)
                processor.chat_template = processor.tokenizer.chat_template
            return processor

        def get_model(self, model_dir, config, processor, model_kwargs):
            from transformers import Phi4MultimodalForCausalLM
            self.auto_model_cls = self.auto_model_cls or Phi4MultimodalForCausalLM
            model = super().get_model(model_dir, config, processor, model_kwargs)
            lora = speech_lora_dir(model_dir)
            if lora is not None and not self.return_dummy_model:
                model = merge_speech_lora(model, lora)
            return model

    return Phi4MultimodalLoader


def register() -> None:
    """Register the ``phi4_multimodal`` architecture, template and model type with ms-swift (idempotent)."""
    from swift.model import Model, ModelGroup, ModelMeta, MultiModelKeys, register_model, register_model_arch
    from swift.template import TemplateMeta, register_template

    ext = 'model.embed_tokens_extend.'
    register_model_arch(MultiModelKeys(
        ARCH, language_model='model.layers',
        aligner=[ext + 'audio_embed.' + p for p in ('up_proj_for_speech', 'down_proj_for_speech',
                                                     'up_proj_for_vision_speech', 'down_proj_for_vision_speech')]
        + [ext + 'image_embed.img_projection_up', ext + 'image_embed.img_projection_down'],
        vision_tower=[ext + 'audio_embed.encoder', ext + 'image_embed.img_processor'],
        embedding='model.embed_tokens', module_list='model.layers', lm_head='lm_head'), exist_ok=True)
    register_template(TemplateMeta(
        MODEL_TYPE, prefix=[], prompt=['<|user|>{{QUERY}}<|end|><|assistant|>'], chat_sep=['<|end|>'],
        suffix=['<|end|>'], system_prefix=['<|system|>{{SYSTEM}}<|end|>'], stop_words=['<|end|>'],
        template_cls=template_class()), exist_ok=True)
    register_model(ModelMeta(
        MODEL_TYPE,
        [ModelGroup([Model('LLM-Research/Phi-4-multimodal-instruct', CHECKPOINT)], MODEL_TYPE)],
        loader_class(),
        template=MODEL_TYPE,
        model_arch=ARCH,
        architectures=['Phi4MultimodalForCausalLM'],
        is_multimodal=True,
        requires=['transformers>=5', 'peft', 'soundfile'],
        tags=['audio'],
    ), exist_ok=True)
