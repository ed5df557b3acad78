"""The special tokens pocketgpt reserves in every tokenizer it trains, and what each one is for.

They are reserved at tokenizer-training time (`pocketgpt pretrain`, `pocketgpt tokenizer train
--chat`) so that a pretrained model already has an embedding row for each one and fine-tuning never
has to grow the vocabulary. Their ids follow the merged tokens, in this order.
Knows nothing of templates: `text/chat.py` (chat roles) and `text/formats.py` (GPT-1 task markers) use them.
"""

from __future__ import annotations

EOT = "<|endoftext|>"  # separates documents in pretraining; the stop token of plain generation
PAD = "<|pad|>"  # fills batches of unequal rows (never attended to, never a target)

# chat roles (instruction SFT, the chat page, the server): one marker per role plus the turn end
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"

# GPT-1's task markers (Radford et al. 2018, fig. 1): [Start] text [Delim] text [Extract]
START, DELIM, EXTRACT = "<|start|>", "<|delim|>", "<|extract|>"

RESERVED: tuple[str, ...] = (EOT, PAD, SYSTEM, USER, ASSISTANT, END, START, DELIM, EXTRACT)
