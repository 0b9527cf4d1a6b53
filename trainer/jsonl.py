"""JSON-lines files that survive a killed process: one record per line, appended, read back on resume.

A process killed during a write leaves at most a torn *final* line (each record is written with one
``write`` call and ends with a newline). ``read`` drops such a line with a warning naming the file;
``append`` cuts it off before writing, so that the next record does not land on the torn line and turn
it into a corrupt line in the middle. A bad line anywhere else is a real corruption: ``JsonlError``
names the file and the line number. Non-finite floats are written as ``null`` (strict JSON readers
reject the bare ``NaN`` that Python's ``json`` writes by default).
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]


class JsonlError(ValueError):
    """A line of a JSONL file that is not valid JSON and is not its torn last line."""


def finite(obj: Any) -> Any:
    """``obj`` with every NaN / +-inf float (in nested dicts, lists and tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(record: Any) -> str:
    """One JSON line (with its newline) for ``record``; NaN and inf become null."""
    return json.dumps(finite(record), ensure_ascii=False, allow_nan=False) + '\n'


def _torn_tail_start(path: Path) -> int:
    """The offset just after the last newline of ``path`` (0 without one): where a torn line starts."""
    size = path.stat().st_size
    with open(path, 'rb') as fh:
        end = size
        while end > 0:
            start = max(0, end - 65536)
            fh.seek(start)
            block = fh.read(end - start)
            i = block.rfind(b'\n')
            if i >= 0:
                return start + i + 1
            end = start
    return 0


def drop_torn_tail(path: PathLike) -> int:
    """Cut the bytes after the last newline of ``path`` (a write the process did not finish); return how many."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    size = path.stat().st_size
    start = _torn_tail_start(path)
    if start == size:
        return 0
    with open(path, 'rb') as fh:
        fh.seek(start)
        tail = fh.read(200)
    logger.warning(f'{path}: dropping a torn last line ({size - start} bytes, {tail[:80]!r}...) left by an '
                   'interrupted write')
    os.truncate(path, start)
    return size - start


def append(path: PathLike, records: Union[Dict, Iterable[Dict]]) -> int:
    """Append one record (a dict) or several to ``path`` (created with its folder); return the count.

    A torn last line of an interrupted earlier write is cut off first."""
    path = Path(path)
    rows = [records] if isinstance(records, dict) else list(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_tail(path)
    text = ''.join(dumps(r) for r in rows)
    with open(path, 'a', encoding='utf-8') as fh:
        fh.write(text)  # one write: a kill leaves at most a torn last line
    return len(rows)


def read(path: PathLike, missing_ok: bool = True) -> List[Any]:
    """The records of ``path`` ([] when it does not exist and ``missing_ok``).

    Blank lines are skipped; an unparsable last line (a torn write) is dropped with a warning naming the
    file; an unparsable line elsewhere raises ``JsonlError`` naming the file and the line number."""
    path = Path(path)
    if not path.exists():
        if missing_ok:
            return []
        raise FileNotFoundError(f'{path}: no such JSONL file')
    lines = path.read_text(encoding='utf-8').splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == last:
                logger.warning(f'{path}: ignoring a torn last line (line {i + 1}: {err.msg}) left by an '
                               'interrupted write')
                break
            raise JsonlError(f'{path}, line {i + 1}: not valid JSON ({err.msg}); the file is corrupt') from err
    return records


def write_atomic(path: PathLike, records: Iterable[Any]) -> int:
    """Write ``records`` as JSON lines to ``path`` through a temporary file in the same folder and a rename:
    readers see the old file or the new one, never a part. Returns the count."""
    count = [0]

    def write(fh) -> None:
        for record in records:
            fh.write(dumps(record).encode('utf-8'))
            count[0] += 1
    _replace_atomically(path, write)
    return count[0]


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """``path`` holds ``data`` afterwards, or is unchanged if the write failed (temporary file + rename)."""
    _replace_atomically(path, lambda fh: fh.write(data))


def write_json_atomic(path: PathLike, obj: Any, indent: Optional[int] = 1) -> None:
    """One JSON document (NaN and inf written as null), written atomically."""
    text = json.dumps(finite(obj), indent=indent, ensure_ascii=False) + '\n'
    write_bytes_atomic(path, text.encode('utf-8'))


def _replace_atomically(path: PathLike, write: Callable[[Any], Any]) -> None:
    """Call ``write(binary file)`` on a temporary file next to ``path``, sync it, then rename it over ``path``;
    the temporary file is removed on any failure (a kill leaves at most a ``.NAME.*.tmp`` file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class RunConfigError(RuntimeError):
    """A results folder made with other settings than the run about to write into it."""


def check_run_config(run_dir: PathLike, config: Dict[str, Any], what: str = 'results') -> None:
    """Raise ``RunConfigError`` when ``run_dir/config.json`` records other settings than ``config`` (one line
    naming the folder and each differing key); nothing is written. See :func:`guard_run_config`."""
    run_dir = Path(run_dir)
    path = run_dir / 'config.json'
    if not path.exists():
        return
    new = json.loads(json.dumps(finite(config), default=str))
    try:
        old = json.loads(path.read_text(encoding='utf-8'))
    except json.JSONDecodeError as err:
        raise RunConfigError(f'{path}: not valid JSON ({err.msg}); choose another --out') from err
    if not isinstance(old, dict):
        raise RunConfigError(f'{path}: not a JSON object of settings; choose another --out')
    if old != new:
        diff = ', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in sorted(set(old) | set(new))
                         if old.get(k) != new.get(k))
        raise RunConfigError(f'{run_dir} holds {what} made with other settings ({diff}); choose another --out')


def guard_run_config(run_dir: PathLike, config: Dict[str, Any], what: str = 'results') -> None:
    """Tie ``run_dir`` to the settings ``config`` that its ``what`` (``'results'``, ``'samples'``...) were made with.

    The first use writes ``run_dir/config.json`` (atomically, the folder created); a later use with the same
    settings passes; one with other settings raises ``RunConfigError`` in one line naming the folder and
    each differing key (:func:`check_run_config`), so that records made with different settings are never
    mixed in one file. Values are compared as JSON (a tuple equals the list it is stored as)."""
    path = Path(run_dir) / 'config.json'
    if path.exists():
        check_run_config(run_dir, config, what)
        return
    write_json_atomic(path, json.loads(json.dumps(finite(config), default=str)))


def keep_records(path: PathLike, keep: Callable[[Any], bool]) -> int:
    """Rewrite ``path`` (atomically) without the records for which ``keep`` is false; return how many went.

    A torn last line goes too. Nothing is written when every record stays and no line was torn."""
    path = Path(path)
    if not path.exists():
        return 0
    torn = _torn_tail_start(path) != path.stat().st_size
    records = read(path)
    kept = [r for r in records if keep(r)]
    if len(kept) != len(records) or torn:
        write_atomic(path, kept)
    return len(records) - len(kept)
