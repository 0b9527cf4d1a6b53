"""Tests for trainer/answer.py: format / length rewards (docs/original.md §3.1, §3.2) and answer extraction
(§3.3, §6.1).

Every expectation below was set by hand from the reference and the case text.
"""
import pytest

from trainer.answer import (
    FORMAT_LOOSE, FORMAT_STRICT, LETTERS, extract_choice, format_score, gold_letter, is_correct,
    length_score)

CAPITALS = ['London', 'Paris', 'Rome', 'Berlin']          # France -> B
PLANETS = ['Mercury', 'Venus', 'Mars']                   # 3 options: A-C only
TEN = [f'option text {i}' for i in range(10)]            # A-J


# -----------------------------------------------------------------------------
# format reward (docs/original.md §3.1)

@pytest.mark.parametrize('completion, expected', [
    ('<think>France is in Europe; its capital is Paris.</think><answer>The answer is B.</answer>', 1.0),
    ('<think>reasoning</think>\n\n<answer>The answer is C: Rome</answer>\n', 1.0),
    ('  <think>reasoning</think> <answer>The answer is D, Berlin.</answer>  ', 1.0),
    # </answer> missing -> only the loose prefix match
    ('<think>reasoning</think><answer>The answer is A.', 0.5),
    # no "The answer is", but a letter followed by '.' inside the answer
    ('<think>reasoning</think><answer>B. Paris</answer>', 0.5),
    # no <think> prefix
    ('<answer>The answer is A.</answer>', 0.0),
    ('The answer is A.', 0.0),
    # E is outside [ABCD] for both regexes
    ('<think>reasoning</think><answer>The answer is E.</answer>', 0.0),
    # letter not followed by . : ,
    ('<think>reasoning</think><answer>The answer is B</answer>', 0.0),
])
def test_format_score(completion, expected):
    assert format_score(completion) == expected


def test_format_regexes_are_the_originals():
    assert FORMAT_STRICT.pattern == r'^<think>.*?<\/think>\s*<answer>.*The answer is [ABCD][\.:,].*<\/answer>$'
    assert FORMAT_LOOSE.pattern == r'^<think>.*<answer>.*[ABCD][\.:,]'


# -----------------------------------------------------------------------------
# length reward (docs/original.md §3.2)

def test_length_score():
    assert length_score('') == -1.0
    assert length_score('x' * 512) == -0.5
    assert length_score('x' * 1024) == 0.0
    assert length_score('x' * 2048) == -1.0
    assert length_score('x' * 512, target=512) == 0.0


# -----------------------------------------------------------------------------
# extraction

COT_C = ("Let's think step by step. Photosynthesis converts light energy into chemical energy "
         "stored in glucose. Option A describes cellular respiration, which releases energy. "
         "Option B is about transpiration, the loss of water. The process in the question matches "
         "photosynthesis. The answer is C.")

COT_REVISE = ("Let's check each option. Option A is wrong because it describes a different process. "
              "Option B is also incorrect. Option C is partly true, but incomplete. "
              "So the answer is D.")

