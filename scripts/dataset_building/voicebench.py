"""VoiceBench MMSU and OpenBookQA in the hf_format schema (docs/original.md §5.2, defects of §11.13 fixed).

Pipeline, one step per function:
  hub_source (hub) | parquet_source (local files) -> make_row (split_prompt, answer_from_reference)
  -> common.convert_rows (every clip decoded and re-encoded as 16 kHz mono 16-bit WAV; drops reported)
  -> common.save_build (DatasetDict 'train' + report.json).

Fixes over the original notebooks:
  - `question` is all the text before the option block, not only the prompt's first line;
  - the option block is the last run of lines labelled A., B., C., ... in order, so a question's own
    "I. ..." / "V. ..." statement lines stay in the question instead of becoming options, and an
    option's continuation lines stay in that option;
  - a row with fewer than 2 options, option letters out of order, an empty question or option, a
    reference letter that names no option, unreadable audio, or a repeated key is reported in
    report.json (key, reason) and left out; no value is ever guessed.

Sources (the hub's exact formats):
  hub:   datasets.load_dataset('hlt-lab/voicebench', CONFIG, split=SPLIT) for each split;
  local: --source_dir DIR holding the hub's parquet files. Accepted layouts, tried in this order:
           DIR/CONFIG/SPLIT-*.parquet  (a snapshot of the hub repository, e.g. mmsu/law-00000-of-00001.parquet)
           DIR/SPLIT-*.parquet         (the config folder itself)
           DIR/**/*.parquet            (anything else: every parquet file under DIR, in path order;
                                        for mmsu each file's stem is taken as its split name, for
                                        openbookqa all files form the split 'test', numbered on)
         For the first two layouts every split of the config must be present (mmsu: 12 splits), unless
         --splits names a subset.
  Each parquet file has the hub's columns; audio is the struct {bytes, path} of datasets.Audio.

Output (DIR given by --out):
  DIR/hf           DatasetDict {'train': ...} via save_to_disk. 'train' like the original's published
                   sets (VB_MMSU-full_3074_hf_format.v0, VB_OBQA-full_455_hf_format.v0), so
                   load_hf_dataset(DIR/hf) finds it without a fallback;
  DIR/report.json  rows read / kept / dropped (each drop with key, split, row and reason) and notes.
  Neither is replaced unless --overwrite is given.

    python -m scripts.dataset_building.voicebench --config mmsu|openbookqa --out DIR
                                                  [--source_dir DIR] [--splits a,b] [--limit N] [--overwrite]
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import datasets
import pyarrow.parquet as pq

from scripts.dataset_building.common import (BuildItem, PathLike, RowError, check_output_free, new_report, run_build,
                                             summary_text)
from trainer.schema import audio_undecoded

HUB_ID = 'hlt-lab/voicebench'
MMSU_SPLITS = ('law', 'engineering', 'other', 'biology', 'business', 'economics', 'health', 'philosophy',
               'psychology', 'history', 'chemistry', 'physics')
CONFIGS = {'mmsu': MMSU_SPLITS, 'openbookqa': ('test',)}
SOURCE_NAME = {'mmsu': 'mmsu', 'openbookqa': 'obqa'}
# Columns beyond the schema that the original's published sets carry.
EXTRA_FEATURES = {
    'mmsu': {'category': datasets.Value('string'), 'question_id': datasets.Value('int64')},
    'openbookqa': {'category': datasets.Value('string')},
}
OPTION_LINE = re.compile(r'^([A-Z])\.\s')
INSTRUCTION_LINE = re.compile(r'^\s*What is the answer to the above multiple choice question')
SplitFiles = List[Tuple[str, List[Path]]]   # [(split, its parquet files)]
SourceRows = Iterator[Tuple[str, int, Dict[str, Any]]]   # (split, idx in the split, source row)

# -----------------------------------------------------------------------------
# text


def split_prompt(prompt: Any) -> Tuple[str, List[str], List[str]]:
    """Split a VoiceBench prompt into (question, options, notes).

    The prompt is "{question}\\n{A. ...}\\n{B. ...}...\\nWhat is the answer to the above multiple choice
    question? ...". Options are the lines matching ^[A-Z]\\.\\s with that prefix removed (docs/original.md §5.2),
    taken as the last run of such lines labelled A, B, C, ... in order; lines between two option lines
    (and between the last one and the instruction line) continue the option above. The question is all
    the text before the option block. notes names what needed care. Raises RowError.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise RowError('empty_prompt', f"prompt is {prompt!r}")
    lines = prompt.splitlines()
    labelled = [(i, m.group(1), m.end()) for i, line in enumerate(lines) if (m := OPTION_LINE.match(line))]
    letters = [x[1] for x in labelled]
    start = next((j for j in range(len(labelled))
                  if letters[j:] == [chr(ord('A') + k) for k in range(len(labelled) - j)]), None)
    if start is None:
        if not labelled:
            raise RowError('fewer_than_2_options', "no line matches ^[A-Z]\\.\\s")
        raise RowError('option_letters_out_of_order',
                       f"option letters {''.join(letters)} do not end in a run A, B, C, ...")
    block = labelled[start:]
    if len(block) < 2:
        raise RowError('fewer_than_2_options', f"1 option ({lines[block[0][0]]!r})")

    notes = []
    first, last = block[0][0], block[-1][0]
    end = next((i for i in range(last + 1, len(lines)) if INSTRUCTION_LINE.match(lines[i])), None)
    if end is None:
        notes.append('no_instruction_line')
        end = len(lines)
    bounds = [x[0] for x in block] + [end]
    options = []
    for (i, _letter, cut), nxt in zip(block, bounds[1:], strict=False):
        parts = [lines[i][cut:].strip()] + [ln.strip() for ln in lines[i + 1:nxt] if ln.strip()]
        if len(parts) > 1:
            notes.append('multi_line_option')
        options.append("\n".join(parts))
    empty = [chr(ord('A') + k) for k, o in enumerate(options) if not o]
    if empty:
        raise RowError('empty_option', f"option {', '.join(empty)} is empty")

    question = "\n".join(lines[:first]).strip()
    if not question:
        raise RowError('empty_question', "no text before the first option line")
    if "\n" in question:
        notes.append('multi_line_question')
    if start > 0:
        notes.append('labelled_lines_in_question')
    return question, options, sorted(set(notes))


