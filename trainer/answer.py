"""Answer extraction and the text-only rewards (format, length, accuracy).

Reference: tars-reference.md section 3 (reward functions 1-3) and section 6.1 (QA scoring).
The original judges correctness with the xFinder-qwen1505 model; here a rule-based extractor
plays that role (docs/original.md §11.7, "reward model cost"), with the same comparator: a
letter match, or the text of the option paired with the gold letter.

Pure functions, no torch.
"""
import functools
import re
from typing import Dict, List, Optional, Sequence, Tuple

LETTERS = 'ABCDEFGHIJ'

# docs/original.md §3.1, verbatim.
FORMAT_STRICT = re.compile(
    r'^<think>.*?<\/think>\s*<answer>.*The answer is [ABCD][\.:,].*<\/answer>$', re.DOTALL)
FORMAT_LOOSE = re.compile(r'^<think>.*<answer>.*[ABCD][\.:,]', re.DOTALL)


def format_score(completion: str) -> float:
    """Format reward (docs/original.md §3.1): 1.0 strict full match, 0.5 loose prefix match, else 0.0."""
    text = completion.strip()
    if FORMAT_STRICT.fullmatch(text):
        return 1.0
    if FORMAT_LOOSE.match(text):
        return 0.5
    return 0.0


def length_score(completion: str, target: int = 1024) -> float:
    """Length reward (docs/original.md §3.2): -|target - len(completion)| / target, in characters."""
    return -abs(target - len(completion)) / target


def gold_letter(answer_index: int) -> str:
    """The letter of option `answer_index` (0 -> 'A')."""
    if not 0 <= answer_index < len(LETTERS):
        raise ValueError(f"answer_index {answer_index} out of range 0..{len(LETTERS) - 1}")
    return LETTERS[answer_index]


def is_correct(output: str, options: Sequence[str], answer_index: int) -> bool:
    """Accuracy reward as a bool (docs/original.md §3.3 comparator): the extracted letter is the gold one."""
    return extract_choice(output, options) == gold_letter(answer_index)


# -----------------------------------------------------------------------------
# extraction
#
# The output is first cleaned (full-width punctuation, curly quotes, corner brackets and guillemets,
# markdown emphasis, LaTeX \text{}/\textbf{}/\mathbf{} wrappers, math delimiters, and a wrapper left
# open by an output cut off mid-markup, "\boxed{\text{B"), then read in a fixed order of evidence,
# most explicit first:
#   1. the whole text is a bare letter ("B", "(B)", "B.") or exactly one option's text;
#   2. statements, the LAST one that yields something decides (chain of thought revises itself):
#      strong ones - "the answer is X", "Answer: X", "my choice is X", "I'd go with X", "I'd say X",
#      \boxed{X}, 答案是X, 选X - may also name one option's text ("The answer is Paris.");
#      weak ones - "it's X", "that is X", "so X", "probably X" - count only when the letter ends
#      the sentence (or is followed by its own option text); and "X is correct", '"X" is the
#      answer', X项正确, "X是答案", "选项X, <its text>, 是正确的" (the Chinese verdict after the
#      letter). Two statements of the same sentence naming different letters cancel out, and so
#      does "\boxed{A} or \boxed{D}";
#   3. the last sentence is a letter ("Paris yes. B.", "So, option C.") or ends in ", option X.";
#   4. "X. <option text>" / "X) <option text>" at the start;
#   5. one letter mentioned as "option X" / "(X)" in a positive, un-negated last sentence;
#   6. a short answer (<= 200 characters) naming exactly one option's text, without negation.
# Inside <answer>...</answer> the same order is applied to the block first. A statement that
# commits to two letters ("A or B", "A和C"), or to a letter outside the options, gives None; so do
# texts that enumerate the options (a restated question) unless a statement commits to one.

_AMBIGUOUS = object()   # stop: no answer (two letters, or a letter outside the options)

_EDGE = ' \t\r\n"\'`$'

