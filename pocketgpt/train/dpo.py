"""Direct preference optimisation: learn from preference pairs with no reward model and no sampling.

    h      = beta [(log pi(y_c|x) - log pi_ref(y_c|x)) - (log pi(y_r|x) - log pi_ref(y_r|x))]
    loss   = -log sigmoid(h)                                    (Rafailov et al. 2023, eq. 7)
             [+ nll_coef * -log pi(y_c|x) / |y_c|]             DPO+NLL (Pang et al. 2024, eq. 3)

log pi(y|x) is the summed log-probability of the answer's tokens (train/logprobs.py); beta plays the
KL coefficient's part (small beta: free to move away from the reference). The reference is the
policy as it starts: its log-probs are computed once, before training (with a LoRA policy, through the
base with the adapter detached), so no second copy of the weights is kept. The implicit reward
beta (log pi - log pi_ref) of chosen vs rejected gives an accuracy to watch; `chosen_shift` and
`rejected_shift` (log pi - log pi_ref, per answer) show where the margin comes from. Plain DPO can
widen the margin by lowering *both* answers, which frees probability for text neither of them is
(on short answers: the turn end loses out and the model runs on); the NLL term keeps the chosen ones likely.
Knows nothing of the CLI; the pairs come from text/preferences.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.errors import DataError
from pocketgpt.text.preferences import Pair, prompt_messages
from pocketgpt.train.logprobs import sequence_logprob
from pocketgpt.train.loop import Stage
from pocketgpt.train.rows import RowBatches


def dpo_loss(
    pi_chosen: torch.Tensor,
    pi_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """All (B,) summed log-probs -> (mean loss, {"reward_acc", "margin"}) (see the module docstring)."""
    chosen = beta * (pi_chosen - ref_chosen)  # (B,) implicit rewards
    rejected = beta * (pi_rejected - ref_rejected)  # (B,)
    loss = -F.logsigmoid(chosen - rejected).mean()
    with torch.no_grad():
        stats = {
            "reward_acc": (chosen > rejected).float().mean(),
            "margin": (chosen - rejected).mean(),
            "chosen_shift": (pi_chosen - ref_chosen).mean(),
            "rejected_shift": (pi_rejected - ref_rejected).mean(),
        }
    return loss, stats


def chosen_nll(pi_chosen: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """-log pi(y_c|x) / |y_c|, the mean over pairs of the chosen answers' per-token NLL: (B,), (B,) -> scalar."""
    return (-pi_chosen / chosen_tokens.clamp(min=1)).mean()


def encode_response(tokenizer, template, prompt, answer: str, block_size: int) -> tuple[list[int], list[int]]:
    """(ids, response mask over ids[1:]) for prompt + answer; the mask is 1 on the answer's tokens and
    its turn-end token. The prompt is cut from the left to fit `block_size`."""
    messages = prompt_messages(prompt)
    head = template.encode(tokenizer, messages, add_generation_prompt=True)
    ids = template.encode(
        tokenizer, [*messages, {"role": "assistant", "content": answer}], add_generation_prompt=False
    )
    if ids[: len(head)] != head:
        raise DataError(
            "the chat template does not extend the prompt by the answer; cannot find the answer's tokens"
        )
    mask = [0] * len(head) + [1] * (len(ids) - len(head))
    ids, mask = ids[-block_size:], mask[-block_size:]
    return ids, mask[1:]


