"""CUHK MMSU (ddwang2000/MMSU) in the hf_format schema (docs/original.md §5.3, defects of §11.13 fixed).

The audio is the stimulus (speech whose phonetics, prosody, ... the question asks about); the question
and its four choices are text. Pipeline:
  read_metadata + index_audio_dir (local) | hub_source (hub) -> cuhk_items (join on audio stem = id,
  make_row: choices_of, answer_position, subject_of, build_prompt_for_tts)
  -> common.convert_rows (16 kHz clips, drops reported) -> common.save_build.

Fixes over the original notebook: an answer_gt that matches no choice (the original silently used
index 0), a metadata row without audio, a clip without metadata, a repeated id, a choice missing
between two others and unreadable audio are all reported in report.json (key, reason) and left out.
answer_gt is matched to the choices exactly; failing that, ignoring case and repeated whitespace
(counted under notes.answer_matched_after_normalising); a match that is not unique is reported.

Sources (the hub's exact formats):
  hub:   datasets.load_dataset('ddwang2000/MMSU', split='train'). Rows that carry the metadata columns
         (id, question, choice_a, ...) are used as they are; audio-only rows are joined with the
         repository's question/mmsu.jsonl on the audio file's stem = id;
  local: --audio_dir DIR (searched recursively; files named <id>.<ext>, any format soundfile reads:
         wav, flac, mp3, ogg, ...) and --metadata FILE (the question/mmsu.jsonl lines: id, task_name,
         audio_path, question, choice_a..choice_d, answer_gt, category, sub-category,
         sub-sub-category, linguistics_sub_discipline).

Output: DIR/hf (DatasetDict {'train': ...}, like the original's MMSU-full_5k_hf_format.v0) and
DIR/report.json; neither is replaced without --overwrite. Columns: the schema's, with
subject = category = "category-sub-category-sub-sub-category-linguistics_sub_discipline" (a missing
part is empty), plus linguistics_sub_discipline and task_name.

    python -m scripts.dataset_building.cuhk_mmsu --out DIR [--audio_dir D --metadata F] [--limit N] [--overwrite]
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import datasets

from scripts.dataset_building.common import (BuildItem, PathLike, RowError, check_output_free, new_report, report_drop,
                                             run_build, summary_text)
from trainer.schema import LETTERS, audio_undecoded

HUB_ID = 'ddwang2000/MMSU'
HUB_SPLIT = 'train'
HUB_METADATA = 'question/mmsu.jsonl'
SOURCE = 'cuhk_mmsu'
CHOICE_COLUMNS = ('choice_a', 'choice_b', 'choice_c', 'choice_d')
SUBJECT_COLUMNS = ('category', 'sub-category', 'sub-sub-category', 'linguistics_sub_discipline')
EXTRA_FEATURES = {c: datasets.Value('string') for c in ('category', 'linguistics_sub_discipline', 'task_name')}
# Audio files taken from --audio_dir (formats libsndfile >= 1.1 decodes); other files are ignored.
AUDIO_EXTENSIONS = frozenset({'.wav', '.flac', '.mp3', '.ogg', '.oga', '.opus', '.aif', '.aiff', '.aifc', '.au',
                              '.snd', '.caf', '.w64', '.rf64'})
Metadata = List[Tuple[Dict[str, Any], Dict[str, Any]]]   # [(where: metadata line or hub row, metadata row)]
# (metadata, {id: audio ref}, {id: [refs]} of ids with several clips, fetch(ref) -> audio value, clip count)
Source = Tuple[Metadata, Dict[str, Any], Dict[str, List[str]], Callable[[Any], Any], int]

# -----------------------------------------------------------------------------
# text


def _text(value: Any) -> str:
    """A metadata value as str; None stays '' (the original's f-strings would have written 'None')."""
    return '' if value is None else str(value)


def choices_of(meta: Mapping[str, Any]) -> List[str]:
    """The choices as str, in order A-D. Empty trailing choices are left out (a 2- or 3-choice
    question); an empty choice before a non-empty one, or fewer than 2 choices, is a RowError."""
    choices = [_text(meta.get(c)).strip() for c in CHOICE_COLUMNS]
    while choices and not choices[-1]:
        choices.pop()
    if len(choices) < 2:
        raise RowError('fewer_than_2_options', f"choices {choices!r}")
    gaps = [LETTERS[i] for i, c in enumerate(choices) if not c]
    if gaps:
        raise RowError('empty_option', f"choice {', '.join(gaps)} is empty but a later one is not")
    return choices


def _loose(s: str) -> str:
    return ' '.join(s.split()).casefold()


def answer_position(answer_gt: Any, options: Sequence[str]) -> Tuple[int, Optional[str]]:
    """(index of answer_gt among options, note or None). Exact match first, then ignoring case and
    repeated whitespace; no match or several matches is a RowError (never index 0 by default)."""
    ans = _text(answer_gt)
    if not ans.strip():
        raise RowError('missing_answer', f"answer_gt is {answer_gt!r}")
    for match, note in ((lambda o: o == ans.strip(), None),
                        (lambda o: _loose(o) == _loose(ans), 'answer_matched_after_normalising')):
        hits = [i for i, o in enumerate(options) if match(o)]
        if len(hits) == 1:
            return hits[0], note
        if len(hits) > 1:
            raise RowError('answer_gt_ambiguous',
                           f"answer_gt {ans!r} matches choices {', '.join(LETTERS[i] for i in hits)}")
    raise RowError('answer_gt_matches_no_choice', f"answer_gt {ans!r} is none of {options!r}")


def subject_of(meta: Mapping[str, Any]) -> str:
    """'category-sub-category-sub-sub-category-linguistics_sub_discipline' (docs/original.md §5.3)."""
    return '-'.join(_text(meta.get(c)) for c in SUBJECT_COLUMNS)


def build_prompt_for_tts(question: str, options: Sequence[str]) -> str:
    """'{question}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}' (docs/original.md §5.3)."""
    return "\n".join([question] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)])