CASES = [
    # chain of thought ending in an answer statement
    (COT_C, CAPITALS, 'C'),
    (COT_REVISE, CAPITALS, 'D'),
    ("The answer is B. Wait, let me reconsider: the question asks about Germany, not France. "
     "Actually, the answer is D.", CAPITALS, 'D'),
    # think / answer tags
    ("<think>France's capital is Paris, which is option B.</think><answer>The answer is B.</answer>",
     CAPITALS, 'B'),
    ("<think>Rome is the capital of Italy.</think>\n<answer>The answer is C. Rome</answer>", CAPITALS, 'C'),
    # the answer block is read first
    ("<think>Option A seems right at first, but the answer is C.</think>\n<answer>B</answer>", CAPITALS, 'B'),
    # an answer block with no answer falls back to the whole text
    ("<think>Berlin is in Germany, so the answer is D.</think><answer>I am not sure.</answer>", CAPITALS, 'D'),
    # an ambiguous answer block is final
    ("<think>The answer is A.</think><answer>The answer is A or C.</answer>", CAPITALS, None),
    # \boxed
    ("The sum is 12, so the correct choice is listed as the second option.\n\\boxed{B}", CAPITALS, 'B'),
    ("Step 1: Berlin is the capital of Germany.\nFinal answer: $\\boxed{\\text{D}}$", CAPITALS, 'D'),
    ("Therefore the final answer is \\boxed{D. Berlin}", CAPITALS, 'D'),
    ("\\boxed{A, B}", CAPITALS, None),
    ("The answer is \\boxed{\\textbf{C}}", CAPITALS, 'C'),
    # explicit answer forms
    ("The correct answer is (C).", CAPITALS, 'C'),
    ("Answer: b", CAPITALS, 'B'),
    ("**Answer:** C", CAPITALS, 'C'),
    ("Answer: A", CAPITALS, 'A'),
    ("Looking at the options, I would choose (B) Paris since it is the capital of France.", CAPITALS, 'B'),
    ("Therefore, C is the correct answer.", CAPITALS, 'C'),
    ("The answer is B, I think.", CAPITALS, 'B'),
    ("the answer is (d)", CAPITALS, 'D'),
    ("I'd go with D.", CAPITALS, 'D'),
    ("B is not correct. The answer must be D.", CAPITALS, 'D'),
    # option mention, bracketed letter, bare letter, "X. text"
    ("Option D", CAPITALS, 'D'),
    ("(A)", CAPITALS, 'A'),
    ("C", CAPITALS, 'C'),
    ("B.", CAPITALS, 'B'),
    ("B)", CAPITALS, 'B'),
    ("B. Paris", CAPITALS, 'B'),
    # option text
    ("Paris", CAPITALS, 'B'),
    ("paris.", CAPITALS, 'B'),
    ("The answer is Paris.", CAPITALS, 'B'),
    ("The answer is Paris or London.", CAPITALS, None),
    # no answer
    ("I cannot determine the answer.", CAPITALS, None),
    ("Well, the answer is a matter of opinion.", CAPITALS, None),
    ("The answer is not A.", CAPITALS, None),
    ("Option A is wrong.", CAPITALS, None),
    ("", CAPITALS, None),
    ("   \n ", CAPITALS, None),
    # two letters in the final statement
    ("The answer is A or B.", CAPITALS, None),
    # letters outside the options
    ("The answer is D.", PLANETS, None),
    ("D", PLANETS, None),
    ("The answer is H.", TEN, 'H'),
    ("The answer is H.", CAPITALS, None),
    # the article "A" and the word "a" are not answers
    ("A cat is a small domesticated mammal. A dog is also a mammal.", CAPITALS, None),
    ("a", CAPITALS, None),
    # an echo of the options is not an answer
    ("A. London\nB. Paris\nC. Rome\nD. Berlin", CAPITALS, None),
    # phrasings of real voice assistants that the first extractor missed (issue 10)
    ("So the answer is option **A**.", CAPITALS, 'A'),
    ("The answer is \\( \\text{A} \\).", CAPITALS, 'A'),
    ("The answer is 'B'.", CAPITALS, 'B'),
    ("I'd say B.", CAPITALS, 'B'),
    ("The answer is typically C.", CAPITALS, 'C'),
    ("答案是C。", CAPITALS, 'C'),
    ("正确答案是：C", CAPITALS, 'C'),
    ("选C", CAPITALS, 'C'),
    ("The answer is \\(\\textbf{B}\\).", CAPITALS, 'B'),
    ("The answer is $\\mathbf{D}$.", CAPITALS, 'D'),
    ("The answer is \u201cC\u201d.", CAPITALS, 'C'),
    ("It's B, Paris.", CAPITALS, 'B'),
    ("C) Rome", CAPITALS, 'C'),
    ("The capital of France is Paris.", CAPITALS, 'B'),
    ("<think>Paris is in France.</think><answer>答案是B。</answer>", CAPITALS, 'B'),
    # no commitment, or two options
    ("It could be A or B.", CAPITALS, None),
    ("I'm not sure.", CAPITALS, None),
    ("Neither A nor B is right, I can't tell", CAPITALS, None),
    ("A and C are both plausible", CAPITALS, None),
    ("Maybe A, maybe C.", CAPITALS, None),
    ("答案可能是A或B。", CAPITALS, None),
    ("Which city is the capital of France?\nOption A: London\nOption B: Paris\nOption C: Rome\nOption D: Berlin",
     CAPITALS, None),
    ("Sure, here are the options again: A, London; B, Paris; C, Rome; D, Berlin.", CAPITALS, None),
    ("Option A describes the capital of the United Kingdom.", CAPITALS, None),
    # an option ending in -ly is not read as an adverb; a second option named by its first word
    ("So the answer is Italy.", ['France', 'Italy', 'Spain', 'Germany'], 'B'),
    ("Both classical and operant conditioning involve association.",
     ['Classical conditioning', 'Operant conditioning', 'Observational learning', 'Habituation'], None),
    # a letter-like token that is not an option letter: "O(n)" is read as no letter, the option text counts
    ("A nested loop is O(n^2), option D.", ['O(n)', 'O(log n)', 'O(n log n)', 'O(n^2)'], 'D'),
    ("Merge sort is O(n log n). It's C.", ['O(n)', 'O(log n)', 'O(n log n)', 'O(n^2)'], 'C'),
]