def _collate(rows, pad_id: int) -> dict[str, torch.Tensor]:
    seqs = [r[0] for r in rows] + [r[2] for r in rows]
    resps = [r[1] for r in rows] + [r[3] for r in rows]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)  # (2B, T)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)  # (2B, T)
    resp = torch.zeros((len(seqs), T - 1))  # (2B, T - 1)
    for i, (s, m) in enumerate(zip(seqs, resps, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        resp[i, : len(m)] = torch.tensor(m, dtype=torch.float)
    ref = torch.tensor([r[4] for r in rows] + [r[5] for r in rows], dtype=torch.float)  # (2B,)
    return {"ids": ids, "mask": mask, "resp": resp, "ref": ref}


def dpo_stage(
    model: nn.Module,
    tokenizer,
    train_pairs: Sequence[Pair],
    val_pairs: Sequence[Pair],
    *,
    batch_size: int,
    beta: float = 0.1,
    nll_coef: float = 0.0,
    seed: int = 0,
    template=None,
) -> Stage:
    """The DPO objective for `model` (a GPT, optionally with an adapter attached); its starting point is the
    reference. `nll_coef` > 0 adds the chosen answers' per-token NLL (DPO+NLL)."""
    from pocketgpt.model import peft
    from pocketgpt.text.chat import template_for
    from pocketgpt.text.formats import pad_id_of

    template = template or template_for(tokenizer)
    T, pad = model.config.block_size, pad_id_of(tokenizer)

    def rows_of(pairs: Sequence[Pair]) -> list[tuple]:
        enc = [
            (
                *encode_response(tokenizer, template, p.prompt, p.chosen, T),
                *encode_response(tokenizer, template, p.prompt, p.rejected, T),
            )
            for p in pairs
        ]
        with peft.detached(model):  # the reference: the base model (a fresh LoRA changes nothing anyway)
            ref = reference_logprobs(model, enc, pad)
        return [(*e, *r) for e, r in zip(enc, ref, strict=True)]

    train_rows = rows_of(train_pairs)
    val_rows = rows_of(val_pairs) if val_pairs else train_rows[:32]
    if not train_rows:
        raise DataError("no preference pairs for DPO")

    def batches(split: str, rank: int, world: int) -> RowBatches:
        rows = train_rows if split == "train" else val_rows
        return RowBatches(
            rows,
            batch_size,
            lambda r: _collate(r, pad),
            shuffle=split == "train",
            seed=seed,
            rank=rank,
            world=world,
        )

    def loss(m: nn.Module, batch: dict[str, torch.Tensor]):
        pi = sequence_logprob(m, batch["ids"], batch["mask"], batch["resp"])  # (2B,)
        pc, pr = pi.chunk(2)
        rc, rr = batch["ref"].chunk(2)
        value, stats = dpo_loss(pc, pr, rc, rr, beta)
        if nll_coef > 0:
            nll = chosen_nll(pc, batch["resp"].sum(-1).chunk(2)[0])
            value, stats["nll"] = value + nll_coef * nll, nll.detach()
        return value, {k: float(v) for k, v in stats.items()}

    def save(m: nn.Module, out: Path) -> None:
        peft.save_tuned(m, out, tokenizer)

    cfg = peft.peft_config(model)
    settings = {
        "pairs": len(train_rows),
        "val_pairs": len(val_rows),
        "beta": beta,
        "nll_coef": nll_coef,
        "template": template.name,
        "peft": None if cfg is None else vars(cfg),
        "params": peft.describe(model),
    }
    return Stage("dpo", model, batches, loss, save, tokens_per_row=2 * T, settings=settings, lm_loss=False)


@torch.no_grad()
def reference_logprobs(
    model: nn.Module, encoded: Sequence[tuple], pad_id: int, batch_size: int = 16
) -> list[tuple[float, float]]:
    """(log pi_ref(chosen), log pi_ref(rejected)) for each encoded pair, from `model` as it is now."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[tuple[float, float]] = []
    for i in range(0, len(encoded), batch_size):
        b = _collate([(*e, 0.0, 0.0) for e in encoded[i : i + batch_size]], pad_id)
        lp = sequence_logprob(model, b["ids"].to(device), b["mask"].to(device), b["resp"].to(device))  # (2b,)
        c, r = lp.chunk(2)
        out += list(zip(c.tolist(), r.tolist(), strict=True))
    model.train(was)
    return out
