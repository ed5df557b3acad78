"""pocketgpt: the whole ChatGPT recipe -- tokenizer, GPT, SFT, reward model, PPO, serving --
small enough to read, fast enough to use.

The package follows the path text takes through a language model:
text/ (tokens) -> model/ (the network) -> train/ (the stages) -> infer/ (generation)
-> serve/ (store + HTTP). See docs/architecture.md.
"""

__version__ = "0.1.0"