# Cleaning: same-meaning ASCII for full-width / curly characters, markdown emphasis dropped.
_TRANSLATE = str.maketrans({
    '\uff08': ' (', '\uff09': ') ', '\uff1a': ': ', '\uff0c': ', ', '\u3002': '. ', '\uff1b': '; ',
    '\uff01': '! ', '\uff1f': '? ', '\u3001': ', ', '\u3010': '[', '\u3011': ']', '\u201c': '"', '\u201d': '"',
    '\u2018': "'", '\u2019': "'", '\u300c': '"', '\u300d': '"', '\u300e': '"', '\u300f': '"', '\u00ab': '"',
    '\u00bb': '"', '\u00a0': ' ', '*': None, '`': None, '_': ' ',
    **{chr(0xff21 + i): LETTERS[i] for i in range(len(LETTERS))}})
_TEX_WRAP = re.compile(r'\\(?:textbf|textit|textrm|text|mathrm|mathbf|mathit|mbox|operatorname)\s*\{([^{}]*)\}')
_TEX_DELIM = re.compile(r'\\[()\[\]]|\$')
# A wrapper left open at the end (an output cut off mid-markup: "The answer is \boxed{\text{B"): dropped
_TEX_OPEN = re.compile(r'\\(?:boxed|textbf|textit|textrm|text|mathrm|mathbf|mathit|mbox|operatorname)\s*\{(?=[^{}]*$)')

_ANSWER_BLOCK = re.compile(r'<answer>(.*?)(?:</answer>|$)', re.DOTALL | re.IGNORECASE)

# Adverbs and asides allowed between a cue and its letter ("the answer is most likely B").
# (A closed list: "[a-z]+ly" would also eat an option such as "Italy".)
_ADV = (r"(?:\s*,?\s+(?:most\s+likely|most\s+probably|in\s+fact|for\s+sure|of\s+course|likely|probably|definitely|"
        r"clearly|obviously|certainly|surely|undoubtedly|typically|usually|generally|actually|really|simply|"
        r"ultimately|essentially|basically|presumably|apparently|evidently|arguably|technically|correctly|"
        r"honestly|still|then|thus|therefore|indeed|just|also|again|here|now|"
        r"i\s+(?:believe|think|guess|suppose|would\s+say)|in\s+my\s+(?:opinion|view))\b,?)")
_VERB = (r"(?:is|would|should|must|will|has\s+to|seems\s+to|appears\s+to)\b" + _ADV + r"{0,2}(?:\s+be\b)?"
         + _ADV + r"{0,2}")


def _word_cues(kind: str, alternatives: Sequence[str], tail: str) -> List[Tuple[str, str, re.Pattern]]:
    """(kind, first word, pattern) per alternative. Each pattern starts with its literal first word,
    which the re engine searches fast, then checks the word boundary before it; extraction runs a
    pattern only when its first word occurs in the text."""
    cues = []
    for alt in alternatives:
        first = re.match(r"[a-z']+", alt).group(0)
        cues.append((kind, first, re.compile(f"{first}(?<![a-z]{first}){alt[len(first):]}{tail}")))
    return cues