def answer_from_reference(reference: Any, n_options: int) -> int:
    """0-based answer index of a reference letter ('A' -> 0); RowError unless it names an option."""
    ref = reference.strip() if isinstance(reference, str) else reference
    if not isinstance(ref, str) or not re.fullmatch(r'[A-Z]', ref):
        raise RowError('bad_reference', f"reference {reference!r} is not a letter A-Z")
    index = ord(ref) - ord('A')
    if index >= n_options:
        raise RowError('reference_not_an_option',
                       f"reference {ref!r} but only {n_options} options (A-{chr(ord('A') + n_options - 1)})")
    return index


def make_key(config: str, src: Dict[str, Any], idx: int) -> str:
    """'{src}_{question_id}' for mmsu (e.g. 'ori_mmlu-jurisprudence_886'), 'obqa_{idx}' for openbookqa."""
    if config == 'openbookqa':
        return f"obqa_{idx}"
    if src.get('src') in (None, '') or src.get('question_id') is None:
        raise RowError('missing_field', f"src={src.get('src')!r}, question_id={src.get('question_id')!r}")
    return f"{src['src']}_{src['question_id']}"


def make_row(config: str, src: Dict[str, Any], idx: int) -> Tuple[Dict[str, Any], List[str]]:
    """Schema row (without audio) for one source row; idx is its 0-based position in its split.

    Raises RowError (with .key set when the key could be built).
    """
    key = make_key(config, src, idx)
    try:
        question, options, notes = split_prompt(src.get('prompt'))
        answer_index = answer_from_reference(src.get('reference'), len(options))
    except RowError as e:
        e.key = key
        raise
    if config == 'mmsu':
        category = src.get('category')
        if not isinstance(category, str) or not category:
            raise RowError('missing_field', f"category={category!r}", key)
        extra = {'category': category, 'question_id': int(src['question_id'])}
    else:
        category, extra = 'obqa', {'category': 'obqa'}
    row = {'key': key, 'question': question, 'options': options, 'answer_index': answer_index,
           'prompt_for_tts': src['prompt'], 'source': SOURCE_NAME[config], 'subject': category, **extra}
    return row, notes

# -----------------------------------------------------------------------------
# sources: each yields (split, idx, source row) with audio undecoded ({'bytes', 'path'})


