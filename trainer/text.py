"""Text normalisation and word error rate, as the original scored ASR (docs/original.md §6.2): used by the
ASR evaluation and by the MMLU builder's TTS round-trip check."""
from __future__ import annotations

import functools
from typing import Dict, List


@functools.lru_cache(maxsize=1)
def _normalizer():
    """The original's jiwer transform chain (built once)."""
    import jiwer
    return jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.ExpandCommonEnglishContractions(),
                          jiwer.RemoveWhiteSpace(replace_by_space=True), jiwer.RemoveMultipleSpaces(), jiwer.Strip()])


def normalize(text: str) -> str:
    """The original's WER normalisation: "I can't go, it's John's dog." -> "i cant go its johns dog".

    jiwer removes Unicode punctuation (categories P*) only: symbols such as "+", "$", "=" stay ("2+2").
    "Whitespace to single space" is every whitespace character to a space, then runs folded: jiwer splits
    words on spaces only, so a newline left in "Option A: 3\nOption B: 4" would glue "3\noption" into one
    word, and no four-option prompt could then reach the original's published WER < 0.1.
    """
    return _normalizer()(text)


def wer_scores(references: List[str], hypotheses: List[str]) -> Dict:
    """Mean capped per-utterance WER (the original's score), corpus WER, counts."""
    import jiwer
    pairs = [(normalize(r), normalize(h)) for r, h in zip(references, hypotheses, strict=True)]
    kept = [(r, h) for r, h in pairs if r]
    per_utt = [min(1.0, jiwer.wer(r, h)) if h else 1.0 for r, h in kept]
    corpus = jiwer.wer([r for r, _ in kept], [h or '<empty>' for _, h in kept]) if kept else None
    return {'score': sum(per_utt) / len(per_utt) if per_utt else None, 'corpus_wer': corpus, 'count': len(kept),
            'skipped_empty_reference': len(pairs) - len(kept), 'per_utterance': per_utt}