# Cues, all matched on the lower-cased text; the statement is the text right after the match.
# 's' strong: a letter, two letters (ambiguous) or one option's text; 'w' weak: only a letter that
# ends its sentence; 'v' a choice verb whose subject ("I", "we", "let's") is checked before it;
# 'c' "X is correct" / "(X) is the right answer" / "X is the answer" (the letter is read backwards).
_CUES = (
    _word_cues('s', ['answer'], r"s?(?:\s+(?:here|to\s+(?:this|the)\s+question|for\s+(?:this|the)\s+question|choice|"
                                r"option|letter))?(?:\s*" + _VERB + r"\s*:?|\s*[:=]|\s+[-\u2013\u2014]\s)")
    + _word_cues('s', ['option', 'choice', 'guess', 'pick', 'selection', 'bet', 'response'],
                 r"(?:\s+here)?\s*(?:" + _VERB + r"\s*:?|:)")
    + _word_cues('s', [r'correct\s+one', r'right\s+one', r'best\s+one', r'final\s+one', r'true\s+one'],
                 r"\s+" + _VERB + r"\s*:?")
    + _word_cues('v', ['choose', 'select', 'pick', r'go\s+(?:with|for)', r'going\s+(?:with|for)', 'say', 'answer',
                       'guess', r'opt\s+for', r'vote\s+for', r'stick\s+with', r'settle\s+on',
                       r'lean(?:ing)?\s+towards?'],
                 r"\b\s*:?")
    + _word_cues('w', ['it', 'that', 'this', 'which'],
                 r"(?:(?:'s|\s+has)?\s+(?:gotta|got\s+to)\s+be|\s+needs\s+to\s+be|\s+can\s+only\s+be|'s|\s+is|\s+was|"
                 r"\s+would\s+be|\s+has\s+to\s+be|\s+must\s+be|\s+should\s+be|\s+will\s+be)\b" + _ADV + r"{0,2}\s*:?")
    + _word_cues('w', ['so', 'thus', 'therefore', 'hence'], r"\b\s*,?")
    + _word_cues('w', ['definitely', 'probably', r'most\s+likely', 'likely', 'maybe', 'perhaps', 'possibly', 'surely',
                       'certainly'], r"\b\s*,?")
    + _word_cues('c', ['is', 'was'],
                 r"\s+(?:the\s+|a\s+)?(?:(?:only\s+)?(?:correct|right|best|true|most\s+(?:likely|accurate|appropriate|"
                 r"plausible))\b(?:\s+(?:answer|option|choice|one))?|answer\b)")
    + [('s', '答', re.compile(r"答案?(?:应该|应当|应|就|也|最终|可能)?\s*(?:是|为|选|:)\s*:?")),
       ('s', '选项', re.compile(r"选项(?:应该|应|就)?\s*(?:是|为)\s*:?")),
       ('s', '正确', re.compile(r"(?<![不非])正确的?(?:选项|答案)?(?:应该|应|就)?\s*(?:是|为)\s*:?")),
       ('s', '对的', re.compile(r"(?<![不])对的(?:选项|答案)?(?:应该|应|就)?\s*(?:是|为)\s*:?")),
       ('s', '选', re.compile(r"(?<![不别未没])选(?:择)?(?![项择])\s*:?"))]
)
_CUES_BY_WORD: Dict[str, List[Tuple[str, re.Pattern]]] = {}
for _kind, _word, _cue in _CUES:
    _CUES_BY_WORD.setdefault(_word, []).append((_kind, _cue))
_CUE_WORDS = frozenset(w for w in _CUES_BY_WORD if w.isascii())
_CUE_WORDS_CJK = tuple(w for w in _CUES_BY_WORD if not w.isascii())
# Every ASCII character but a-z to a space: the words of a region, to select the cues to run.
_NON_WORD = str.maketrans({chr(c): ' ' for c in range(128) if not chr(c).islower()})
_CHOOSER = re.compile(
    r"(?:(?:^|[^a-z'])(?:i|we)(?:\s+would|\s+will|'d|'ll|'m|\s+am)?(?:\s+(?:probably|definitely|still|rather|just|"
    r"also|then|have\s+to|going\s+to|gonna))?|(?:^|[^a-z])let(?:'s|\s+us|\s+me))\s+$")

# "B项正确", "B是答案", "C选项最合适", "选项C, 光合作用, 是正确的" (the option's text between the letter and the
# verdict: after a comma, no other letter, no negation)
_ZH_CORRECT = re.compile(
    r"(?<![A-Za-z0-9])(?:选项\s*)?([A-J])(?![A-Za-z0-9])\s*(?:选项|项)?"
    r"(?:\s*,\s*[^A-Za-z0-9,.;:!?\n不没非错别]{1,24}?\s*,?)?\s*(?:这个|这|它)?\s*(?:是|为)?\s*(?:最|最为)?\s*"
    r"(?:正确|对|答案|符合题意|合适|恰当|佳)")
_ZH_VERDICT_WORDS = ('正确', '对', '答案', '符合', '合适', '恰当', '佳')
_NEG_BEFORE = re.compile(r"(?<![a-z])(?:not|neither|nor|no|never|if|whether|n't)(?![a-z])|n't")

_BOXED = re.compile(r'\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}')

# A letter at the start of a statement. Upper case needs a word boundary after it; lower case
# must be bracketed or followed by punctuation / end ("Answer: b", but not "answer: a cat").
_STMT_LETTER = re.compile(
    r"(?i:either\s+|both\s+)?(?i:(?:option|choice|letter)\s*|选项\s*|选\s*)?"
    r"([\(\[\{])?\s*([A-Za-z])(?![A-Za-z0-9(\[{^_=+*/])(?!'[A-Za-z])\s*([\)\]\}])?")
