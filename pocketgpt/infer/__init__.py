"""Running a trained model: sampling the next token (`sampling.py`) and the generation loop
(`generate.py`). Token ids in, token ids out; text is the caller's business (a tokenizer)."""
