"""The miniature experiment (docs/miniature.md): a seeded closed world of spoken multiple-choice questions that
need a short chain of reasoning (``world``), its speech and hf_format build (``build``), and a small BPE
tokenizer trained on the world's text (``tokenizer``). The stages, the model and the report are not built yet.
"""
