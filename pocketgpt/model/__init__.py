"""The neural networks: attention, blocks, the decoder-only GPT (and, beside it, seq2seq, BERT, heads,
mixture of experts), plus the model directory (`checkpoint.py`) and size arithmetic (`info.py`).

Imports here stay empty on purpose: `pocketgpt.model.gpt` and friends are imported where used, so
`import pocketgpt.model.heads` never pulls in the whole package.
"""
