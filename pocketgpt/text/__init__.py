"""Text in, token ids out: corpora, tokenizers, the n-gram baseline. Knows nothing of tensors."""
