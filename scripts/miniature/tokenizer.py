"""A small byte-level BPE tokenizer for the miniature world, loadable as Qwen2.5-Omni's (docs/miniature.md).

The real Qwen tokenizer has 151k tokens, so a small model's output layer would be mostly that one matrix. This
one is trained with the ``tokenizers`` library on the world's text only, and is saved in the same form as the
tiny twin's tokenizer (scripts.recipes.tiny_models): ``AutoTokenizer.from_pretrained`` loads it as a
``Qwen2Tokenizer`` with the Omni chat template and the processor's named tokens (audio_token, ...), so a
``Qwen2_5OmniProcessor`` can be built on it.

Pipeline: the one ``Qwen2Tokenizer`` rebuilds when it loads a tokenizer.json (NFC, the Qwen pre-tokenizer
regex, byte-level with no prefix space, byte-level decoding), so encoding here and after loading agree.

Id layout (a later model is built with ``vocab_size=len(tokenizer)``):
  - 0..21: Qwen2.5-Omni's added tokens (QWEN2_5_OMNI_ADDED_TOKENS) in the real checkpoint's order, i.e.
    id = real id - 151643: <|endoftext|> 0 (padding), <|im_start|> 1, <|im_end|> 2 (end of turn), <|AUDIO|> 3,
    <|audio_bos|> 4, <|audio_eos|> 5, ... <|file_sep|> 21. Small ids keep the special rows of the embedding at
    the front; each is an added token, so it is never split (<tool_call> and </tool_call> are added but not
    special, as in the real checkpoint).
  - 22..277: the 256 byte-level symbols, so every string encodes (no unknown token) and decodes back exactly.
  - 278..: the merges learned from the corpus, most frequent first, up to vocab_size in all.

Corpus (``world_corpus``): for every item, its conversations rendered with the Omni chat template (systhink
system prompt, the text prompt or the audio placeholder, the systhink answer with the thinking text) cut at the
special tokens, as encoding cuts them, plus each option; and the template's default system prompt once.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional

import jinja2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, \
    trainers
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from scripts.miniature.world import World, WorldConfig, generate_world
from scripts.recipes.tiny_models import (QWEN2_5_OMNI_ADDED_TOKENS, QWEN2_5_OMNI_CHAT_TEMPLATE,
                                         QWEN2_5_OMNI_EXTRA_SPECIAL_TOKENS, QWEN2_5_OMNI_SYSTEM, SPECIAL_FLAGS,
                                         default_cache_dir, qwen_tokenizer_config)
from trainer import prompts

TOKENIZER_VERSION = 1        # bump when the corpus or the file layout changes (a new cache directory)
DEFAULT_VOCAB_SIZE = 2048    # a cap: the world's text saturates below it (every frequent word one token)
MIN_FREQUENCY = 2
SPECIAL_TOKENS = [QWEN2_5_OMNI_ADDED_TOKENS[i] for i in sorted(QWEN2_5_OMNI_ADDED_TOKENS)]   # ids 0..21
_SPECIAL_SPLIT = re.compile('|'.join(re.escape(t) for t in SPECIAL_TOKENS))


@functools.lru_cache(maxsize=1)
def _chat_template() -> jinja2.Template:
    return jinja2.Template(QWEN2_5_OMNI_CHAT_TEMPLATE)   # compiled once: compiling costs more than rendering


def render_chat(messages: List[dict]) -> str:
    """messages rendered with the Qwen2.5-Omni chat template (as tokenizer.apply_chat_template would)."""
    return _chat_template().render(messages=messages, add_generation_prompt=False)


def between_special_tokens(text: str) -> List[str]:
    """The non-empty pieces of text between the special tokens: what the BPE model sees when text is encoded."""
    return [p for p in _SPECIAL_SPLIT.split(text) if p]


def item_conversations(prompt_for_tts: str, answer: str) -> List[List[dict]]:
    """The two systhink conversations of an item: the text prompt, and the speech prompt (an audio part,
    rendered as <|audio_bos|><|AUDIO|><|audio_eos|>), each followed by the answer (trainer.prompts' texts)."""
    text = prompts.build_messages('systhink', 'text', prompt_for_tts, answer=answer)
    speech = prompts.build_messages('systhink', 'speech', answer=answer)
    for m in speech:
        if m['role'] == 'user':   # the chat template's audio part instead of ms-swift's '<audio>' tag
            m['content'] = [{'type': 'audio', 'audio': 'clip.wav'}, {'type': 'text', 'text':
                                                                     m['content'].replace(prompts.AUDIO_TAG, '')}]
    return [text, speech]


def world_corpus(world: World) -> Iterator[str]:
    """The training text of the tokenizer: every item's conversations (cut at the special tokens) and options,
    then a conversation with the template's default system prompt."""
    for item in world.items():
        for messages in item_conversations(item.prompt_for_tts, item.systhink_answer):
            yield from between_special_tokens(render_chat(messages))
        yield from item.options
    yield from between_special_tokens(render_chat([{'role': 'user', 'content': QWEN2_5_OMNI_SYSTEM}]))


def new_tokenizer() -> Tokenizer:
    """An empty byte-level BPE with Qwen2Tokenizer's normaliser, pre-tokeniser and decoder."""
    tok = Tokenizer(models.BPE(dropout=None, unk_token=None, continuing_subword_prefix='', end_of_word_suffix='',
                               fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior='isolated', invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def train_tokenizer(texts: Iterator[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train the BPE on texts: the special tokens at ids 0..21, the byte alphabet next, then merges of pairs
    seen at least MIN_FREQUENCY times, up to vocab_size tokens."""
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size={vocab_size} cannot hold {len(SPECIAL_TOKENS)} special tokens and 256 bytes")
    tok = new_tokenizer()
    special = [AddedToken(t, special=SPECIAL_FLAGS.get(t, True), normalized=False) for t in SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=MIN_FREQUENCY, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(t) != i:
            raise RuntimeError(f"special token {t!r} got id {tok.token_to_id(t)}, expected {i}")
    return tok


def save_tokenizer(tok: Tokenizer, out: Path) -> None:
    """tokenizer.json (added tokens flagged as the real checkpoint flags them) and the Qwen tokenizer_config.json
    with the Omni chat template, into the existing folder out."""
    data = json.loads(tok.to_str())
    for entry in data['added_tokens']:
        entry['special'] = SPECIAL_FLAGS.get(entry['content'], True)
    (out / 'tokenizer.json').write_text(json.dumps(data, ensure_ascii=False))
    config = qwen_tokenizer_config(data['added_tokens'], QWEN2_5_OMNI_CHAT_TEMPLATE,
                                   QWEN2_5_OMNI_EXTRA_SPECIAL_TOKENS)
    (out / 'tokenizer_config.json').write_text(json.dumps(config, indent=1, ensure_ascii=False))


def tokenizer_recipe(config: WorldConfig, vocab_size: int) -> dict:
    """Everything that shapes the tokenizer (its cache directory is named by a hash of it)."""
    import tokenizers
    return {'world': dataclasses.asdict(config), 'vocab_size': vocab_size, 'min_frequency': MIN_FREQUENCY,
            'version': TOKENIZER_VERSION, 'tokenizers': tokenizers.__version__}


def build_tokenizer(out: Path, config: Optional[WorldConfig] = None, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Train the tokenizer of config's world and save it into the folder out (created); return out."""
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(train_tokenizer(world_corpus(generate_world(config or WorldConfig())), vocab_size), out)
    return out


def tokenizer_dir(config: Optional[WorldConfig] = None, vocab_size: int = DEFAULT_VOCAB_SIZE,
                  cache_dir: Optional[Path] = None) -> Path:
    """The cached tokenizer of config's world, ``<cache>/miniature/tokenizer-<recipe hash>``, built first when
    missing (in a temporary folder renamed into place, so a killed build leaves nothing half-written)."""
    config = config or WorldConfig()
    recipe = tokenizer_recipe(config, vocab_size)
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir or default_cache_dir()) / 'miniature'
    out = root / f'tokenizer-{digest}'
    if (out / 'recipe.json').exists():
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix='.tokenizer-', dir=root))
    try:
        build_tokenizer(tmp, config, vocab_size)
        (tmp / 'recipe.json').write_text(json.dumps(recipe, indent=1))
        if not out.exists():   # else built meanwhile by another process
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    """Command line: build (or find) the cached tokenizer and print its folder and size."""
    p = argparse.ArgumentParser(description='Train (or find) the miniature world\'s small tokenizer.')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--vocab_size', type=int, default=DEFAULT_VOCAB_SIZE)
    p.add_argument('--cache_dir', default=None)
    a = p.parse_args()
    out = tokenizer_dir(WorldConfig(seed=a.seed), a.vocab_size, Path(a.cache_dir) if a.cache_dir else None)
    size = Tokenizer.from_file(str(out / 'tokenizer.json')).get_vocab_size(with_added_tokens=True)
    print(f"{out} ({size} tokens)")


if __name__ == '__main__':
    main()
