"""BERT: an encoder-only Transformer trained to fill in masked tokens (Devlin et al. 2018).

    x = LayerNorm(tok_emb(idx) + pos_emb(pos) + type_emb(segment))     embeddings (sec. 3, fig. 2)
    for block in blocks: x = block(x)                                 bidirectional self-attention + FFN, post-LN
    logits = decoder(LayerNorm(gelu(dense(x))))                       the MLM head; decoder tied to tok_emb

Unlike GPT, every position sees the whole sequence (left *and* right), so the model cannot be trained
to predict the next token; instead ~15% of tokens are hidden and predicted (the "masked LM" or cloze
task, `mask_tokens` + `mlm_loss`). The next-sentence-prediction head is left out: RoBERTa (Liu et al.
2019) showed MLM alone trains an encoder at least as well.

Contract: `model(idx, attention_mask=None, token_type_ids=None)` -> hidden states (B, T, C) (for heads);
`model.mlm_logits(...)` -> (B, T, V); `model(idx, ..., targets=...)` -> MLM loss (-1 targets ignored).
Knows nothing of tokenizers (it takes `config.mask_id`) or training loops.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.config import ModelConfig
from pocketgpt.errors import ConfigMismatch
from pocketgpt.model.attention import padding_mask
from pocketgpt.model.blocks import Block, LearnedPositions, make_norm, normal_init, sinusoidal_table

TYPE_VOCAB_SIZE = 2  # segment A / segment B (sentence pairs)


# -- the masking procedure -------------------------------------------------------------------------
def mask_tokens(idx: torch.Tensor, *, mask_id: int, vocab_size: int, generator: torch.Generator,
                mask_prob: float = 0.15, special_ids: Iterable[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption (Devlin et al. 2018, sec. 3.1): choose each non-special token with probability
    `mask_prob`; of the chosen, 80% become [MASK], 10% a random token, 10% stay as they are.

    Returns (inputs, targets), both (B, T): targets hold the original id at chosen positions and -1
    elsewhere, so the loss is taken only where the model had to guess. The random and kept 10%s make
    the model keep a useful representation of *every* input token, since [MASK] never occurs at
    fine-tuning time. All randomness comes from `generator` (seeded by the caller).
    """
    dev = generator.device
    chosen = torch.rand(idx.shape, generator=generator, device=dev) < mask_prob  # (B, T)
    special = torch.isin(idx.to(dev), torch.tensor(list(special_ids), dtype=idx.dtype, device=dev))
    chosen = (chosen & ~special).to(idx.device)
    action = torch.rand(idx.shape, generator=generator, device=dev).to(idx.device)  # (B, T): which of 80/10/10
    random_ids = torch.randint(vocab_size, idx.shape, generator=generator, device=dev).to(idx)  # (B, T)
    inputs = torch.where(chosen & (action < 0.8), torch.full_like(idx, mask_id), idx)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    targets = torch.where(chosen, idx, torch.full_like(idx, -1))
    return inputs, targets


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the masked positions only: logits (B, T, V), targets (B, T) with -1
    at every position the model was not asked to predict."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


# -- the model -------------------------------------------------------------------------------------
class MLMHead(nn.Module):
    """dense + GELU + LayerNorm, then the vocabulary decoder (weights tied to the token embedding,
    its own bias), as in the released BERT (`cls/predictions`)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.ln = make_norm(config)
        self.decoder = nn.Linear(config.d_model, config.vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.ln(F.gelu(self.dense(hidden))))  # (B, T, V)


class BERT(nn.Module):
    """Bidirectional encoder + masked-LM head (see the module docstring for the recipe)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        C = config.d_model
        self.tok_emb = nn.Embedding(config.vocab_size, C)
        if config.positions == "learned":
            self.pos_emb = LearnedPositions(config.block_size, C)
        elif config.positions == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(config.block_size, C), persistent=False)
        self.type_emb = nn.Embedding(TYPE_VOCAB_SIZE, C)
        self.ln_emb = make_norm(config)  # BERT normalises the summed embeddings before the first layer
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i, causal=False) for i in range(config.n_layer))
        self.ln_f = make_norm(config) if config.norm_placement == "pre" else nn.Identity()
        self.mlm = MLMHead(config)
        self.apply(normal_init)  # BERT and GPT-2 share this initialisation
        if config.tie_embeddings:
            self.mlm.decoder.weight = self.tok_emb.weight

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, targets: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) -> hidden states (B, T, C); with `targets` (B, T) -> the MLM loss (-1 ignored).

        `attention_mask` (B, T): 1 = real token, 0 = padding; default `idx != config.pad_id` when pad_id
        is set. `token_type_ids` (B, T) in {0, 1}: the segment of each token; default all 0.
        """
        h = self.hidden(idx, attention_mask, token_type_ids)
        if targets is None:
            return h
        loss = mlm_loss(self.mlm(h), targets)
        return loss + self.config.moe_aux_weight * self.aux_loss() if self.config.n_expert > 0 else loss

    def hidden(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) -> final hidden states (B, T, C), each position having seen both sides."""
        T = idx.size(1)
        if T > self.config.block_size:
            raise ConfigMismatch(f"sequence of {T} tokens exceeds the model's block_size {self.config.block_size}; "
                                 "shorten the input")
        if attention_mask is None and self.config.pad_id >= 0:
            attention_mask = idx != self.config.pad_id  # (B, T)
        mask = padding_mask(attention_mask) if attention_mask is not None else None  # (B, 1, 1, T)
        positions = torch.arange(T, device=idx.device)  # (T,)
        types = token_type_ids if token_type_ids is not None else torch.zeros_like(idx)  # (B, T)
        x = self.tok_emb(idx) + self.type_emb(types)  # (B, T, C)
        if self.config.positions == "learned":
            x = x + self.pos_emb(positions)
        elif self.config.positions == "sinusoidal":
            x = x + self.pos_table[positions].to(x.dtype)
        x = self.drop(self.ln_emb(x))
        for blk in self.blocks:
            x = blk(x, mask=mask, positions=positions)  # (B, T, C)
        return self.ln_f(x)

    def mlm_logits(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) -> vocabulary scores (B, T, V) at every position (read them at the masked ones)."""
        return self.mlm(self.hidden(idx, attention_mask, token_type_ids))

    def aux_loss(self) -> torch.Tensor:
        """Sum of the mixture-of-experts load-balancing losses of the last forward (0 without MoE)."""
        losses = [blk.moe.aux_loss for blk in self.blocks if hasattr(blk, "moe")]
        return torch.stack(losses).sum() if losses else torch.zeros((), device=self.tok_emb.weight.device)

    def num_params(self) -> int:
        """Trainable parameters, counting the tied decoder matrix once."""
        return sum(p.numel() for p in self.parameters())