_LOWER_OK_AFTER = re.compile(r"\s*(?:[.,;:!?)]|'?$|'\s)")
# A second letter joined to the first: "A or B", "(A) and (C)", "A/B", "A, B", "A或B", "A和C".
_ALT_LETTER = re.compile(
    r"[\s)\]}]*(?:,|/|&|(?i:\bor\b)|(?i:\band\b)|(?i:\bnor\b)|或者|或|还是|和|与|及)\s*"
    r"(?i:(?:option|choice)\s*)?[\(\[]?\s*"
    r"([A-Z])(?![A-Za-z0-9])(?!'[A-Za-z])(?!\s+(?i:is|was|are|were)\b)")
# After "A" / "I": a lower-case word makes it the article / the pronoun, except these.
_WORD_AFTER = re.compile(r"\s+([a-z'][a-z']*)")
_LETTER_WORDS = frozenset(('because', 'since', 'as', 'for', 'which', 'is', 'was', 'seems', 'fits', 'here',
                           'then', 'so', 'but', 'though', 'although', 'given', 'due', 'according', 'or', 'and'))
_NEGATED_STMT = re.compile(r"(?i:not|none|neither|unclear|unknown|uncertain|cannot|can't|n/a|impossible)\b|不|无法")

# A clean tail after a weak cue's letter: nothing, or the letter's own option text, or a hedge.
_TAIL_STRIP = ' \t.,;:!?)-\u2013\u2014\'"'
_HEDGES = frozenset(('i think', 'i believe', 'i guess', 'i suppose', 'probably', 'i would say', "i'd say",
                     'for sure', 'definitely', 'right', 'i am sure', "i'm sure", "i'm pretty sure"))
_ARTICLE = re.compile(r'^(?:the|an?)\s+')

# A sentence ends at a newline or at ., !, ?, ; followed by a space.
_SENT_END = re.compile(r"[\n.!?;](?:(?<=\n)|(?=\s))")
_CONNECTIVES = re.compile(
    r"^(?:(?:so|thus|therefore|hence|ok|okay|yes|well|then|finally|overall|in\s+conclusion|in\s+summary|in\s+short)"
    r"\b\s*[,:]?\s*)+")
# "Without a doubt, B." / "That's easy: A." (no other letter in the sentence, no negation)
_TRAILING_LETTER = re.compile(r"[,:]\s*[\(\[]?([A-J])[\)\]]?\s*[.!]?\s*$")
_OTHER_LETTER = re.compile(r"(?<![A-Za-z0-9'])[A-J](?![A-Za-z0-9])")
_TRAILING_MENTION = re.compile(
    r"[,;:\-\u2013\u2014]\s*(?:which\s+is\s+|that\s+is\s+|that's\s+|so\s+|i\.e\.,?\s+)?(?i:option|choice)\s+"
    r"[\(\[]?([A-Ja-j])[\)\]]?\s*[.!]?\s*$")
_BARE = re.compile(r'([\(\[])?\s*([A-Za-z])\s*([\)\]])?\s*[.:,!]?')
_START = re.compile(r'[\(\[]?([A-J])[.):\]]\s+\S|[\(\[]?([a-j])[)\]]\s+\S')
# Option labels anywhere ("A. ", "(B) ", "C) "; "Option D" at a line start): two or more distinct
# ones mean the text enumerates the options. (The letter is matched first: fast in the re engine.)
_LABEL = re.compile(r"[A-J][.):\]](?=\s)")
_LINE_OPTION = re.compile(r"\n[ \t]*option\s+([a-j])\b")
_MENTIONS = (
    re.compile(r"option(?<![a-z]option)\s+([a-z])(?![\w'])"),
    re.compile(r"choice(?<![a-z]choice)\s+([a-z])(?![\w'])"),
    re.compile(r"\(([a-z])\)"),
)
_NEGATION = re.compile(r"(?<![a-z])(?:not|no|neither|nor|never|incorrect|wrong|false|isn't|cannot|can't|unsure|"
                       r"eliminat\w*|rule\w*\s+out|if|whether|explain)(?![a-z])|n't|不|无法|错")
_POSITIVE = re.compile(r"(?<![a-z])(?:correct|right|best|answer|accurate|fits|matches|choose|pick|go\s+with)"
                       r"(?![a-z])|正确|对")
