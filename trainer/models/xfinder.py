"""The xFinder answer judge (``IAAR-Shanghai/xFinder-qwen1505``) registered with ms-swift.

xFinder-qwen1505 is a fine-tune of Qwen1.5-0.5B (transformers ``Qwen2ForCausalLM``) trained with xtuner's
``default`` prompt template, not ChatML:

    <|System|>:{system}\\n<|User|>:{input}\\n<|Bot|>:

ms-swift 4.6 has no model type for it (older ms-swift releases called Qwen1.5 ``qwen1half``, and their
template was ChatML anyway), so the judge gets a model type and a template of its own, both named
``xfinder_qwen1505``, through ms-swift's public ``register_template`` / ``register_model``. The model is
loaded by ms-swift's plain causal-LM loader with its ``llama``-style module layout (as ms-swift's own
``qwen2`` type). The judge is not a training preset: it is not in ``trainer.presets.PRESETS``.
"""
from __future__ import annotations

from typing import List

MODEL_TYPE = 'xfinder_qwen1505'
TEMPLATE_TYPE = MODEL_TYPE
CHECKPOINT = 'IAAR-Shanghai/xFinder-qwen1505'

# xtuner's ``default`` prompt template, which xFinder-qwen1505 was trained with and which xFinder's own
# inference code formats before tokenising the whole string (no BOS: Qwen's tokenizer adds none).
SYSTEM_PREFIX = '<|System|>:{{SYSTEM}}\n'
USER_PROMPT = '<|User|>:{{QUERY}}\n<|Bot|>:'
# The base model's end of text ends an answer (xtuner appends it to every training target); <|im_end|>
# is one of xFinder's own stop strings as well.
STOP_WORDS: List[str] = ['<|endoftext|>', '<|im_end|>']


def format_prompt(system: str, user: str) -> str:
    """The judge's prompt string for one request, as xFinder's inference code builds it."""
    return SYSTEM_PREFIX.replace('{{SYSTEM}}', system) + USER_PROMPT.replace('{{QUERY}}', user)


def register() -> None:
    """Register the ``xfinder_qwen1505`` template and model type with ms-swift (idempotent)."""
    from swift.model import Model, ModelGroup, ModelMeta, register_model
    from swift.model.model_arch import ModelArch
    from swift.template import TemplateMeta, register_template

    register_template(TemplateMeta(
        TEMPLATE_TYPE,
        prefix=[],
        prompt=[USER_PROMPT],
        chat_sep=None,  # a single-turn judge: no multi-round format was trained
        suffix=[['eos_token_id']],
        system_prefix=[SYSTEM_PREFIX],
        stop_words=list(STOP_WORDS),
    ), exist_ok=True)
    register_model(ModelMeta(
        MODEL_TYPE,
        [ModelGroup([Model(hf_model_id=CHECKPOINT)])],
        template=TEMPLATE_TYPE,
        model_arch=ModelArch.llama,
        architectures=['Qwen2ForCausalLM'],
        requires=['transformers>=4.37'],
    ), exist_ok=True)
