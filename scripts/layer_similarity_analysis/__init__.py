"""Layer-similarity analysis: how far speech-conditioned hidden states drift from text-conditioned ones,
layer by layer (the paper's Figures 2 and 3 and its layer-sensitivity bar chart; docs/original.md §8).

The same text response is teacher-forced after the text prompt and after the speech prompt of a question;
for every layer the two runs' response hidden states are compared. Modules, one job each:

  stats.py      per-layer statistics: the two similarity measures, streaming mean/variance, t-interval
  inputs.py     prompts through the processor's chat template, response positions, left-padded batches
  models.py     loading a base, merged or LoRA checkpoint as the thinker (the part with the LLM)
  responses.py  the text responses: a JSONL file of model outputs, or greedy generation on the fly
  analysis.py   the measurement: forward hooks that turn each layer's output into statistics as it runs
  outputs.py    run directories (never overwritten), layer_stats.json
  plots.py      the per-run figure, the multi-run comparison, the layer-sensitivity bar chart
  defaults.py   the embedded tiny default (offline speech QA set, embedded GRPO checkpoint)

Entry points (thin): ``measure``, ``aggregate``, ``sensitivity``; ``run.sh`` loops datasets x checkpoints.
"""
