"""Answer extraction and the text-only rewards (format, length, accuracy).

Reference: tars-reference.md section 3 (reward functions 1-3) and section 6.1 (QA scoring).
The original judges correctness with the xFinder-qwen1505 model; here a rule-based extractor
plays that role (reference section 11, "reward model cost"), with the same comparator: a
letter match, or the text of the option paired with the gold letter.

Pure functions, no torch.
"""
import re
from typing import List, Optional, Sequence, Tuple

LETTERS = 'ABCDEFGHIJ'

# Reference 3.1, verbatim.
FORMAT_STRICT = re.compile(
    r'^<think>.*?<\/think>\s*<answer>.*The answer is [ABCD][\.:,].*<\/answer>$', re.DOTALL)
FORMAT_LOOSE = re.compile(r'^<think>.*<answer>.*[ABCD][\.:,]', re.DOTALL)


def format_score(completion: str) -> float:
    """Format reward (reference 3.1): 1.0 strict full match, 0.5 loose prefix match, else 0.0."""
    text = completion.strip()
    if FORMAT_STRICT.fullmatch(text):
        return 1.0
    if FORMAT_LOOSE.match(text):
        return 0.5
    return 0.0


def length_score(completion: str, target: int = 1024) -> float:
    """Length reward (reference 3.2): -|target - len(completion)| / target, in characters."""
    return -abs(target - len(completion)) / target


def gold_letter(answer_index: int) -> str:
    """The letter of option `answer_index` (0 -> 'A')."""
    if not 0 <= answer_index < len(LETTERS):
        raise ValueError(f"answer_index {answer_index} out of range 0..{len(LETTERS) - 1}")
    return LETTERS[answer_index]


def is_correct(output: str, options: Sequence[str], answer_index: int) -> bool:
    """Accuracy reward as a bool (reference 3.3 comparator): the extracted letter is the gold one."""
    return extract_choice(output, options) == gold_letter(answer_index)


# -----------------------------------------------------------------------------
# extraction
#
# An output is read in a fixed order of evidence, most explicit first:
#   1. the whole text is a bare letter ("B", "(B)", "B.") or exactly one option's text;
#   2. answer statements: "the answer is X", "Answer: X", "the correct option is X", "I choose X",
#      \boxed{X}; the LAST one that yields something decides (chain of thought revises itself);
#      a statement without a letter may name one option's text ("The answer is Paris.");
#   3. "X is correct" / "X is the answer", last one;
#   4. the last line is a bare letter;
#   5. "X. <option text>" at the start;
#   6. mentions: "option C", "(B)" - one letter, not negated.
# Inside <answer>...</answer> the same order is applied to the block first. A final statement
# that commits to two letters ("A or B") or to a letter outside the options gives None.

_AMBIGUOUS = object()   # stop: no answer (two letters, or a letter outside the options)

_EDGE = ' \t\r\n*_"\'`$'

# Keyword searches run on the lower-cased text, each pattern starting with a literal (fast in
# the re engine); letters are then read, with their case, from the original text at the same
# offsets.
_ANSWER_BLOCK = re.compile(r'<answer>(.*?)(?:</answer>|$)', re.DOTALL | re.IGNORECASE)

# Answer statements; the statement is the text right after the match.
_CUES = (
    re.compile(
        r"answer(?<![a-z]answer)"
        r"(?:\s+(?:here|to\s+(?:this|the)\s+question|for\s+(?:this|the)\s+question))?"
        r"(?:[\s*_]*(?:is|would\s+be|should\s+be|must\s+be|will\s+be|seems\s+to\s+be|appears\s+to\s+be)\b"
        r"(?:\s+(?:therefore|thus|then|clearly|likely|probably|definitely|indeed|still))?[\s*_]*:?"
        r"|[\s*_]*[:=])"),
    re.compile(r"option(?<![a-z]option)\s+(?:is|would\s+be|should\s+be|must\s+be)\b\s*:?"),
    re.compile(r"choice(?<![a-z]choice)\s+(?:is|would\s+be|should\s+be|must\s+be)\b\s*:?"),
)
_CHOOSE_WORDS = ('choose', 'select', 'pick', 'go with')
_CHOOSE = re.compile(r"(?:choose|select|pick|go\s+with)\b\s*:?")
_CHOOSER = re.compile(r"(?:^|[^a-z])(?:i|we)(?:\s+would|\s+will|'d|'ll)?\s+$")   # "I'd choose"