_SHORT_NEGATION = re.compile(r"(?<![a-z])(?:not|no|neither|nor|never|wrong|incorrect|unsure|unclear|unknown|"
                             r"cannot|maybe|either|between|whether|if|both|all)(?![a-z])|n't|\?|不|无法|没|错|或")
_OPTION_LABEL = re.compile(r'^\s*[\(\[]?[A-Ja-j][.):\]]\s+')


def extract_choice(output: str, options: Sequence[str]) -> Optional[str]:
    """The option letter `output` commits to, or None (refusal, no answer, ambiguous, out of range).

    Rule-based stand-in for the xFinder judge of docs/original.md §3.3 / §6.1; only the first
    len(options) letters can be returned.
    """
    if not output or not output.strip():
        return None
    n = min(len(options), len(LETTERS))
    opts = _option_keys(tuple(str(o) for o in options[:n]))
    text = _clean(output)
    if '<answer>' in text or '<ANSWER>' in text or '<Answer>' in text:
        blocks = _ANSWER_BLOCK.findall(text)
        if blocks:
            res = _extract_region(blocks[-1], opts, n)
            if res is _AMBIGUOUS:
                return None
            if res is not None:
                return res
    res = _extract_region(text, opts, n)
    return None if res is _AMBIGUOUS else res


@functools.lru_cache(maxsize=4096)
def _option_keys(options: Tuple[str, ...]) -> Tuple[str, ...]:
    """Normalised option texts ("A. Paris" -> "paris"); cached, since a question's rollouts share them."""
    return tuple(_norm(_OPTION_LABEL.sub('', o)) for o in options)


def _clean(text: str) -> str:
    """Full-width and curly punctuation to ASCII, markdown emphasis dropped, LaTeX wrappers unwrapped."""
    if not text.isascii() or '*' in text or '`' in text or '_' in text:
        text = text.translate(_TRANSLATE)
    if '\\' in text or '$' in text:
        text = _TEX_WRAP.sub(r' \1 ', _TEX_WRAP.sub(r' \1 ', text))   # \textbf{\text{B}} has two levels
        text = _TEX_DELIM.sub(' ', text)
        for _ in range(3):   # "\boxed{\text{B": the inner one first
            opened = _TEX_OPEN.sub(' ', text)
            if opened == text:
                break
            text = opened
    return text


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


def _sentence(text: str, start: int, end: int) -> Tuple[int, int]:
    """Bounds of the sentence around text[start:end] (split at newlines and ., !, ?, ; + space)."""
    a = 0
    for m in _SENT_END.finditer(text, max(0, start - 400), start):
        a = m.end()
    m = _SENT_END.search(text, end)
    return a, (m.start() if m else len(text))


def _extract_region(text: str, opts: Sequence[str], n: int):
    """A letter, _AMBIGUOUS or None for one cleaned region (an answer block or the whole output)."""
    whole = text.strip(_EDGE)
    if not whole:
        return None
    # 1. whole text: bare letter, or one option's text
    if len(whole) <= 6:
        letter = _bare_letter(whole)
        if letter is not None:
            return _check(letter, n)
    if opts and len(whole) <= 2 * max(len(o) for o in opts) + 10:
        res = _whole_option(whole, opts)
        if res is not None:
            return res
    low = _lower(text)
    # 2. statements, last first
    res = _statements(text, low, opts, n)
    if res is not None:
        return res
    enumerated = _enumerates(text, low, opts)
    # 3. the last sentence
    if not enumerated:
        res = _last_sentence(whole, opts, n)
        if res is not None:
            return res
        # 4. "X. <option text>" at the start
        m = _START.match(whole)
        if m is not None:
            res = _letter_at(whole, n)
            if res is not None:
                return res
    # 5. mentions
    res = _read_mentions(text, low, n)
    if res is not None:
        return res
    # 6. a short answer naming one option
    if len(whole) <= 200 and 'option' not in low and not _SHORT_NEGATION.search(low):
        res = _options_in(whole, opts)
        if res is not _AMBIGUOUS and (res is None or not _names_another(low, opts, LETTERS.index(res))):
            return res
    return None


