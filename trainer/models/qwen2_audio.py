"""Qwen2-Audio (``Qwen/Qwen2-Audio-7B-Instruct``) registered with ms-swift against transformers' native
``Qwen2AudioForConditionalGeneration`` (docs/design.md §4; issue 6).

ms-swift 4.6 registers ``qwen2_audio`` for transformers < 4.49 only, and two of its pieces do not fit
transformers 5:

* its model architecture names the pre-5 module layout (``language_model``, ``audio_tower``), while the
  native class nests them under ``model.`` (``model.language_model``, ``model.audio_tower``,
  ``model.multi_modal_projector``): LoRA targets, freezing and our hidden-state hooks need the new paths;
* its template keeps one ``<|AUDIO|>`` per audio and lets the model expand it (the "legacy" merge of the
  native class, which rewrites the sequence inside the forward). Then the input ids ms-swift sees are not
  the sequence the LLM runs on, so completion positions, log-probs and hidden states do not line up.
  The template below expands each ``<|AUDIO|>`` to one token per encoder output frame before the model,
  as ``Qwen2AudioProcessor`` does, so the model takes its non-legacy path (a plain scatter).

Both are registered under ms-swift's own names (model type and template ``qwen2_audio``) through its
public ``register_model_arch`` / ``register_template`` / ``register_model`` with ``exist_ok=True``; the
architecture gets a name of its own, so ms-swift's ``qwen2_audio`` architecture entry is left as it is.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Dict

MODEL_TYPE = 'qwen2_audio'
ARCH = 'tars_qwen2_audio'  # the transformers 5 module layout of Qwen2AudioForConditionalGeneration
AUDIO_TOKEN = '<|AUDIO|>'
# Qwen2AudioModel treats input ids without two adjacent <|AUDIO|> as unexpanded (its legacy path)
MIN_AUDIO_TOKENS = 2


def audio_token_count(feature_frames: int) -> int:
    """Audio tokens of one clip from its mel frame count: the encoder's stride-2 convolution, then its
    stride-2 average pooling (``Qwen2AudioEncoder._get_feat_extract_output_lengths``)."""
    after_conv = (feature_frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


@lru_cache(maxsize=None)
def template_class() -> type:
    """The ``qwen2_audio`` template class (built on first use: ms-swift is imported lazily)."""
    from swift.template.templates.qwen import Qwen2AudioTemplate as SwiftQwen2AudioTemplate
    from swift.template.utils import findall
    from swift.utils import to_float_dtype

    class Qwen2AudioTemplate(SwiftQwen2AudioTemplate):
        """ms-swift's Qwen2-Audio template (placeholder text, features, collation) plus the expansion of
        each ``<|AUDIO|>`` to its clip's number of audio tokens. Text-only rows are left unchanged; the
        collator concatenates the features of the rows that have audio, in row order, which is the order
        the model scatters them into the ``<|AUDIO|>`` positions of a mixed batch."""
        placeholder_tokens = [AUDIO_TOKEN]

        def _encode(self, inputs) -> Dict[str, Any]:
            encoded = super()._encode(inputs)
            if not inputs.audios:
                return encoded
            frames = encoded['feature_attention_mask'].sum(-1).tolist()
            counts = [audio_token_count(int(f)) for f in frames]
            if min(counts) < MIN_AUDIO_TOKENS:
                # one token (or none) would send the model down its legacy path, which expands again
                names = [a if isinstance(a, str) else type(a).__name__ for a in inputs.audios]
                raise ValueError(f'qwen2_audio template: an audio of {names} is too short '
                                 f'({min(frames)} mel frames -> {min(counts)} audio tokens; '
                                 f'at least {MIN_AUDIO_TOKENS} needed, i.e. about 70 ms)')
            audio_id = self.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
            positions = findall(encoded['input_ids'], [audio_id])
            if len(positions) != len(counts):
                raise ValueError(f'qwen2_audio template: {len(positions)} {AUDIO_TOKEN} placeholders for '
                                 f'{len(counts)} audios in {inputs.messages!r}')
            input_ids, labels, loss_scale = self._extend_tokens(encoded['input_ids'], encoded['labels'],
                                                                encoded.get('loss_scale'), positions,
                                                                lambda i: [audio_id] * counts[i])
            encoded['input_ids'], encoded['labels'], encoded['loss_scale'] = input_ids, labels, loss_scale
            features = {'input_features': encoded['input_features']}
            encoded.update(to_float_dtype(features, self.model_info.torch_dtype))
            return encoded

    return Qwen2AudioTemplate


def register() -> None:
    """Register the ``qwen2_audio`` architecture, template and model type with ms-swift (idempotent)."""
    from swift.model import Model, ModelGroup, ModelMeta, MultiModelKeys, register_model, register_model_arch
    from swift.model.models.qwen import Qwen2AudioLoader
    from swift.template import register_template
    from swift.template.templates.qwen import QwenTemplateMeta

    register_model_arch(MultiModelKeys(ARCH, language_model=['model.language_model', 'lm_head'],
                                       aligner='model.multi_modal_projector', vision_tower='model.audio_tower'),
                        exist_ok=True)
    register_template(QwenTemplateMeta(MODEL_TYPE, template_cls=template_class()), exist_ok=True)
    register_model(ModelMeta(
        MODEL_TYPE,
        [ModelGroup([Model('Qwen/Qwen2-Audio-7B-Instruct', 'Qwen/Qwen2-Audio-7B-Instruct'),
                     Model('Qwen/Qwen2-Audio-7B', 'Qwen/Qwen2-Audio-7B')], MODEL_TYPE)],
        Qwen2AudioLoader,  # loads Qwen2AudioForConditionalGeneration
        template=MODEL_TYPE,
        model_arch=ARCH,
        architectures=['Qwen2AudioForConditionalGeneration'],
        is_multimodal=True,
        requires=['transformers>=5', 'librosa'],
        tags=['audio'],
    ), exist_ok=True)
