"""trainer.cache.build_once: a folder appears only when its build finished, and is built once."""
from __future__ import annotations

from pathlib import Path

import pytest

from trainer.cache import build_once


def _writer(calls):
    def build(path: Path) -> None:
        calls.append(path)
        path.mkdir()
        (path / 'weights').write_text('w')
        (path / 'done.json').write_text('{}')
    return build


def test_builds_into_a_fresh_path_then_renames_and_reuses(tmp_path):
    calls = []
    out = build_once(tmp_path / 'cache' / 'model-abc', 'done.json', _writer(calls))
    assert out == tmp_path / 'cache' / 'model-abc' and (out / 'weights').read_text() == 'w'
    assert len(calls) == 1 and calls[0] != out and not calls[0].exists()   # built elsewhere, then moved
    assert build_once(out, 'done.json', _writer(calls)) == out and len(calls) == 1   # not built again
    assert sorted(p.name for p in out.parent.iterdir()) == ['model-abc']             # no temporary left


def test_a_failed_build_leaves_nothing_and_a_rerun_builds(tmp_path):
    out = tmp_path / 'model-abc'

    def broken(path: Path) -> None:
        path.mkdir()
        (path / 'weights').write_text('half')
        raise KeyboardInterrupt   # a kill in the middle of the build

    with pytest.raises(KeyboardInterrupt):
        build_once(out, 'done.json', broken)
    assert list(tmp_path.iterdir()) == []
    calls = []
    assert (build_once(out, 'done.json', _writer(calls)) / 'done.json').is_file() and len(calls) == 1


def test_a_build_finished_by_another_process_first_is_kept(tmp_path):
    out = tmp_path / 'model-abc'

    def racing(path: Path) -> None:
        _writer([])(out)                       # the other process renames its finished build into place
        path.mkdir()
        (path / 'weights').write_text('mine')
        (path / 'done.json').write_text('{}')

    assert build_once(out, 'done.json', racing) == out
    assert (out / 'weights').read_text() == 'w' and [p.name for p in tmp_path.iterdir()] == ['model-abc']
