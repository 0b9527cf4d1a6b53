"""Measure the speech/text hidden-state similarity of every layer for one model on one dataset
(docs/original.md §8, ``analysis_and_draw.py``); writes ``layer_stats.json`` and
``layer_similarity.{png,pdf}`` to a new directory ``<output_root>/<dataset-name>--<model-name>/`` and
prints that directory on stdout (logs go to stderr).

    python -m scripts.layer_similarity_analysis.measure                 # the embedded tiny default
    python -m scripts.layer_similarity_analysis.measure --model CKPT --dataset DATA [--split test]
        [--text_responses FILE.jsonl | --eval_dir output/eval --eval_dataset MMSU | --max_new_tokens 512]
        [--base_model BASE] [--batch_size 8] [--max_samples N] [--prompt_type systhink]
        [--output_root DIR | --out_dir DIR]

Text responses (teacher-forced after both prompts): ``--text_responses`` a JSONL file of
{"key", "output" (or "llm_output")} or an ``eval.qa`` run directory; ``--eval_dir``/``--eval_dataset`` the
model's own text-mode results written by ``eval.qa --out EVAL_DIR --dataset EVAL_DATASET=...``; else
greedy generation by the model (``--max_new_tokens``).

``layer_stats.json``: ``layers`` (0-based: entry i is layer i + 1, embeddings excluded), ``means``,
``ci_lower``, ``ci_upper`` (token-by-token cosine, the original's measure, 95 % t-interval), the same with
the prefix ``pooled_`` (cosine of mean-pooled states, the reward's measure), ``stds``, ``n_samples``,
``n_skipped`` and ``skipped`` ({key, reason}), and the settings of the run.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from typing import Optional, Sequence

# OpenMP threads that spin while waiting are very slow when the cores are shared with other work: on this
# 2-core machine under load, greedy generation on the tiny model took 5.7 s for 16 questions with the
# default (active) policy and 1.7 s with the passive one. Read when torch loads, so set before importing it
# (the imports below load torch, hence their place after this line).
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

from trainer.model_loading import add_trust_remote_code_argument  # noqa: E402
from trainer.schema import load_hf_dataset, validate_dataset  # noqa: E402

from . import analysis, outputs, plots, responses  # noqa: E402
from .defaults import embedded_default  # noqa: E402
from .models import load_model  # noqa: E402

log = logging.getLogger('layer_similarity')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', help='base, merged or LoRA checkpoint (default: the embedded GRPO checkpoint, '
                                   'else the embedded warm start)')
    p.add_argument('--base_model', help="a LoRA checkpoint's base (default: its adapter_config.json's)")
    p.add_argument('--model_type', default=None,
                   help="ms-swift model type (trainer.presets); default: the checkpoint's own, else qwen2_5_omni")
    p.add_argument('--dataset', help='hf_format dataset, save_to_disk path or hub id (default: the embedded set)')
    p.add_argument('--split', default='test')
    p.add_argument('--text_responses', help='JSONL of {"key", "output" or "llm_output"} (or an eval.qa run '
                                            'directory): the text responses to teacher-force (default: greedy '
                                            'generation with the model)')
    p.add_argument('--eval_dir', help="eval.qa's output root: take the model's text-mode results from there")
    p.add_argument('--eval_dataset', help='the dataset label used in eval.qa (with --eval_dir)')
    p.add_argument('--max_new_tokens', type=int, default=512, help='length limit of generated responses')
    p.add_argument('--prompt_type', default='systhink')
    p.add_argument('--max_samples', type=int, default=None)
    p.add_argument('--batch_size', type=int, default=8, help='samples per forward (each is a text and a speech row)')
    p.add_argument('--device', default='auto')
    p.add_argument('--torch_dtype', default='auto', help='auto: bfloat16 on GPU, float32 on CPU')
    p.add_argument('--output_root', type=Path, default=None, help='default: output/layer_similarity')
    p.add_argument('--out_dir', type=Path, default=None, help='exact run directory (must not exist yet)')
    p.add_argument('--dataset_name', help='name of the dataset in the directory name (default: from its path)')
    p.add_argument('--model_name', help='name of the model in the directory name (default: from its path)')
    p.add_argument('--ylim', type=float, nargs=2, default=None)
    add_trust_remote_code_argument(p)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Path:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format='%(asctime)s %(name)s: %(message)s')
    args = parse_args(argv)
    if args.eval_dir and (args.text_responses or not args.eval_dataset):
        raise SystemExit('--eval_dir needs --eval_dataset and excludes --text_responses')
    if args.model is None or args.dataset is None:
        default = embedded_default()
        if args.dataset is None:
            args.dataset = default['dataset']
        if args.model is None:
            args.model = default['checkpoint'] or default['warm']
            args.base_model = args.base_model or default['base_model']
    if args.eval_dir:
        path = responses.eval_results_path(args.eval_dir, args.model, args.eval_dataset, args.prompt_type,
                                           args.base_model)
        if not path.is_file():
            raise SystemExit(f'no text-mode results of {args.model} at {path}: run `python -m eval.qa --modes text '
                             f'--out {args.eval_dir} --dataset {args.eval_dataset}=...` first, or omit --eval_dir '
                             'to generate the responses')
        args.text_responses = str(path)
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=False)  # an existing directory is never written into
        run_dir = args.out_dir
    else:
        run_dir = outputs.new_run_dir(args.output_root or outputs.DEFAULT_ROOT,
                                      args.dataset_name or outputs.short_name(args.dataset),
                                      args.model_name or outputs.short_name(args.model))
    log.info('model %s, dataset %s [%s] -> %s', args.model, args.dataset, args.split, run_dir)

    ds = load_hf_dataset(args.dataset, args.split)
    if args.max_samples is not None:
        ds = ds.select(range(min(args.max_samples, len(ds))))
    validate_dataset(ds, f'{args.dataset}[{args.split}]')
    rows = list(ds)

    started = time.perf_counter()
    loaded = load_model(args.model, args.base_model, args.model_type, args.device, args.torch_dtype,
                        args.trust_remote_code)
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    if args.text_responses:
        by_key = responses.load_text_responses(args.text_responses)
        texts = [by_key.get(r['key']) for r in rows]
        source = args.text_responses
    else:
        texts = responses.generate_text_responses(loaded.thinker, loaded.processor, rows, args.prompt_type,
                                                  args.max_new_tokens, args.batch_size)
        source = f'generated (greedy, max_new_tokens={args.max_new_tokens})'
    response_seconds = time.perf_counter() - started

    result = analysis.measure(loaded.thinker, loaded.processor, rows, texts, prompt_type=args.prompt_type,
                              batch_size=args.batch_size, progress=sys.stderr.isatty())
    result.update({
        'model': args.model, 'base_model': loaded.base_model, 'dataset': args.dataset, 'split': args.split,
        'prompt_type': args.prompt_type, 'text_responses': source, 'batch_size': args.batch_size,
        'n_rows': len(rows),
        'measures': {'token': 'mean over response tokens of cos(text state, speech state) (the original)',
                     'pooled': 'cos(mean-pooled text states, mean-pooled speech states) (the reward)'},
        'layer_numbering': 'layers are 0-based: entry i is layer i + 1 = hidden_states[i + 1] '
                           '(embeddings excluded; the last layer after the final norm)',
        'seconds': {'load': load_seconds, 'responses': response_seconds, 'measure': result.pop('measure_seconds')},
    })
    outputs.write_stats(run_dir, result)
    if result['n_samples'] == 0:
        log.error('no sample could be compared (%d skipped); no plot written', result['n_skipped'])
        raise SystemExit(1)
    plots.plot_run(result, run_dir / outputs.PLOT_STEM,
                   title=f"{outputs.short_name(args.dataset)} / {outputs.short_name(args.model)}: "
                         f"n = {result['n_samples']}, 95 % t-intervals", ylim=args.ylim)
    log.info('%d samples compared, %d skipped; results in %s', result['n_samples'], result['n_skipped'], run_dir)
    print(run_dir)
    return run_dir


if __name__ == '__main__':
    main()
