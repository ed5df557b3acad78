"""A tiny model taught one tool call, for the tool-calling tests.

After the system prompt the server writes for TOOLS (serve/tools.tools_prompt) and the user's
QUESTION, the model answers with CALL as JSON and then its end token. It learns that here, from
random weights, on that one conversation (loss on the answer only), so the tests run the real path
(tools prompt -> chat template -> engine -> parse_tool_calls) with a model that really writes the
call; any other prompt gets noise. About 100 steps, a few seconds on one core.
"""

from __future__ import annotations

import json
from pathlib import Path

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
QUESTION = "What is the weather in Paris?"
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}


def make_tool_model(out: Path, steps: int = 300) -> Path:
    """Write the taught model directory to `out` (context 512: the tools prompt is long in a 400-token BPE)."""
    import torch

    from pocketgpt.model.checkpoint import load_model, save_model
    from pocketgpt.serve.template import chat_template
    from pocketgpt.serve.tools import tools_prompt
    from tests.serve.tiny_store import make_tiny_model

    model, tok = load_model(make_tiny_model(out, seed=1, block_size=512))
    template = chat_template(None, tok)
    chat = [
        {"role": "system", "content": tools_prompt([t["function"] for t in TOOLS])},
        {"role": "user", "content": QUESTION},
    ]
    prompt = template.encode(tok, chat, add_generation_prompt=True)
    answer = tok.encode(json.dumps(CALL)) + [template.stop_ids(tok)[0]]
    ids = torch.tensor([prompt + answer])  # (1, T)
    x, y = ids[:, :-1], ids[:, 1:].clone()  # next-token targets
    y[:, : len(prompt) - 1] = -1  # learn the answer only
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a busy machine: one thread is several times faster
    try:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        # until greedy decoding gets every answer token by a margin that Ollama's default repeat_penalty
        # (1.1, which divides the logits of tokens already seen) cannot overturn
        for _ in range(steps):
            logits = model(x)  # (1, T, V)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if loss.item() < 0.02 and bool((logits.argmax(-1)[y != -1] == y[y != -1]).all()):
                break
    finally:
        torch.set_num_threads(threads)
    return save_model(model.eval(), out, tokenizer=tok)
