"""Answer one question from its speech and/or its text with any preset:

    python -m infer.answer --model M [--base_model B] --audio question.wav
    python -m infer.answer --model M --text "Which ...?\\n\\nOption A: ...\\nOption B: ..."

Prints the completion of each given input and the extracted answer letter.
"""
from __future__ import annotations

import argparse
import re
from typing import List, Optional, Sequence

from trainer.answer import extract_choice
from trainer.engine import add_engine_arguments, build_engine, generate, resolve_model
from trainer.model_loading import add_trust_remote_code_argument
from trainer.modes import build_request
from trainer.prompts import PROMPT_TYPES

OPTION_LINE = re.compile(r'^\s*Option\s+([A-J])\s*:\s*(.+)$', re.MULTILINE)


def options_in(text: Optional[str], default_count: int = 4) -> List[str]:
    """The option texts written as 'Option X: ...' lines, else placeholders for A-D."""
    found = OPTION_LINE.findall(text or '')
    return [t for _, t in found] if found else [''] * default_count


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m infer.answer``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_arguments(p, max_new_tokens=512, batch_size=None)  # at most two requests: one batch of 2
    p.add_argument('--audio', default=None, help='a WAV/FLAC file with the spoken question and options')
    p.add_argument('--text', default=None, help='the question and options as text')
    p.add_argument('--prompt_type', default='systhink', choices=PROMPT_TYPES)
    add_trust_remote_code_argument(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    if not args.audio and not args.text:
        p.error('give --audio and/or --text')
    spec = resolve_model(args.model, args.base_model, args.model_type)
    engine = build_engine(spec, args.backend, batch_size=2, trust_remote_code=args.trust_remote_code)
    inputs = [('speech', build_request('audio', args.prompt_type, '', audio_path=args.audio))] if args.audio else []
    if args.text:
        inputs.append(('text', build_request('text', args.prompt_type, args.text.replace('\\n', '\n'))))
    outputs = generate(engine, [r for _, r in inputs], spec, True, args.max_new_tokens)
    options = options_in(args.text)
    for (name, _), out in zip(inputs, outputs, strict=True):
        print(f'--- {name} ---\n{out}\nanswer: {extract_choice(out, options)}')


if __name__ == '__main__':
    from trainer.cli import run_main
    run_main(main, 'infer.answer')
