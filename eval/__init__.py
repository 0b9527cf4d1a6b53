"""Evaluation: QA accuracy per input mode (speech, text, cascaded ASR, text-only baseline), ASR WER,
metrics and the paper's Table 1 (docs/original.md §6)."""