_BOXED = re.compile(r'\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}')
_TEX_WRAP = re.compile(r'\\(?:textbf|textit|text|mathrm|mathbf|mbox)\s*')

# A letter at the start of a statement. Upper case needs a word boundary after it; lower case
# must be bracketed or followed by punctuation / end ("Answer: b", but not "answer: a cat").
_STMT_LETTER = re.compile(
    r"(?i:either\s+|both\s+)?(?i:(?:option|choice|letter)\s*)?"
    r"([\(\[\{])?\s*([A-Za-z])(?![A-Za-z0-9'\u2019])\s*([\)\]\}])?")
_LOWER_OK_AFTER = re.compile(r'\s*(?:[.,;:!?]|$)')
# A second letter joined to the first: "A or B", "(A) and (C)", "A/B", "A, B".
_ALT_LETTER = re.compile(
    r"[\s)\]}*]*(?:,|/|&|(?i:\bor\b)|(?i:\band\b))\s*(?i:(?:option|choice)\s*)?[\(\[]?\s*"
    r"([A-Z])(?![A-Za-z0-9'])(?!\s+(?i:is|was|are|were)\b)")
_WORD_AFTER = re.compile(r"\s+[a-z'\u2019]")
_NEGATED_STMT = re.compile(r"(?i:not|none|unclear|unknown|cannot|can't|n/a)\b")

# "X is correct" / "(X) is the correct answer" / "X is the answer" (the letter is checked by hand)
_IS_CORRECT = re.compile(
    r"is(?<![a-z]is)\s+(?:the\s+)?(?:(?:correct|right|best|true)\b(?:\s+(?:answer|option|choice|one))?|answer\b)")

_BARE = re.compile(r'([\(\[])?\s*([A-Za-z])\s*([\)\]])?\s*[.:,]?')
_START = re.compile(r'[\(\[]?([A-J])[.):\]]\s+\S|[\(\[]?([a-j])[)\]]\s+\S')
_ENUM = re.compile(r'^[ \t*]*[\(\[]?([A-J])[.)\]:][ \t]', re.MULTILINE)
_MENTIONS = (
    re.compile(r"option(?<![a-z]option)\s+([a-z])(?![\w'])"),
    re.compile(r"choice(?<![a-z]choice)\s+([a-z])(?![\w'])"),
    re.compile(r"\(([a-z])\)"),
)
_NEGATION = re.compile(r"\b(?:not|incorrect|wrong|false|isn't|cannot|can't|eliminat\w*|rule\w*\s+out)\b")
_POSITIVE = re.compile(r"\b(?:correct|right|true|best|answer|accurate|fits|matches)\b")
_OPTION_LABEL = re.compile(r'^\s*[\(\[]?[A-Ja-j][.):\]]\s+')


def extract_choice(output: str, options: Sequence[str]) -> Optional[str]:
    """The option letter `output` commits to, or None (refusal, no answer, ambiguous, out of range).

    Rule-based stand-in for the xFinder judge of reference 3.3 / 6.1; only the first
    len(options) letters can be returned.
    """
    if not output or not output.strip():
        return None
    n = min(len(options), len(LETTERS))
    opts = [_norm(_OPTION_LABEL.sub('', str(o))) for o in options[:n]]
    if '<answer>' in output.lower():
        blocks = _ANSWER_BLOCK.findall(output)
        if blocks:
            res = _extract_region(blocks[-1], opts, n)
            if res is _AMBIGUOUS:
                return None
            if res is not None:
                return res
    res = _extract_region(output, opts, n)
    return None if res is _AMBIGUOUS else res


