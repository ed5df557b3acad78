"""The reward model: a GPT trunk with a scalar head, trained so preferred answers score higher.

    r(x, y)  = RewardHead(GPT.hidden(chat(x, y)))[final non-pad token]      (model/heads.py)
    loss     = -log sigmoid(r(x, y_chosen) - r(x, y_rejected))              (Ouyang et al. 2022, eq. 1)
    accuracy = share of held-out pairs with r(chosen) > r(rejected)

The trunk starts as the SFT model (InstructGPT: "from the SFT model with the final unembedding
layer removed"); a pair is encoded with the chat template, the answer closed by the turn-end token,
so the score is read where the whole answer has been seen. The saved directory is a normal model
directory (config.json, model.safetensors, tokenizer) plus `reward_head.safetensors` and
`reward.json`; `load_reward_model` reads it back. Knows nothing of the CLI or of PPO.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.errors import ConfigMismatch, DataError
from pocketgpt.model.heads import RewardHead, last_non_pad_positions
from pocketgpt.text.preferences import Pair, prompt_messages
from pocketgpt.train.loop import Stage, unwrap
from pocketgpt.train.rows import RowBatches

HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward.json"


class RewardModel(nn.Module):
    """GPT trunk + RewardHead: ids (B, T), attention_mask (B, T) -> rewards (B,)."""

    def __init__(self, gpt: nn.Module) -> None:
        super().__init__()
        self.gpt = gpt
        self.head = RewardHead(gpt.config.d_model)
        self.config = gpt.config  # what the loop records in run.json

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.gpt.hidden(ids, attention_mask=attention_mask)  # (B, T, C)
        return self.head(h, last_non_pad_positions(attention_mask)).float()  # (B,)


def pairwise_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_c - r_r), mean over pairs; its gradient w.r.t. r_c is -(1 - sigmoid(r_c - r_r))."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


# -- encoding ---------------------------------------------------------------------------------------
def encode_answer(tokenizer, template, prompt, answer: str, block_size: int) -> list[int]:
    """Prompt + answer through the chat template, the answer's turn closed; the prompt is cut from
    the left when the whole does not fit (the answer and its end are what the score reads)."""
    messages = [*prompt_messages(prompt), {"role": "assistant", "content": answer}]
    ids = template.encode(tokenizer, messages, add_generation_prompt=False)
    return ids[-block_size:]


def encode_pairs(pairs: Sequence[Pair], tokenizer, template, block_size: int) -> list[tuple[list[int], list[int]]]:
    return [(encode_answer(tokenizer, template, p.prompt, p.chosen, block_size),
             encode_answer(tokenizer, template, p.prompt, p.rejected, block_size)) for p in pairs]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists -> ids (B, T), attention_mask (B, T) with 1 on real tokens."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)  # (B, T)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def collate_pairs(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows first, then rejected rows, in one padded batch (one forward scores both)."""
    ids, mask = pad_batch([c for c, _ in rows] + [r for _, r in rows], pad_id)  # (2B, T)
    return {"ids": ids, "mask": mask}


def reward_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    r = model(batch["ids"], batch["mask"])  # (2B,)
    r_chosen, r_rejected = r.chunk(2)  # (B,), (B,)
    acc = (r_chosen > r_rejected).float().mean().item()
    return pairwise_loss(r_chosen, r_rejected), {"acc": acc, "margin": (r_chosen - r_rejected).mean().item()}


@torch.no_grad()
def pair_accuracy(model: nn.Module, rows: Sequence[tuple[list[int], list[int]]], pad_id: int,
                  batch_size: int = 16) -> dict[str, float]:
    """Held-out pairwise accuracy (ties count as wrong) and mean margin of `rows` (encoded pairs)."""
    model = unwrap(model)
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    right, margin = 0, 0.0
    for i in range(0, len(rows), batch_size):
        b = collate_pairs(list(rows[i:i + batch_size]), pad_id)
        rc, rr = model(b["ids"].to(device), b["mask"].to(device)).chunk(2)
        right += int((rc > rr).sum())
        margin += float((rc - rr).sum())
    model.train(was)
    return {"pair_acc": right / max(len(rows), 1), "pair_margin": margin / max(len(rows), 1)}