@pytest.mark.parametrize('output, options, expected', CASES)
def test_extract_choice(output, options, expected):
    assert extract_choice(output, options) == expected


# -----------------------------------------------------------------------------
# the labelled set (tests/data/judge_cases.jsonl): hand-written outputs, positives with their letter
# and negatives (no commitment, two options, restated questions) expected None

def test_judge_set_recall_and_no_false_answers():
    from scripts.bench import judge_quality, load_judge_cases
    cases = load_judge_cases()
    assert len(cases) >= 300
    assert len({c['id'] for c in cases}) == len(cases)
    kinds = {c['kind'] for c in cases}
    assert {'voice', 'cot', 'systhink', 'zh', 'negative'} <= kinds
    assert sum(c['expected'] is None for c in cases) >= 100
    q = judge_quality(cases)
    assert q['false_answers'] == 0, q['false']
    assert q['recall'] >= 0.97, q['missed']
    assert q['precision'] == 1.0


def test_judge_on_the_phrasings_written_before_its_last_change():
    # unclosed markdown / LaTeX around the letter, quoted letters, Chinese verdicts after the letter, and
    # negatives committing to none or two options (docs/evaluation.md "Rule judge": 20 of 37 before the change)
    from scripts.bench import judge_quality, load_judge_cases
    cases = [c for c in load_judge_cases() if c['id'].startswith('phrasing-')]
    assert {c['phrasing'] for c in cases} >= {'markup', 'quoted', 'zh-verdict', 'markup-neg', 'quoted-neg', 'zh-neg'}
    q = judge_quality(cases)
    assert (q['positives'], q['negatives']) == (37, 18)
    assert q['false_answers'] == 0, q['false']
    # missed: "巴黎是正确答案" with English options, a translation out of a rule's reach
    assert q['missed'] == ['phrasing-030']


def test_judge_quality_counts():
    from scripts.bench import judge_quality
    cases = [
        {'id': 'p1', 'output': 'The answer is B.', 'options': CAPITALS, 'expected': 'B'},      # right
        {'id': 'p2', 'output': 'The answer is C.', 'options': CAPITALS, 'expected': 'B'},      # wrong letter
        {'id': 'p3', 'output': 'I do not know.', 'options': CAPITALS, 'expected': 'A'},        # missed
        {'id': 'n1', 'output': 'The answer is D.', 'options': CAPITALS, 'expected': None},     # false answer
        {'id': 'n2', 'output': 'It could be A or B.', 'options': CAPITALS, 'expected': None},  # clean
    ]
    q = judge_quality(cases)
    assert (q['positives'], q['negatives']) == (3, 2)
    assert q['recall'] == 1 / 3
    assert q['precision'] == 1 / 3   # 1 right of 3 letters returned
    assert q['false_answers'] == 2 and q['false'] == ['p2', 'n1'] and q['missed'] == ['p3']


def test_load_judge_cases_rejects_bad_rows(tmp_path):
    from scripts.bench import load_judge_cases
    path = tmp_path / 'cases.jsonl'
    path.write_text('{"id": "x1", "output": "B", "options": ["a", "b"], "expected": "C"}\n')
    with pytest.raises(ValueError, match="x1: field 'expected'"):
        load_judge_cases(path)
    path.write_text('{"id": "x2", "output": "B", "options": ["a", "b"]}\n')
    with pytest.raises(ValueError, match="line 1: missing field 'expected'"):
        load_judge_cases(path)


def test_extract_choice_never_raises_on_noise():
    import random
    rng = random.Random(0)
    alphabet = (list('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefg ()[]{}.,:;!?*_`$\\\'"-/\n')
                + list('答案是选项正确或和不，。：（）'))
    words = ['the answer is ', 'option ', 'it\'s ', 'so ', '\\boxed{', '\\text{', '<answer>', '</answer>', 'is correct',
             'I\'d say ', '选', '答案：', 'either ', ' or ', ' and ']
    for _ in range(3000):
        parts = [rng.choice(words) if rng.random() < 0.3 else rng.choice(alphabet) for _ in range(rng.randint(0, 40))]
        got = extract_choice(''.join(parts), CAPITALS)
        assert got is None or got in 'ABCD'


def test_is_correct_and_gold_letter():
    assert LETTERS == 'ABCDEFGHIJ'
    assert gold_letter(0) == 'A'
    assert gold_letter(3) == 'D'
    assert is_correct("The answer is B.", CAPITALS, 1) is True
    assert is_correct("The answer is B.", CAPITALS, 0) is False
    assert is_correct("Paris", CAPITALS, 1) is True
    assert is_correct("I don't know.", CAPITALS, 1) is False
    assert is_correct(COT_C, CAPITALS, 2) is True
    with pytest.raises(ValueError):
        gold_letter(10)