def _lower(text: str) -> str:
    """text.lower() with the same length (a few Unicode characters lower-case to two)."""
    low = text.lower()
    if len(low) != len(text):
        low = ''.join(c.lower() if len(c.lower()) == 1 else c for c in text)
    return low


def _norm(s: str) -> str:
    """Lower-case, collapse whitespace, drop edge punctuation."""
    return ' '.join(s.lower().split()).strip(' .!?;:,*_"\'`$')


def _check(letter: str, n: int):
    """A letter inside the options, or _AMBIGUOUS for a committed letter outside them."""
    return letter if letter in LETTERS[:n] else _AMBIGUOUS


def _extract_region(text: str, opts: List[str], n: int):
    whole = text.strip(_EDGE)
    if not whole:
        return None
    # 1. whole text: bare letter, or one option's text
    if len(whole) <= 5:
        letter = _bare_letter(whole)
        if letter is not None:
            return _check(letter, n)
    if opts and len(whole) <= 2 * max(len(o) for o in opts) + 10:
        res = _whole_option(whole, opts)
        if res is not None:
            return res
    low = _lower(text)
    # 2. answer statements and \boxed{}, last first
    found = []
    for cue in _CUES:
        for m in cue.finditer(low):
            found.append((m.start(), False, m.end()))
    if any(w in low for w in _CHOOSE_WORDS):
        for m in _CHOOSE.finditer(low):
            if _CHOOSER.search(low[max(0, m.start() - 16):m.start()]):
                found.append((m.start(), False, m.end()))
    if '\\boxed' in text:
        for m in _BOXED.finditer(text):
            found.append((m.start(), True, m.group(1)))
    found.sort(key=lambda t: t[0], reverse=True)
    for _, boxed, ref in found:
        res = _read_boxed(ref, opts, n) if boxed else _read_statement(text, ref, opts, n)
        if res is not None:
            return res
    # 3. "X is correct" / "X is the answer", last one
    last = None
    for m in _IS_CORRECT.finditer(low):
        letter = _letter_before(text, m.start())
        if letter is not None:
            last = letter
    if last is not None:
        return _check(last, n)
    # 4. last line is a bare letter
    nl = whole.rfind('\n')
    if nl >= 0:
        tail = whole[nl + 1:].strip(_EDGE)
        if len(tail) <= 5:
            letter = _bare_letter(tail)
            if letter is not None:
                return _check(letter, n)
    # 5. "X. <option text>" at the start, unless the text enumerates the options
    m = _START.match(whole)
    if m is not None and len({e.group(1) for e in _ENUM.finditer(text)}) < 2:
        return _check((m.group(1) or m.group(2)).upper(), n)
    # 6. mentions
    return _read_mentions(text, low, n)


def _bare_letter(s: str) -> Optional[str]:
    m = _BARE.fullmatch(s)
    if m is None:
        return None
    letter = m.group(2)
    if letter.islower() and not m.group(3):   # "a" / "a." is a word; "(a)" / "a)" is a label
        return None
    return letter.upper()


def _whole_option(s: str, opts: List[str]):
    key = _norm(s)
    hits = [i for i, o in enumerate(opts) if o and o == key]
    if len(hits) == 1:
        return LETTERS[hits[0]]
    return _AMBIGUOUS if hits else None


def _options_in(s: str, opts: List[str]):
    """The one option whose text occurs in `s` (whole words), _AMBIGUOUS if several, else None."""
    low = ' '.join(s.lower().split())
    hits = []
    for i, o in enumerate(opts):
        if not o:
            continue
        start = low.find(o)
        while start >= 0:
            end = start + len(o)
            if (start == 0 or not low[start - 1].isalnum()) and (end == len(low) or not low[end].isalnum()):
                hits.append(i)
                break
            start = low.find(o, start + 1)
    if len(hits) > 1:   # "Paris" inside "Paris, Texas" counts once
        hits = [i for i in hits if not any(j != i and opts[i] in opts[j] for j in hits)]
    if len(hits) == 1:
        return LETTERS[hits[0]]
    return _AMBIGUOUS if hits else None


