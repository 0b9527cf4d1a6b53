"""Folders built once and kept under a content-derived name: the tiny twins, merged adapters.

A build runs in a hidden temporary sibling of its final folder and is renamed into place only when finished,
so a killed build never leaves a folder that looks complete, and two processes building the same folder at
once both end with the finished one.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def build_once(out: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """``out``, unless ``out/marker`` (a file the finished build writes) already exists: then ``build(path)`` is
    called with a path that does not exist yet, inside a temporary folder beside ``out``, creates the folder
    there, and the finished folder is renamed to ``out``. Returns ``out``."""
    out = Path(out)
    if (out / marker).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', dir=out.parent))
    try:
        build(work / out.name)
        try:
            os.replace(work / out.name, out)
        except OSError:  # another process renamed its finished build into place first
            if not (out / marker).is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
