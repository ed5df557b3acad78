"""Evaluation: how well a model predicts held-out text (perplexity, bits per byte).

Knows nothing of training or the CLI; `commands/eval.py` is the thin edge over it.
"""
