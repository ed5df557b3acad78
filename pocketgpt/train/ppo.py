"""PPO for a chat model: sample answers, score them, and move the policy toward the better ones while
a per-token KL penalty keeps it near the reference (Ziegler et al. 2019; Ouyang et al. 2022, sec. 3.5).

    one rollout (`Rollouts._collect`), without gradients:
      prompts -> answers sampled by the Engine (batched)             infer/engine.py, as everywhere
      score   = reward(prompt, answer)                                reward model or a task scorer
      logp, V = policy(prompt + answer); ref = reference(prompt + answer)   train/logprobs.py
      r_t     = -beta (logp - ref) + [last token] normalised score    train/ppo_math.kl_rewards
      A, R    = GAE(r, V); A whitened                                 train/ppo_math.gae / whiten
    then `epochs` passes over the rollout in shuffled minibatches, one optimizer step each,
    through the one training loop: loss = clipped surrogate + vf_coef * clipped value loss
    - ent_coef * entropy [+ ptx_coef * LM loss on pretraining/SFT rows (PPO-ptx, Ouyang et al. 2022, eq. 2)].

The policy is `PolicyWithValue`: the GPT plus a `ValueHead` on the same trunk. The reference is the
SFT model frozen: a separate copy for a fully trained policy, or, with a LoRA policy, the same
weights with the adapter detached (`peft.detached`), so no second copy is kept. The batch source
*is* the rollout buffer, so the loop's checkpoint/resume, progress and DDP apply unchanged; a resume
starts the next rollout afresh (its position within a rollout is not replayed).
Knows nothing of the CLI; the dashboard is train/ppo_dashboard.py.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from pocketgpt.errors import DataError
from pocketgpt.model.heads import ValueHead
from pocketgpt.train.logprobs import logprobs_from_logits
from pocketgpt.train.loop import Stage, unwrap
from pocketgpt.train.ppo_math import (
    KLController,
    gae,
    kl_rewards,
    masked_mean,
    policy_loss,
    value_loss,
    whiten,
)

VALUE_FILE = "value_head.safetensors"
# reward(items, answers) -> one float per answer; an item is a prompt record ({"messages": [...], ...task fields})
RewardFn = Callable[[Sequence[Mapping[str, Any]], Sequence[str]], Sequence[float]]


@dataclass
class PPOConfig:
    """The PPO knobs (the optimizer's are TrainConfig's). Defaults follow Ziegler et al. 2019 scaled down."""

    rollout_batch: int = 16  # prompts per rollout
    minibatch: int = 8  # sequences per optimizer step
    epochs: int = 2  # passes over each rollout
    max_tokens: int = 32  # answer length limit
    temperature: float = 1.0
    beta: float = 0.05  # KL coefficient (start value when adaptive)
    kl_target: float | None = None  # nats per answer; None = fixed beta
    kl_horizon: int = 10000
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    normalize_reward: bool = True  # whiten the scores of each rollout
    ptx_coef: float = 0.0  # PPO-ptx: weight of the language-model loss on `ptx_rows` mixed into each step
    seed: int = 0

    def steps_per_rollout(self) -> int:
        return self.epochs * max(1, self.rollout_batch // self.minibatch)


class PolicyWithValue(nn.Module):
    """The policy GPT and its critic on one trunk: forward(ids, mask) -> logits (B, T, V); with
    `with_values=True` -> (logits, values (B, T)); with `targets` (B, T) -> the GPT's LM loss (PPO-ptx)."""

    def __init__(self, gpt: nn.Module) -> None:
        super().__init__()
        self.gpt = gpt
        self.value_head = ValueHead(gpt.config.d_model)
        self.config = gpt.config

    def forward(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        with_values: bool = False,
        targets: torch.Tensor | None = None,
    ):
        if targets is not None:  # through this forward, so DDP sees the LM loss's gradients too
            return self.gpt(ids, targets, attention_mask=attention_mask)
        h = self.gpt.hidden(ids, attention_mask=attention_mask)  # (B, T, C)
        logits = self.gpt.lm_head(h)  # (B, T, V)
        return (logits, self.value_head(h).float()) if with_values else logits