def _names_another(low: str, opts: Sequence[str], hit: int) -> bool:
    """Whether the text also names another option by its first word ("Both classical and operant
    conditioning": "classical" is option A's first word when the full text matched option B)."""
    own = set(opts[hit].split())
    for i, o in enumerate(opts):
        words = o.split()
        if i == hit or not words or len(words[0]) < 4 or words[0] in own:
            continue
        start = low.find(words[0])
        while start >= 0:
            end = start + len(words[0])
            if (start == 0 or not _word_char(low[start - 1])) and (end == len(low) or not _word_char(low[end])):
                return True
            start = low.find(words[0], start + 1)
    return False


_TAIL_WINDOW = 300   # long texts: the last ~300 characters are searched first (the last statement wins)


def _statements(text: str, low: str, opts: Sequence[str], n: int):
    """Evidence from answer statements: the last one that yields something, unless a statement of
    the same sentence names another letter. A long text is read in two parts, the tail first (from
    a sentence start), so that a final answer statement costs a scan of the tail only."""
    cut = 0
    if len(text) > _TAIL_WINDOW + 200:
        for m in _SENT_END.finditer(text, len(text) - _TAIL_WINDOW - 200, len(text) - _TAIL_WINDOW):
            cut = m.end()
    if cut:
        res = _decide(text, _collect(text, low, cut, len(text)), opts, n)
        if res is not None:
            return res
    return _decide(text, _collect(text, low, 0, cut or len(text)), opts, n)


def _collect(text: str, low: str, lo: int, hi: int) -> List[Tuple[int, str, object]]:
    """(start, kind, ref) of every cue starting in text[lo:hi], last first."""
    found = []
    region = low[lo:hi]
    words = set(region.translate(_NON_WORD).split()) & _CUE_WORDS
    if not region.isascii():
        words.update(w for w in _CUE_WORDS_CJK if w in region)
    for word in words:
        for cue_kind, cue in _CUES_BY_WORD[word]:
            for m in cue.finditer(low, lo, hi):
                kind = cue_kind
                if kind == 'v':   # a choice verb counts after "I", "we", "let's"
                    if not _CHOOSER.search(low, max(0, m.start() - 24), m.start()):
                        continue
                    kind = 's'
                found.append((m.start(), kind, m.start() if kind == 'c' else m.end()))
    if not region.isascii() and any(text.find(w, lo, hi) >= 0 for w in _ZH_VERDICT_WORDS):
        for m in _ZH_CORRECT.finditer(text, lo, hi):
            found.append((m.start(), 'z', m.group(1)))
    if text.find('\\boxed', lo, hi) >= 0:
        for m in _BOXED.finditer(text, lo):
            if m.start() < hi:
                found.append((m.start(), 'b', (m.group(1), m.end())))
    found.sort(reverse=True)   # last first; ties in a fixed order
    return found


def _decide(text: str, found: List[Tuple[int, str, object]], opts: Sequence[str], n: int):
    for i, (pos, kind, ref) in enumerate(found):
        res = _read_evidence(text, kind, ref, opts, n)
        if res is None:
            continue
        if res is _AMBIGUOUS:
            return res
        a, _ = _sentence(text, pos, pos)
        for pos2, kind2, ref2 in found[i + 1:]:
            if pos2 < a:
                break
            other = _read_evidence(text, kind2, ref2, opts, n, raw=True)
            if other is not None and other != res:
                return _AMBIGUOUS
        return res
    return None


def _read_evidence(text: str, kind: str, ref, opts: Sequence[str], n: int, raw: bool = False):
    """What one piece of evidence says: a letter, _AMBIGUOUS or None. raw: a weak cue's letter counts
    whatever follows it (used to find a competing letter in the same sentence: "Maybe A, maybe C")."""
    if kind == 's':
        return _read_statement(text, ref, opts, n)
    if kind == 'w':
        return _read_weak(text, ref, opts, n, raw)
    if kind == 'c':
        letter = _letter_before(text, ref)
        if letter is None:
            return None
        a, _ = _sentence(text, ref, ref)
        if _NEG_BEFORE.search(text[a:ref].lower()):
            return None
        return _check(letter, n)
    if kind == 'z':
        return _check(ref, n)
    content, end = ref
    res = _read_boxed(content, opts, n)
    alt = _ALT_LETTER.match(text, end) if res is not None and res is not _AMBIGUOUS else None
    return _AMBIGUOUS if alt is not None and alt.group(1) != res else res   # "\boxed{A} or \boxed{D}"


