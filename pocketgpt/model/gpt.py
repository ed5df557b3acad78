"""The decoder-only language model: token ids in, next-token logits (or a loss) out.

    x = tok_emb(idx) + pos_emb(pos)          embeddings (+ learned/sinusoidal positions; RoPE acts in attention)
    for block in blocks: x = block(x)        causal self-attention + feed-forward, n_layer times
    logits = lm_head(ln_f(x))                a score for every vocabulary entry at every position

One class, two flavours chosen by `ModelConfig` fields (never by subclassing):
  - gpt2 (default): exactly GPT-2's architecture (Radford et al. 2019): learned positions, pre-LN
    LayerNorm, GELU (tanh), biases, tied embeddings, so Hugging Face `GPT2LMHeadModel` loads our weights.
  - llama: RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases, tied or untied embeddings
    (Touvron et al. 2023), matching `transformers` `LlamaForCausalLM`.

The forward contract every stage uses (STYLE rule 14): `model(idx)` -> logits (B, T, V);
`model(idx, targets)` -> mean cross-entropy with targets == -1 ignored; `model.hidden(idx)` -> (B, T, C)
after the final norm; `model(idx, cache=cache)` -> logits of the new positions, the cache advancing.
This module knows nothing of tokenizers, optimizers, files or sampling.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.config import ModelConfig
from pocketgpt.errors import ConfigMismatch
from pocketgpt.model.attention import KVCache, SlotKVCache, padding_mask
from pocketgpt.model.blocks import Block, LearnedPositions, make_norm, normal_init, sinusoidal_table
from pocketgpt.model.lm_loss import linear_cross_entropy
from pocketgpt.model.lm_loss import usable as lm_loss_usable
from pocketgpt.model.positions import positions_from_mask


class GPT(nn.Module):
    """A GPT-2 / Llama style decoder-only Transformer (see the module docstring for the recipe)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        C = config.d_model
        self.tok_emb = nn.Embedding(config.vocab_size, C)
        if config.positions == "learned":
            self.pos_emb = LearnedPositions(config.block_size, C)
        elif config.positions == "sinusoidal":  # fixed, so a buffer (not saved: rebuilt from the config)
            self.register_buffer("pos_table", sinusoidal_table(config.block_size, C), persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        # post-LN blocks already end in a norm; only pre-LN needs one before the head
        self.ln_f = make_norm(config) if config.norm_placement == "pre" else nn.Identity()
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_embeddings:  # one matrix reads tokens in and scores them out (Press & Wolf 2017)
            self.lm_head.weight = self.tok_emb.weight
        self.apply(normal_init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # residual projections: GPT-2 scales them by 1/sqrt(2 n_layer)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    # -- the recipe --------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                cache: KVCache | SlotKVCache | None = None,
                attention_mask: torch.Tensor | None = None, return_attention: bool = False):
        """idx (B, T) -> logits (B, T, V); with `targets` (B, T) -> scalar loss (-1 targets ignored).

        `attention_mask` (B, cache.pos + T), 1 = real token, 0 = padding, covers cached and new positions;
        positions then count real tokens only, so left-padded rows match their unpadded selves.
        `return_attention=True` returns (logits, [weights (B, nh, T, Tk) per layer]) via the reference path.
        """
        h = self.hidden(idx, cache=cache, attention_mask=attention_mask, need_weights=return_attention)
        if targets is not None:
            loss = self._lm_loss(h, targets)
            return loss + self.config.moe_aux_weight * self.aux_loss() if self.config.n_expert > 0 else loss
        logits = self.lm_head(h)  # (B, T, V)
        if return_attention:
            return logits, [blk.attn.last_weights for blk in self.blocks]
        return logits

    def _lm_loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of lm_head(h) against targets (-1 ignored). A plain, unhooked head (not an
        adapter or a quantized layer) in a precision `lm_loss` supports goes through
        `linear_cross_entropy`, which never holds the (B, T, V) logits; anything else the plain way."""
        head = self.lm_head
        if (type(head) is nn.Linear and head.bias is None and not head._forward_hooks
                and not head._forward_pre_hooks and lm_loss_usable(h, head.out_features)):
            return linear_cross_entropy(h, head.weight, targets)
        logits = head(h)  # (B, T, V)
        if logits.dtype in (torch.float16, torch.bfloat16):  # softmax over V entries wants fp32
            logits = logits.float()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)

    def hidden(self, idx: torch.Tensor, *, cache: KVCache | SlotKVCache | None = None,
               attention_mask: torch.Tensor | None = None, need_weights: bool = False) -> torch.Tensor:
        """idx (B, T) -> final hidden states (B, T, C) after the final norm (the trunk heads read).
        With a `SlotKVCache`, idx is (n, 1): one new token per active row, each at its own position."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ConfigMismatch(f"sequence of {start + T} tokens exceeds the model's context "
                                 f"(block_size {self.config.block_size}); shorten the input")
        if isinstance(cache, SlotKVCache):  # ragged rows: per-row positions, mask over each row's length
            positions, mask = cache.positions(), cache.step_mask()  # (n, 1), (n, 1, 1, Tk)
        else:
            positions, mask = self._positions_and_mask(idx, start, attention_mask)
        x = self.tok_emb(idx)  # (B, T, C)
        if self.config.positions == "learned":
            x = x + self.pos_emb(positions)  # (B or 1, T, C) broadcast
        elif self.config.positions == "sinusoidal":
            x = x + self.pos_table[positions].to(x.dtype)
        x = self.drop(x)
        for blk in self.blocks:
            x = blk(x, mask=mask, positions=positions, cache=cache, need_weights=need_weights)  # (B, T, C)
        if cache is not None:
            cache.advance(T)
        return self.ln_f(x)  # (B, T, C)

    def _positions_and_mask(self, idx: torch.Tensor, start: int, attention_mask: torch.Tensor | None):
        """Positions (T,) or (B, T) of the new tokens, and the padding mask (B, 1, 1, Tk) or None."""
        T = idx.size(1)
        if attention_mask is None:
            return torch.arange(start, start + T, device=idx.device), None
        if attention_mask.shape != (idx.size(0), start + T):
            raise ConfigMismatch(f"attention_mask has shape {tuple(attention_mask.shape)}; expected "
                                 f"{(idx.size(0), start + T)} (cached + new positions)")
        return positions_from_mask(attention_mask)[:, start:], padding_mask(attention_mask)

    # -- helpers -----------------------------------------------------------------------------------
    def aux_loss(self) -> torch.Tensor:
        """Sum of the mixture-of-experts load-balancing losses of the last forward (0 without MoE)."""
        losses = [blk.moe.aux_loss for blk in self.blocks if hasattr(blk, "moe")]
        return torch.stack(losses).sum() if losses else torch.zeros((), device=self.tok_emb.weight.device)

    def new_cache(self, batch_size: int, max_len: int | None = None, *, ragged: bool = False) -> KVCache | SlotKVCache:
        """An empty KV cache for `batch_size` rows of up to `max_len` (default block_size) positions,
        in the model's dtype and device; `ragged=True` gives a `SlotKVCache` (a length per row)."""
        c, w = self.config, self.tok_emb.weight
        kind = SlotKVCache if ragged else KVCache
        return kind(c.n_layer, batch_size, c.n_kv_head, max_len or c.block_size, c.head_dim,
                    dtype=w.dtype, device=w.device)

    def num_params(self) -> int:
        """Trainable parameters, counting a tied matrix once."""
        return sum(p.numel() for p in self.parameters())
