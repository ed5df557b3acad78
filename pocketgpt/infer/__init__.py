"""Running a trained model: choosing tokens (`sampling.py`), turning them into safe text deltas
(`stream.py`), continuous batching over a per-row KV cache (`scheduler.py`) with a module-free
decode step (`fast_decode.py`), the thread-safe engine every caller generates through
(`engine.py`, with `generate.py` as its one-prompt door), and beam search for the encoder-decoder
model (`beam.py`). Knows nothing of HTTP or command lines."""