def _letter_at(s: str, n: int):
    """Parse a letter at the start of a statement: letter, _AMBIGUOUS, or None."""
    m = _STMT_LETTER.match(s)
    if m is None:
        return None
    letter = m.group(2)
    after = s[m.end(2):]
    bracketed = m.group(1) is not None and m.group(3) is not None
    if letter.islower():
        if not bracketed and not _LOWER_OK_AFTER.match(after):
            return None
        letter = letter.upper()
    elif letter == 'I' and not bracketed and _WORD_AFTER.match(after):
        return None   # the pronoun: "The answer is I think B"
    alt = _ALT_LETTER.match(s, m.end())
    if alt is not None and alt.group(1) != letter:
        # "B, I think" / "B and A is ..." use the pronoun or the article, not a second letter
        if not (alt.group(1) in 'AI' and _WORD_AFTER.match(s, alt.end())):
            return _AMBIGUOUS
    return _check(letter, n)


def _read_statement(text: str, pos: int, opts: List[str], n: int):
    s = text[pos:pos + 240].lstrip(_EDGE + ':')
    nl = s.find('\n')
    if nl >= 0:
        s = s[:nl]
    s = s.rstrip()
    if not s or s.startswith('\\boxed'):
        return None
    res = _letter_at(s, n)
    if res is not None:
        return res
    if _NEGATED_STMT.match(s):
        return None
    return _options_in(s, opts)


def _read_boxed(content: str, opts: List[str], n: int):
    s = _TEX_WRAP.sub('', content).replace('{', '').replace('}', '').strip(_EDGE)
    if not s:
        return None
    res = _letter_at(s, n)
    if res is not None:
        return res
    res = _whole_option(s, opts)
    if res is not None:
        return res
    return _options_in(s, opts)


def _letter_before(text: str, end: int) -> Optional[str]:
    """The upper-case letter label ("B", "(B)", "**B**") just before text[end], else None."""
    i = end - 1
    if i < 0 or not text[i].isspace():
        return None
    while i >= 0 and text[i].isspace():
        i -= 1
    while i >= 0 and text[i] == '*':
        i -= 1
    closing = i >= 0 and text[i] == ')'
    if closing:
        i -= 1
    if i < 0 or text[i] not in 'ABCDEFGHIJ':
        return None
    letter = text[i]
    i -= 1
    if closing and i >= 0 and text[i] == '(':
        i -= 1
    while i >= 0 and text[i] == '*':
        i -= 1
    if i >= 0 and (text[i].isalnum() or text[i] in "'_"):
        return None
    return letter


def _segment(text: str, start: int, end: int) -> Tuple[int, int]:
    """Bounds of the sentence around text[start:end] (split at newlines and ., !, ?, ; + space)."""
    a = max(text.rfind('\n', 0, start), text.rfind('. ', 0, start), text.rfind('! ', 0, start),
            text.rfind('? ', 0, start), text.rfind('; ', 0, start)) + 1
    b = len(text)
    for sep in ('\n', '. ', '! ', '? ', '; '):
        k = text.find(sep, end)
        if 0 <= k < b:
            b = k
    return a, b


def _read_mentions(text: str, low: str, n: int):
    """'option C' / '(B)': one letter mentioned and not negated, or a positive final sentence."""
    valid = LETTERS[:n]
    mentions = []   # (start, end, letter)
    for pat in _MENTIONS:
        for m in pat.finditer(low):
            letter = text[m.start(1)]
            if letter in valid:
                mentions.append((m.start(), m.end(), letter))
    if not mentions:
        return None
    mentions.sort()
    start, end, letter = mentions[-1]
    a, b = _segment(low, start, end)
    seg = low[a:b]
    if _NEGATION.search(seg):
        return None
    if len({t[2] for t in mentions}) == 1:
        return letter
    # several letters mentioned: only a positive sentence naming one letter counts
    seg_letters = {t[2] for t in mentions if a <= t[0] < b}
    if len(seg_letters) == 1 and _POSITIVE.search(seg):
        return letter
    return None