# -- rollouts --------------------------------------------------------------------------------------
class Rollouts:
    """The PPO batch source: collects a rollout, then yields `steps_per_rollout` minibatches of it."""

    def __init__(
        self,
        policy: PolicyWithValue,
        reference: nn.Module | None,
        reward: RewardFn,
        items: Sequence[Mapping[str, Any]],
        tokenizer,
        cfg: PPOConfig,
        kl: KLController,
        *,
        template,
        rank: int = 0,
        world: int = 1,
        sample: bool = True,
        ptx_rows: Sequence[Sequence[int]] | None = None,
    ) -> None:
        from pocketgpt.text.formats import pad_id_of

        self.policy, self.reference, self.reward, self.items = policy, reference, reward, list(items)
        self.tok, self.cfg, self.kl, self.template = tokenizer, cfg, kl, template
        self.rank, self.world, self.sample = rank, world, sample
        self.ptx_rows = list(ptx_rows or [])
        self.pad = pad_id_of(tokenizer)
        self.k, self.i = 0, 0  # rollouts collected, minibatches served from the current one
        self.buffer: dict[str, torch.Tensor] | None = None
        self.stats: dict[str, float] = {}
        self._engine = None  # rebuilt each rollout (see _generate)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        steps = self.cfg.steps_per_rollout()
        if self.buffer is None or self.i >= steps:
            self.buffer, self.stats = self._collect()
            self.k, self.i = self.k + 1, 0
        n = self.buffer["ids"].size(0)
        per_epoch = max(1, n // self.cfg.minibatch)
        epoch, j = divmod(self.i, per_epoch)
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.k * 101 + epoch)
        order = torch.randperm(n, generator=g)[j * self.cfg.minibatch : (j + 1) * self.cfg.minibatch]
        self.i += 1
        batch = {key: t[order] for key, t in self.buffer.items()}
        # rollout statistics ride along as 0-d tensors for the loss to report
        for key, v in self.stats.items():
            batch[f"stat_{key}"] = torch.tensor(v)
        if self.cfg.ptx_coef > 0 and self.ptx_rows:
            batch.update(self._ptx_batch(len(order)))
        return batch

    def _ptx_batch(self, n: int) -> dict[str, torch.Tensor]:
        """`n` language-model rows for PPO-ptx, drawn by (seed, rollout, minibatch): ids and targets (B, T)."""
        g = torch.Generator().manual_seed(self.cfg.seed * 7_777 + self.k * 1_009 + self.i)
        picks = [self.ptx_rows[int(j)] for j in torch.randint(len(self.ptx_rows), (n,), generator=g)]
        T = max(len(r) for r in picks)
        ids = torch.full((n, T), self.pad, dtype=torch.long)  # (B, T)
        targets = torch.full((n, T), -1, dtype=torch.long)  # (B, T): -1 = no loss
        for b, row in enumerate(picks):
            ids[b, : len(row)] = torch.tensor(row)
            targets[b, : len(row) - 1] = torch.tensor(row[1:])
        return {"ptx_ids": ids, "ptx_targets": targets}

    def state_dict(self) -> dict:
        return {"k": self.k, "beta": self.kl.beta}

    def load_state_dict(self, state: dict) -> None:
        self.k, self.kl.beta, self.buffer, self.i = int(state["k"]), float(state["beta"]), None, 0

    # -- one rollout --------------------------------------------------------------------------------
    @torch.no_grad()
    def _collect(self) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        cfg = self.cfg
        picked = self._pick()
        prompts = [
            self.template.encode(self.tok, it["messages"], add_generation_prompt=True) for it in picked
        ]
        answers, texts = self._generate(prompts)
        scores = torch.tensor([float(s) for s in self.reward(picked, texts)])  # (B,)
        ids, mask, resp = _pack(prompts, answers, self.pad)  # (B, T), (B, T), (B, T - 1)
        model = self.policy
        device = next(model.parameters()).device
        ids, mask, resp = ids.to(device), mask.to(device), resp.to(device)
        was = model.training
        model.eval()
        logits, values = model(ids, mask, with_values=True)  # (B, T, V), (B, T)
        logp = logprobs_from_logits(logits[:, :-1], ids[:, 1:])  # (B, T - 1)
        ref_logp = self._reference_logprobs(ids, mask)  # (B, T - 1)
        model.train(was)
        values = values[:, :-1] * resp  # (B, T - 1): V of the state before each scored token
        shaped = (
            whiten(scores, torch.ones_like(scores)) if cfg.normalize_reward and len(scores) > 1 else scores
        )
        rewards, kl = kl_rewards(shaped.to(device), logp, ref_logp, resp, self.kl.beta)
        adv, returns = gae(rewards, values, resp, gamma=cfg.gamma, lam=cfg.lam)
        adv = whiten(adv, resp)
        kl_seq = kl.sum(-1).mean().item()  # nats per answer
        stats = {
            "reward": scores.mean().item(),
            "kl": kl_seq,
            "resp_len": resp.sum(-1).float().mean().item(),
            "beta": self.kl.beta,
        }
        self.kl.update(kl_seq, len(picked) * self.world)
        buffer = {
            "ids": ids,
            "mask": mask,
            "resp": resp,
            "old_logp": logp,
            "old_values": values,
            "adv": adv,
            "returns": returns,
        }
        return {k: v.cpu() for k, v in buffer.items()}, stats

    def _pick(self) -> list[Mapping[str, Any]]:
        n, B = len(self.items), self.cfg.rollout_batch
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.k * self.world + self.rank)
        return [self.items[int(i)] for i in torch.randint(n, (B,), generator=g)]

    def _generate(self, prompts: list[list[int]]) -> tuple[list[list[int]], list[str]]:
        """Answers through the Engine; a turn that ended at the stop token keeps it (the policy learns to stop)."""
        from pocketgpt.infer.engine import Engine
        from pocketgpt.infer.sampling import SamplingParams
        from pocketgpt.model import peft

        gpt = self.policy.gpt
        # a fresh Engine per rollout: its fast decode path reads (and for small models copies) the weights
        # when built, and a fused optimizer step updates them without bumping the versions it checks
        self._engine = Engine(
            gpt, self.tok, max_batch=min(16, len(prompts)), fast=peft.peft_config(gpt) is None
        )
        stop_ids = tuple(self.template.stop_ids(self.tok))
        room = gpt.config.block_size - max(len(p) for p in prompts) - 1
        if room < 1:
            raise DataError(
                f"a prompt of {max(len(p) for p in prompts)} tokens leaves no room to answer in "
                f"block_size {gpt.config.block_size}; use shorter prompts"
            )
        seed = self.cfg.seed * 1_000_003 + self.k * 10_007 + self.rank * 1009
        params = [
            SamplingParams(
                max_tokens=min(self.cfg.max_tokens, room),
                stop_ids=stop_ids,
                seed=seed + j,
                temperature=self.cfg.temperature if self.sample else 0.0,
            )
            for j in range(len(prompts))
        ]
        handles = [self._engine.submit(p, sp) for p, sp in zip(prompts, params, strict=True)]
        while self._engine.step():  # drive the engine here: no background thread during training
            pass
        answers, texts = [], []
        for h in handles:
            c = h.result()
            toks = list(c.tokens)
            if c.finish_reason == "stop" and stop_ids:
                toks.append(stop_ids[0])
            answers.append(toks or [stop_ids[0] if stop_ids else self.pad])
            texts.append(c.text.strip())
        return answers, texts

    def _reference_logprobs(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from pocketgpt.model import peft

        if self.reference is not None:
            ref = self.reference
            return logprobs_from_logits(ref(ids, attention_mask=mask)[:, :-1], ids[:, 1:])
        with peft.detached(
            self.policy.gpt
        ) as base:  # a LoRA policy's reference: the base without the adapter
            return logprobs_from_logits(base(ids, attention_mask=mask)[:, :-1], ids[:, 1:])


def _pack(prompts: list[list[int]], answers: list[list[int]], pad: int) -> tuple[torch.Tensor, ...]:
    """Right-padded prompt + answer rows: ids (B, T), attention mask (B, T), response mask (B, T - 1)
    (entry t scores token t + 1, so the answer's tokens sit at len(prompt) - 1 ...)."""
    T = max(len(p) + len(a) for p, a in zip(prompts, answers, strict=True))
    B = len(prompts)
    ids = torch.full((B, T), pad, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    resp = torch.zeros((B, T - 1))
    for b, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        n = len(p) + len(a)
        ids[b, :n] = torch.tensor(p + a)
        mask[b, :n] = 1
        resp[b, len(p) - 1 : n - 1] = 1
    return ids, mask, resp


# -- the loss and the stage -----------------------------------------------------------------------------
def ppo_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], cfg: PPOConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    ids, mask, resp = batch["ids"], batch["mask"], batch["resp"]
    logits, values = model(ids, mask, with_values=True)  # (B, T, V), (B, T)
    logp, entropy = logprobs_from_logits(logits[:, :-1], ids[:, 1:], with_entropy=True)  # (B, T - 1) each
    pl, st = policy_loss(logp, batch["old_logp"], batch["adv"], resp, cfg.clip)
    vl = value_loss(values[:, :-1], batch["old_values"], batch["returns"], resp, cfg.value_clip)
    ent = masked_mean(entropy, resp)
    loss = pl + cfg.vf_coef * vl - cfg.ent_coef * ent
    ptx = {}
    if "ptx_ids" in batch:
        lm = model(batch["ptx_ids"], targets=batch["ptx_targets"])
        loss = loss + cfg.ptx_coef * lm
        ptx = {"ptx_loss": lm.item()}
    extras = {
        "policy_loss": pl.item(),
        "value_loss": vl.item(),
        "entropy": ent.item(),
        "clipfrac": st["clipfrac"].item(),
        "approx_kl": st["approx_kl"].item(),
    }
    extras.update(ptx)
    extras.update({k[len("stat_") :]: float(v) for k, v in batch.items() if k.startswith("stat_")})
    return loss, extras


def ppo_stage(
    policy: PolicyWithValue,
    tokenizer,
    reward: RewardFn,
    items: Sequence[Mapping[str, Any]],
    cfg: PPOConfig,
    *,
    val_items: Sequence[Mapping[str, Any]] | None = None,
    reference: nn.Module | None = None,
    template=None,
    evaluate=None,
    ptx_rows: Sequence[Sequence[int]] | None = None,
) -> Stage:
    """PPO of `policy` against `reward` on prompt records `items` ({"messages": [...]} + anything the reward
    reads). `reference=None` uses a frozen copy of the policy's GPT as it is now, or, with an adapter
    attached, the base with the adapter detached."""
    from pocketgpt.model import peft
    from pocketgpt.text.chat import template_for

    if not items:
        raise DataError("no prompts for PPO rollouts")
    template = template or template_for(tokenizer)
    if reference is None and peft.peft_config(policy.gpt) is None:
        reference = copy.deepcopy(policy.gpt)
    if reference is not None:
        reference.eval().requires_grad_(False)
    kl = KLController(cfg.beta, cfg.kl_target, cfg.kl_horizon)

    def batches(split: str, rank: int, world: int) -> Rollouts:
        if reference is not None:
            reference.to(next(policy.parameters()).device)
        if split == "train":
            return Rollouts(
                policy,
                reference,
                reward,
                items,
                tokenizer,
                cfg,
                kl,
                template=template,
                rank=rank,
                world=world,
                ptx_rows=ptx_rows,
            )
        frozen = KLController(kl.beta)  # evaluation must not move the training beta
        return Rollouts(
            policy,
            reference,
            reward,
            val_items or items,
            tokenizer,
            cfg,
            frozen,
            template=template,
            rank=rank,
            world=world,
        )

    def save(m: nn.Module, out: Path) -> None:
        save_policy(unwrap(m), out, tokenizer)

    settings = {
        "ppo": asdict(cfg),
        "prompts": len(items),
        "template": template.name,
        "reference": "adapter detached" if reference is None else "frozen copy",
        "params": peft.describe(policy),
    }
    return Stage(
        "ppo",
        policy,
        batches,
        lambda m, b: ppo_loss(m, b, cfg),
        save,
        tokens_per_row=policy.config.block_size,
        evaluate=evaluate,
        settings=settings,
        lm_loss=False,
    )


def save_policy(policy: PolicyWithValue, out_dir: str | os.PathLike, tokenizer=None) -> Path:
    """A normal model directory of the policy (generate / serve / eval-tasks read it) + value_head.safetensors."""
    from safetensors.torch import save_file

    from pocketgpt.atomic import atomic_path
    from pocketgpt.model import peft

    out = peft.save_tuned(policy.gpt, out_dir, tokenizer)
    head = {k: v.detach().contiguous().cpu() for k, v in policy.value_head.state_dict().items()}
    with atomic_path(out / VALUE_FILE) as tmp:
        save_file(head, str(tmp), metadata={"format": "pt"})
    return out