def _bare_letter(s: str) -> Optional[str]:
    m = _BARE.fullmatch(s)
    if m is None:
        return None
    letter = m.group(2)
    if letter.islower() and not m.group(3):   # "a" / "a." is a word; "(a)" / "a)" is a label
        return None
    return letter.upper()


def _whole_option(s: str, opts: Sequence[str]):
    key = _norm(s)
    hits = [i for i, o in enumerate(opts) if o and o == key]
    if len(hits) == 1:
        return LETTERS[hits[0]]
    return _AMBIGUOUS if hits else None


def _word_char(c: str) -> bool:
    """An ASCII letter or digit: a word boundary check that lets CJK text run into an option."""
    return c.isascii() and c.isalnum()


def _options_in(s: str, opts: Sequence[str]):
    """The one option whose text occurs in `s` (whole words), _AMBIGUOUS if several, else None."""
    low = ' '.join(s.lower().split())
    hits = []
    for i, o in enumerate(opts):
        if not o:
            continue
        start = low.find(o)
        while start >= 0:
            end = start + len(o)
            if (start == 0 or not _word_char(low[start - 1])) and (end == len(low) or not _word_char(low[end])):
                hits.append(i)
                break
            start = low.find(o, start + 1)
    if len(hits) > 1:   # "Paris" inside "Paris, Texas" counts once
        hits = [i for i in hits if not any(j != i and opts[i] in opts[j] for j in hits)]
    if len(hits) == 1:
        return LETTERS[hits[0]]
    return _AMBIGUOUS if hits else None


def _letter_match(s: str):
    """(letter upper-cased, end of the label) for a letter at the start of s, or None."""
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
    elif letter in 'AI' and not bracketed:
        w = _WORD_AFTER.match(after)
        if w is not None and w.group(1) not in _LETTER_WORDS:
            return None   # the article or the pronoun: "A cat ...", "The answer is I think B"
    return letter, m


def _letter_at(s: str, n: int):
    """Parse a letter at the start of a statement: letter, _AMBIGUOUS, or None."""
    lm = _letter_match(s)
    if lm is None:
        return None
    letter, m = lm
    alt = _ALT_LETTER.match(s, m.end())
    if alt is not None and alt.group(1) != letter:
        # "B, I think" / "B and A is ..." use the pronoun or the article, not a second letter
        if not (alt.group(1) in 'AI' and _WORD_AFTER.match(s, alt.end())
                and _WORD_AFTER.match(s, alt.end()).group(1) not in _LETTER_WORDS):
            return _AMBIGUOUS
    return _check(letter, n)


def _statement_text(text: str, pos: int) -> str:
    s = text[pos:pos + 240].lstrip(_EDGE + ':-')
    nl = s.find('\n')
    return (s[:nl] if nl >= 0 else s).rstrip()


def _enumerates(text: str, low: str, opts: Sequence[str]) -> bool:
    """Whether the text lists two or more options by label ("A. ", "(B) ", "Option C" lines, "D, Berlin")."""
    labels = set()
    for m in _LABEL.finditer(text):
        i = m.start()
        if i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "'"):
            labels.add(text[i])
    if 'option' in low:
        labels.update(m.group(1).upper() for m in _LINE_OPTION.finditer('\n' + low))
    return len(labels) >= 2 or _labelled_options(text, low, opts) >= 2


def _labelled_options(text: str, low: str, opts: Sequence[str]) -> int:
    """How many options appear as their letter followed by their text ("A, London", "(B) Paris")."""
    count = 0
    for i, o in enumerate(opts):
        if not o:
            continue
        pos = low.find(o)
        while pos >= 0:
            pre = text[max(0, pos - 8):pos].rstrip(' \t,.:;)-\u2013\u2014')
            if pre.endswith(LETTERS[i]) and (len(pre) == 1 or not pre[-2].isalnum()):
                count += 1
                break
            pos = low.find(o, pos + 1)
    return count


def _read_statement(text: str, pos: int, opts: Sequence[str], n: int):
    s = _statement_text(text, pos)
    if not s or s.startswith('\\boxed'):
        return None
    res = _letter_at(s, n)
    if res is not None:
        return res
    if _NEGATED_STMT.match(s):
        return None
    return _options_in(s, opts)


