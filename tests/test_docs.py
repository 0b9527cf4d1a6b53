"""Every relative link of README.md and docs/*.md reaches a file, and its #anchor a heading of that file
(GitHub's heading ids); the README stays a front door."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]
LINK = re.compile(r'(?<!!)\[[^\]]*\]\(([^)\s]+)\)')
FENCE = re.compile(r'^(```|~~~)')


def prose_lines(text: str) -> List[str]:
    """The lines outside fenced code blocks (a link-like string in code is not a link)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's id of a heading: lower case, punctuation other than - and _ dropped, spaces to hyphens."""
    text = re.sub(r'`|\*\*|\[([^\]]*)\]\([^)]*\)', r'\1', heading.strip().lower())
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def anchors(page: Path) -> Set[str]:
    """Every heading id of a page, duplicates numbered as GitHub numbers them (-1, -2, ...)."""
    seen: Counter = Counter()
    out = set()
    for line in prose_lines(page.read_text(encoding='utf-8')):
        match = re.match(r'#{1,6}\s+(.*)', line)
        if match:
            base = slug(match.group(1))
            out.add(base if seen[base] == 0 else f'{base}-{seen[base]}')
            seen[base] += 1
    return out


def relative_links(page: Path) -> List[Tuple[str, str]]:
    """(link target, anchor) of every relative link of a page."""
    out = []
    for line in prose_lines(page.read_text(encoding='utf-8')):
        for target in LINK.findall(line):
            if re.match(r'[a-z]+:', target):
                continue  # https:, mailto:
            path, _, anchor = target.partition('#')
            out.append((path, anchor))
    return out


def test_slug_matches_githubs_ids():
    assert slug('1. The dataset schema ("hf_format")') == '1-the-dataset-schema-hf_format'
    assert slug('What `bash train_grpo.sh` does with no GPU and no arguments') == \
        'what-bash-train_grposh-does-with-no-gpu-and-no-arguments'
    assert slug('Resuming a run (all three launchers)') == 'resuming-a-run-all-three-launchers'


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    broken = []
    for path, anchor in relative_links(page):
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f'{path}: no such file')
        elif anchor and target.suffix == '.md' and anchor not in anchors(target):
            broken.append(f'{path}#{anchor}: no such heading in {target.relative_to(REPO)}')
    assert not broken, f'{page.relative_to(REPO)}: ' + '; '.join(broken)


def test_the_readme_is_a_front_door_and_the_docs_index_one_line_per_page():
    assert len((REPO / 'README.md').read_text(encoding='utf-8').splitlines()) <= 150
    index = (REPO / 'docs' / 'README.md').read_text(encoding='utf-8')
    rows = [line for line in index.splitlines() if line.startswith('| [')]
    listed = {re.match(r'\| \[[^\]]*\]\(([^)]+)\)', row).group(1) for row in rows}
    assert listed >= {p.name for p in PAGES if p.parent.name == 'docs' and p.name != 'README.md'}
    assert all(len(row) <= 240 for row in rows), 'one short line per page'