# -- the stage ------------------------------------------------------------------------------------------
def reward_stage(model: RewardModel, tokenizer, train_pairs: Sequence[Pair], val_pairs: Sequence[Pair], *,
                 batch_size: int, seed: int = 0, template=None) -> Stage:
    """Train `model` on preference pairs with the pairwise loss; eval reports held-out pair accuracy."""
    from pocketgpt.text.chat import template_for
    from pocketgpt.text.formats import pad_id_of

    template = template or template_for(tokenizer)
    T, pad = model.config.block_size, pad_id_of(tokenizer)
    train_rows = encode_pairs(train_pairs, tokenizer, template, T)
    val_rows = encode_pairs(val_pairs, tokenizer, template, T) if val_pairs else train_rows[:32]
    if not train_rows:
        raise DataError("no preference pairs to train the reward model on")

    def batches(split: str, rank: int, world: int) -> RowBatches:
        rows = train_rows if split == "train" else val_rows
        return RowBatches(rows, batch_size, lambda r: collate_pairs(r, pad), shuffle=split == "train",
                          seed=seed, rank=rank, world=world)

    def save(m: nn.Module, out: Path) -> None:
        save_reward_model(unwrap(m), out, tokenizer, template=template.name)

    settings = {"pairs": len(train_rows), "val_pairs": len(val_rows), "template": template.name}
    return Stage("reward", model, batches, reward_loss, save, tokens_per_row=2 * T, lm_loss=False,
                 evaluate=lambda m: pair_accuracy(m, val_rows, pad), settings=settings)


# -- files ----------------------------------------------------------------------------------------------
def save_reward_model(model: RewardModel, out_dir: str | os.PathLike, tokenizer=None, *, template: str = "") -> Path:
    """A model directory of the trunk (with its adapter, if any) + reward_head.safetensors + reward.json."""
    from safetensors.torch import save_file

    from pocketgpt.atomic import atomic_path, atomic_write
    from pocketgpt.model import peft

    out = peft.save_tuned(model.gpt, out_dir, tokenizer)
    head = {k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}
    with atomic_path(out / HEAD_FILE) as tmp:
        save_file(head, str(tmp), metadata={"format": "pt"})
    atomic_write(out / META_FILE, json.dumps({"kind": "reward_model", "version": 1, "head": HEAD_FILE,
                                              "template": template}, indent=1) + "\n")
    return out


def load_reward_model(model_dir: str | os.PathLike, *, device: str | torch.device = "cpu"):
    """(RewardModel in eval mode, tokenizer) from a directory `save_reward_model` wrote."""
    from safetensors.torch import load_file

    from pocketgpt.model import peft

    d = Path(model_dir)
    if not (d / HEAD_FILE).is_file():
        raise ConfigMismatch(f"{d}: no {HEAD_FILE}, so not a reward model; train one with "
                             f"`pocketgpt reward SFT_MODEL --data prefs.jsonl --out {d}`")
    gpt, tok = peft.load_model_with_adapter(d, merge=True)
    model = RewardModel(gpt)
    found = load_file(str(d / HEAD_FILE))
    if set(found) != set(model.head.state_dict()) or found["proj.weight"].shape != model.head.proj.weight.shape:
        raise ConfigMismatch(f"{d / HEAD_FILE}: head tensors do not fit the trunk (d_model {gpt.config.d_model}); "
                             "save the reward model again")
    model.head.load_state_dict(found)
    return model.to(device).eval(), tok


@torch.no_grad()
def score_texts(model: RewardModel, tokenizer, prompts: Sequence, answers: Sequence[str], *, template=None,
                batch_size: int = 16) -> list[float]:
    """The reward of each (prompt, answer), a plain float per pair."""
    from pocketgpt.text.chat import template_for
    from pocketgpt.text.formats import pad_id_of

    template = template or template_for(tokenizer)
    device = next(model.parameters()).device
    seqs = [encode_answer(tokenizer, template, p, a, model.config.block_size) for p, a in zip(prompts, answers, strict=True)]
    out: list[float] = []
    for i in range(0, len(seqs), batch_size):
        ids, mask = pad_batch(seqs[i:i + batch_size], pad_id_of(tokenizer))
        out += model(ids.to(device), mask.to(device)).tolist()
    return out