def _clean_tail(tail: str, letter: str, opts: Sequence[str]) -> bool:
    """Whether the rest of a sentence after a weak cue's letter leaves the letter as the answer."""
    tail = _norm(tail.strip(_TAIL_STRIP))
    if not tail or tail in _HEDGES:
        return True
    i = LETTERS.find(letter)
    return 0 <= i < len(opts) and bool(opts[i]) and _ARTICLE.sub('', tail) in (opts[i], _ARTICLE.sub('', opts[i]))


def _read_weak(text: str, pos: int, opts: Sequence[str], n: int, raw: bool = False):
    s = _statement_text(text, pos)
    if not s:
        return None
    lm = _letter_match(s)
    if lm is None:
        return None
    letter, m = lm
    if raw:
        return letter
    end = _SENT_END.search(s, m.end())
    tail = s[m.end():end.start() if end else len(s)]
    alt = _ALT_LETTER.match(s, m.end())
    if alt is not None and alt.group(1) != letter:
        rest = s[alt.end():]
        end2 = _SENT_END.search(rest)
        return _AMBIGUOUS if not rest[:end2.start() if end2 else len(rest)].strip(_TAIL_STRIP) else None
    if letter not in LETTERS[:n] or not _clean_tail(tail, letter, opts):
        return None   # "it's O(n)", "that's X-rays": not a committed option letter
    return letter


def _read_boxed(content: str, opts: Sequence[str], n: int):
    s = content.replace('{', '').replace('}', '').strip(_EDGE)
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
    """The upper-case letter label ("B", "(B)", '"B"', "option B") just before text[end], else None."""
    i = end - 1
    if i < 0 or not text[i].isspace():
        return None
    while i >= 0 and text[i].isspace():
        i -= 1
    closing = text[i] if i >= 0 and text[i] in ')]"\'' else None
    if closing:
        i -= 1
    if i < 0 or text[i] not in LETTERS:
        return None
    letter = text[i]
    i -= 1
    if closing and i >= 0 and text[i] == {')': '(', ']': '['}.get(closing, closing):
        i -= 1
    elif closing is not None and closing in '"\'':   # a quote closes only a quoted letter
        return None
    if i >= 0 and (text[i].isascii() and text[i].isalnum() or text[i] in "'_"):
        return None
    return letter


def _last_sentence_start(text: str) -> int:
    """Where the last sentence with content begins (sentences end at newlines and ., !, ?, ; + space)."""
    end = len(text.rstrip(_EDGE + '.!?;'))
    a = 0
    for m in _SENT_END.finditer(text, max(0, end - 300), end):
        a = m.end()
    return a


def _last_sentence(whole: str, opts: Sequence[str], n: int):
    """A final sentence that is a letter ("B.", "So, option C.", "C) 16") or ends in ", option X."."""
    sent = whole[_last_sentence_start(whole):].strip(_EDGE)
    m = _TRAILING_MENTION.search(sent)
    if m is not None:
        return _check(m.group(1).upper(), n)
    m = _TRAILING_LETTER.search(sent)
    if m is not None and not _OTHER_LETTER.search(sent, 0, m.start()) and not _NEGATION.search(sent.lower()):
        return _check(m.group(1), n)
    s = _CONNECTIVES.sub('', sent.lower())
    s = sent[len(sent) - len(s):]
    lm = _letter_match(s)
    if lm is None:
        return None
    letter, lmatch = lm
    if s[lmatch.start(2)].islower() and not lmatch.group(3):
        return None   # "a" is the article, "(a)" / "a)" a label
    alt = _ALT_LETTER.match(s, lmatch.end())
    if alt is not None and alt.group(1) != letter:
        return _AMBIGUOUS
    if not _clean_tail(s[lmatch.end():], letter, opts):
        return None
    return _check(letter, n)


def _read_mentions(text: str, low: str, n: int):
    """'option C' / '(B)': one letter mentioned in the whole text, in a positive, un-negated last sentence."""
    valid = LETTERS[:n]
    a = _last_sentence_start(low)
    seg = low[a:]
    letters = {text[a + m.start(1)].upper() for pat in _MENTIONS for m in pat.finditer(seg)}
    letters &= set(valid)
    if len(letters) != 1 or _NEGATION.search(seg) or not _POSITIVE.search(seg):
        return None
    letter = letters.pop()
    for pat in _MENTIONS:
        for m in pat.finditer(low, 0, a):
            other = text[m.start(1)].upper()
            if other in valid and other != letter:
                return None
    return letter