def make_row(meta: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """(schema row without audio, notes) for one metadata row; raises RowError with .key set."""
    key = _text(meta.get('id')).strip()
    try:
        if not key:
            raise RowError('missing_field', f"id is {meta.get('id')!r}")
        question = _text(meta.get('question')).strip()
        if not question:
            raise RowError('empty_question', f"question is {meta.get('question')!r}")
        options = choices_of(meta)
        answer_index, note = answer_position(meta.get('answer_gt'), options)
    except RowError as e:
        e.key = key or None
        raise
    subject = subject_of(meta)
    row = {'key': key, 'question': question, 'options': options, 'answer_index': answer_index,
           'prompt_for_tts': build_prompt_for_tts(question, options), 'source': SOURCE, 'subject': subject,
           'category': subject, 'linguistics_sub_discipline': _text(meta.get('linguistics_sub_discipline')),
           'task_name': _text(meta.get('task_name'))}
    return row, [note] if note else []

# -----------------------------------------------------------------------------
# sources


def read_metadata(path: PathLike, report: Dict[str, Any]) -> List[Tuple[int, Dict[str, Any]]]:
    """[(line number, row)] of a jsonl file; a line that is not a JSON object is reported and skipped."""
    rows = []
    with open(path, encoding='utf-8') as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                meta = json.loads(line)
                if not isinstance(meta, dict):
                    raise ValueError(f"a JSON {type(meta).__name__}, not an object")
            except ValueError as e:
                report_drop(report, None, 'bad_metadata_line', str(e), metadata_line=n)
                continue
            rows.append((n, meta))
    return rows


def index_audio_dir(audio_dir: PathLike) -> Tuple[Dict[str, str], Dict[str, List[str]]]:
    """({stem: path}, {stem: [paths]} for stems found more than once), audio files only, path order."""
    root = Path(audio_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--audio_dir {root} is not a directory")
    by_stem = {}
    for p in sorted(root.rglob('*')):
        if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS:
            by_stem.setdefault(p.stem, []).append(str(p))
    return ({s: ps[0] for s, ps in by_stem.items() if len(ps) == 1},
            {s: ps for s, ps in by_stem.items() if len(ps) > 1})


def hub_source(report: Dict[str, Any]) -> Source:
    """(metadata [(where, row)], {id: audio ref}, fetch(ref) -> audio value, clip count) from the hub."""
    try:
        ds = audio_undecoded(datasets.load_dataset(HUB_ID, split=HUB_SPLIT))
    except Exception as e:   # offline, no network, gated...: the message names the way out
        raise RuntimeError(f"cannot load {HUB_ID} split {HUB_SPLIT} from the hub ({type(e).__name__}: {e}); "
                           f"download it and pass --audio_dir and --metadata") from e

    def fetch(i: int) -> Any:
        return ds[i]['audio']

    if {'id', 'question', 'answer_gt'} <= set(ds.column_names):
        meta = ds.remove_columns('audio').to_list()
        metadata = [({'row': i}, m) for i, m in enumerate(meta)]
        # a repeated id is reported by cuhk_items as duplicate_id; its rows need no clip here
        index = {_text(m.get('id')).strip(): i for i, m in enumerate(meta)}
        return metadata, index, {}, fetch, len(ds)

    from huggingface_hub import hf_hub_download
    try:
        meta_path = hf_hub_download(HUB_ID, HUB_METADATA, repo_type='dataset')
    except Exception as e:
        raise RuntimeError(f"cannot download {HUB_ID}/{HUB_METADATA} ({type(e).__name__}: {e}); "
                           f"pass --audio_dir and --metadata") from e
    metadata = [({'metadata_line': n}, m) for n, m in read_metadata(meta_path, report)]
    paths = [p for chunk in ds.data.column('audio').chunks for p in chunk.field('path').to_pylist()]
    by_stem = {}
    for i, p in enumerate(paths):
        by_stem.setdefault(Path(p).stem if p else f"<row {i} without a path>", []).append(i)
    index = {s: rows[0] for s, rows in by_stem.items() if len(rows) == 1}
    dupes = {s: [f"row {r}" for r in rows] for s, rows in by_stem.items() if len(rows) > 1}
    return metadata, index, dupes, fetch, len(ds)


def local_source(audio_dir: PathLike, metadata_path: PathLike, report: Dict[str, Any]) -> Source:
    """Same as hub_source, from --audio_dir and --metadata."""
    index, dupes = index_audio_dir(audio_dir)
    metadata = [({'metadata_line': n}, m) for n, m in read_metadata(metadata_path, report)]
    return metadata, index, dupes, (lambda path: path), len(index) + sum(map(len, dupes.values()))

# -----------------------------------------------------------------------------
# the join and the build


def cuhk_items(metadata: Metadata, audio_index: Dict[str, Any], audio_dupes: Dict[str, List[str]],
               fetch: Callable[[Any], Any]) -> Iterator[BuildItem]:
    """(where, build) pairs for convert_rows: every metadata row in order, then every clip without one."""
    id_count = Counter(_text(m.get('id')).strip() for _w, m in metadata)
    for where, meta in metadata:
        def build(meta: Dict[str, Any] = meta) -> Tuple[Dict[str, Any], List[str], Any]:
            key = _text(meta.get('id')).strip()
            if key and id_count[key] > 1:
                raise RowError('duplicate_id', f"id appears {id_count[key]} times in the metadata", key)
            if key in audio_dupes:
                raise RowError('duplicate_audio', f"several clips for this id: {audio_dupes[key]}", key)
            row, notes = make_row(meta)
            if key not in audio_index:
                raise RowError('metadata_without_audio', "no clip whose file stem is this id", key)
            return row, notes, fetch(audio_index[key])
        yield where, build
    clips = {**{s: str(ref) for s, ref in audio_index.items()}, **{s: str(refs) for s, refs in audio_dupes.items()}}
    for stem in sorted(set(clips) - set(id_count)):
        def orphan(stem: str = stem) -> Tuple[Dict[str, Any], List[str], Any]:
            raise RowError('audio_without_metadata', f"clip {clips[stem]} has no metadata row", stem)
        yield {'audio': clips[stem]}, orphan


def build_cuhk_mmsu(out_dir: PathLike, audio_dir: Optional[PathLike] = None, metadata: Optional[PathLike] = None,
                    overwrite: bool = False, limit: Optional[int] = None) -> datasets.DatasetDict:
    """Build CUHK MMSU into out_dir (local files when both audio_dir and metadata are given, else the hub).

    limit: only the first `limit` metadata rows (a preview; default all).
    """
    if (audio_dir is None) != (metadata is None):
        raise ValueError("give both --audio_dir and --metadata (local source) or neither (the hub)")
    check_output_free(out_dir, overwrite)
    if audio_dir is not None:
        source = {'kind': 'local', 'audio_dir': str(audio_dir), 'metadata': str(metadata)}
    else:
        source = {'kind': 'hub', 'hub_id': HUB_ID, 'split': HUB_SPLIT}
    report = new_report('cuhk_mmsu', source)
    if audio_dir is not None:
        meta, index, dupes, fetch, n_clips = local_source(audio_dir, metadata, report)
    else:
        meta, index, dupes, fetch, n_clips = hub_source(report)
    report['metadata_rows'] = len(meta) + report['rows_dropped']   # bad lines were dropped while reading
    report['audio_clips'] = n_clips
    report['rows_read'] = report['rows_dropped']   # unreadable metadata lines count as read rows
    items = cuhk_items(meta, index, dupes, fetch)
    total = len(meta) + len((set(index) | set(dupes)) - {_text(m.get('id')).strip() for _w, m in meta})
    return run_build(out_dir, 'cuhk_mmsu', report, items, total=total, extra_features=EXTRA_FEATURES,
                     overwrite=overwrite, limit=limit)


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description="CUHK MMSU (ddwang2000/MMSU) -> hf_format (docs/original.md §5.3).")
    p.add_argument('--out', required=True, help="output directory (hf/, report.json)")
    p.add_argument('--audio_dir', help="folder of <id>.<ext> clips (default: the hub)")
    p.add_argument('--metadata', help="the question/mmsu.jsonl file (default: the hub)")
    p.add_argument('--overwrite', action='store_true', help="replace an existing DIR/hf and DIR/report.json")
    p.add_argument('--limit', type=int, default=None, help="convert only the first N metadata rows (a preview)")
    a = p.parse_args(argv)
    try:
        build_cuhk_mmsu(a.out, audio_dir=a.audio_dir, metadata=a.metadata, overwrite=a.overwrite, limit=a.limit)
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as e:
        p.exit(2, f"error: {e}\n")
    print(summary_text(json.loads((Path(a.out) / 'report.json').read_text())))


if __name__ == '__main__':
    main()