def find_parquet_files(source_dir: PathLike, config: str, splits: Optional[Sequence[str]] = None) -> SplitFiles:
    """[(split, [parquet paths])] in the config's split order; see the module doc for the layouts."""
    root = Path(source_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--source_dir {root} is not a directory")
    wanted = tuple(splits or CONFIGS[config])
    for base in (root / config, root):
        if not base.is_dir():
            continue
        found = {s: sorted(base.glob(f"{s}-*.parquet")) or sorted(base.glob(f"{s}.parquet")) for s in wanted}
        if any(found.values()):
            missing = [s for s, f in found.items() if not f]
            if missing:
                raise FileNotFoundError(f"{base}: no parquet file for split(s) {', '.join(missing)} of {config!r} "
                                        f"(expected {base}/<split>-*.parquet; --splits builds a subset)")
            return [(s, found[s]) for s in wanted]
    files = sorted(root.rglob('*.parquet'))
    if not files:
        raise FileNotFoundError(f"no *.parquet file under {root}")
    if len(wanted) == 1:    # one split (openbookqa): row numbers, hence keys, run on across the files
        return [(wanted[0], files)]
    return [(f.stem, [f]) for f in files]


def parquet_source(split_files: SplitFiles, batch_rows: int = 64) -> SourceRows:
    """Stream the rows of local parquet files (a few at a time: audio bytes stay on disk)."""
    for split, files in split_files:
        idx = 0
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
                for src in batch.to_pylist():
                    yield split, idx, src
                    idx += 1


def count_parquet_rows(split_files: SplitFiles) -> int:
    """Rows of every file, from the parquet footers (nothing decoded)."""
    return sum(pq.ParquetFile(p).metadata.num_rows for _s, files in split_files for p in files)


def load_hub_split(config: str, split: str) -> datasets.Dataset:
    """One split from the hub, audio undecoded; a clear error when the hub cannot be reached."""
    try:
        ds = datasets.load_dataset(HUB_ID, config, split=split)
    except Exception as e:   # offline, no network, gated...: the message names the way out
        raise RuntimeError(f"cannot load {HUB_ID} {config}/{split} from the hub ({type(e).__name__}: {e}); "
                           f"download its parquet files and pass --source_dir") from e
    return audio_undecoded(ds)


def hub_source(config: str, splits: Optional[Sequence[str]] = None) -> Tuple[SourceRows, int]:
    """(row iterator, total rows) over the hub's splits, in the config's split order."""
    loaded = [(s, load_hub_split(config, s)) for s in (splits or CONFIGS[config])]

    def rows() -> SourceRows:
        for split, ds in loaded:
            for idx, src in enumerate(ds):
                yield split, idx, src
    return rows(), sum(len(ds) for _s, ds in loaded)


# -----------------------------------------------------------------------------
# the VoiceBench build


def voicebench_items(config: str, rows: Iterable[Tuple[str, int, Dict[str, Any]]]) -> Iterator[BuildItem]:
    """(where, build) pairs for convert_rows from (split, idx, source row) triples."""
    for split, idx, src in rows:
        def build(src: Dict[str, Any] = src, idx: int = idx) -> Tuple[Dict[str, Any], List[str], Any]:
            row, notes = make_row(config, src, idx)
            return row, notes, src.get('audio')
        yield {'split': split, 'row': idx}, build


def build_voicebench(config: str, out_dir: PathLike, source_dir: Optional[PathLike] = None,
                     splits: Optional[Sequence[str]] = None, overwrite: bool = False,
                     limit: Optional[int] = None) -> datasets.DatasetDict:
    """Build VoiceBench `config` ('mmsu' or 'openbookqa') into out_dir; return the saved DatasetDict.

    limit: only the first `limit` source rows (a preview; default all).
    """
    if config not in CONFIGS:
        raise ValueError(f"config must be one of {', '.join(CONFIGS)}, got {config!r}")
    unknown = [s for s in splits or () if s not in CONFIGS[config]]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown} for {config!r} (splits: {', '.join(CONFIGS[config])})")
    check_output_free(out_dir, overwrite)
    if source_dir is not None:
        split_files = find_parquet_files(source_dir, config, splits)
        source = {'kind': 'local', 'source_dir': str(source_dir),
                  'files': {s: [str(p) for p in files] for s, files in split_files}}
        rows, total = parquet_source(split_files), count_parquet_rows(split_files)
    else:
        source = {'kind': 'hub', 'hub_id': HUB_ID, 'config': config, 'splits': list(splits or CONFIGS[config])}
        rows, total = hub_source(config, splits)
    report = new_report(f"voicebench/{config}", source)
    return run_build(out_dir, f"voicebench-{config}", report, voicebench_items(config, rows), total=total,
                     extra_features=EXTRA_FEATURES[config], overwrite=overwrite, limit=limit)


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description="VoiceBench MMSU / OpenBookQA -> hf_format (docs/original.md §5.2).")
    p.add_argument('--config', required=True, choices=sorted(CONFIGS))
    p.add_argument('--out', required=True, help="output directory (hf/, report.json)")
    p.add_argument('--source_dir', help="local parquet files in the hub's format (default: the hub)")
    p.add_argument('--splits', help="comma-separated subset of the config's splits (default: all)")
    p.add_argument('--overwrite', action='store_true', help="replace an existing DIR/hf and DIR/report.json")
    p.add_argument('--limit', type=int, default=None, help="convert only the first N source rows (a preview)")
    a = p.parse_args(argv)
    splits = [s for s in a.splits.split(',') if s] if a.splits else None
    try:
        build_voicebench(a.config, a.out, source_dir=a.source_dir, splits=splits, overwrite=a.overwrite,
                         limit=a.limit)
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as e:
        p.exit(2, f"error: {e}\n")
    print(summary_text(json.loads((Path(a.out) / 'report.json').read_text())))


if __name__ == '__main__':
    main()
