"""Evaluation: QA accuracy per input mode (speech, text, cascaded ASR, text-only baseline), ASR WER,
metrics and the paper's Table 1 (reference section 6)."""
