"""The original encoder-decoder Transformer (Vaswani et al. 2017, "Attention Is All You Need", fig. 1).

    memory = encode(src):  x = tok_emb(src) * sqrt(d_model) + PE;  N x [self-attention (padding mask) + FFN]
    logits = decode(tgt, memory):  y = tok_emb(tgt) * sqrt(d_model) + PE;
             N x [causal self-attention + cross-attention to memory + FFN];  linear (tied to tok_emb) -> softmax

The encoder reads the whole source bidirectionally; the decoder writes the target left to right, each
position seeing earlier target tokens and every (non-pad) source token. Post-LN by default, as in the
paper; one embedding matrix shared by source, target and output layer (sec. 3.4).

Contract: `model(src, tgt_in)` -> logits (B, Tt, V); `model(src, tgt_in, targets)` -> mean cross-entropy
(-1 ignored); `encode(src, src_mask)` -> memory (B, Ts, C); `decode(tgt, memory, src_mask, cache=None)`
-> logits. A `Seq2SeqCache` keeps the decoder self-attention keys/values (a `KVCache`) and the
cross-attention keys/values, which depend only on the source and so are projected once per source.
Attention itself comes from `attention.py`; this module only wires it. Knows nothing of tokenizers.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.config import ModelConfig
from pocketgpt.errors import ConfigMismatch
from pocketgpt.model.attention import (
    CrossAttention,
    KVCache,
    SelfAttention,
    padding_mask,
    repeat_kv,
    sdpa_attention,
)
from pocketgpt.model.blocks import Block, FeedForward, LearnedPositions, make_norm, sinusoidal_table

MemoryKV = tuple[torch.Tensor, torch.Tensor]  # keys, values (B, nh, Ts, hs) of one decoder layer


# -- cross-attention with the source's keys/values projected once -----------------------------------
def memory_kv(cross: CrossAttention, memory: torch.Tensor) -> MemoryKV:
    """Project the encoder output through `cross.kv`: memory (B, Ts, C) -> k, v (B, nh, Ts, hs)."""
    B, Ts, _ = memory.shape
    nh, nkv, hs = cross.n_head, cross.n_kv_head, cross.head_dim
    k, v = cross.kv(memory).split(nkv * hs, dim=-1)
    k = repeat_kv(k.view(B, Ts, nkv, hs).transpose(1, 2), nh // nkv)  # (B, nh, Ts, hs)
    v = repeat_kv(v.view(B, Ts, nkv, hs).transpose(1, 2), nh // nkv)  # (B, nh, Ts, hs)
    return k, v


def cross_attend(cross: CrossAttention, x: torch.Tensor, kv: MemoryKV, memory_mask: torch.Tensor | None) -> torch.Tensor:
    """`CrossAttention.forward` with precomputed memory keys/values: x (B, Tt, C) -> (B, Tt, C).

    Same weights, same formula (`sdpa_attention`); only the source projection is hoisted out so a
    decoding step costs O(Tt) rather than re-projecting all Ts source positions in every layer.
    """
    B, Tt, _ = x.shape
    nh, hs = cross.n_head, cross.head_dim
    q = cross.q(x).view(B, Tt, nh, hs).transpose(1, 2)  # (B, nh, Tt, hs)
    mask = padding_mask(memory_mask) if memory_mask is not None else None  # (B, 1, 1, Ts)
    y = sdpa_attention(q, *kv, causal=False, mask=mask, dropout_p=cross.dropout if cross.training else 0.0)
    y = y.transpose(1, 2).contiguous().view(B, Tt, nh * hs)  # (B, Tt, nh*hs)
    return cross.resid_drop(cross.proj(y))  # (B, Tt, C)


class Seq2SeqCache:
    """Decoder state for generation: self-attention K/V (grows a token at a time) + cross-attention K/V
    (fixed once the source is known; filled on the first `decode` call)."""

    def __init__(self, self_attn: KVCache) -> None:
        self.self_attn = self_attn
        self.cross: list[MemoryKV] | None = None

    @property
    def pos(self) -> int:
        return self.self_attn.pos


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention over the encoder output, FFN; each in a residual + norm."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.ln1, self.attn = make_norm(config), SelfAttention(config, layer_idx, causal=True)
        self.ln2, self.cross = make_norm(config), CrossAttention(config)
        self.ln3 = make_norm(config)
        if config.n_expert > 0:  # mixture of experts in place of the FFN, as in `Block`
            from pocketgpt.model.moe import MoE

            self.moe = MoE(config)
        else:
            self.mlp = FeedForward(config)

    @property
    def ffn(self) -> nn.Module:
        return self.moe if hasattr(self, "moe") else self.mlp

    def forward(self, x: torch.Tensor, kv: MemoryKV, *, memory_mask: torch.Tensor | None,
                positions: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        """x (B, Tt, C) -> (B, Tt, C)."""
        if self.pre_norm:
            x = x + self.attn(self.ln1(x), positions=positions, cache=cache)
            x = x + cross_attend(self.cross, self.ln2(x), kv, memory_mask)
            return x + self.ffn(self.ln3(x))
        x = self.ln1(x + self.attn(x, positions=positions, cache=cache))  # post-LN (the paper)
        x = self.ln2(x + cross_attend(self.cross, x, kv, memory_mask))
        return self.ln3(x + self.ffn(x))


# -- the model ---------------------------------------------------------------------------------------
class Seq2Seq(nn.Module):
    """Encoder-decoder Transformer; `transformer-base` is the paper's base model (~63M parameters)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        C, n_enc = config.d_model, config.n_encoder_layer or config.n_layer
        self.tok_emb = nn.Embedding(config.vocab_size, C)  # shared by source and target (one joint vocabulary)
        if config.positions == "learned":
            self.pos_emb = LearnedPositions(config.block_size, C)
        elif config.positions == "sinusoidal":  # fixed: a buffer rebuilt from the config, never saved
            self.register_buffer("pos_table", sinusoidal_table(config.block_size, C), persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList(Block(config, i, causal=False) for i in range(n_enc))
        self.decoder = nn.ModuleList(DecoderBlock(config, i) for i in range(config.n_layer))
        # post-LN layers end in a norm already; pre-LN stacks need one at the top of each side
        pre = config.norm_placement == "pre"
        self.ln_enc = make_norm(config) if pre else nn.Identity()
        self.ln_f = make_norm(config) if pre else nn.Identity()
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        self.apply(_init_weights)
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=C**-0.5)  # x sqrt(C) in embed(): unit scale
        if config.tie_embeddings:  # sec. 3.4: embeddings and pre-softmax linear share one matrix
            self.lm_head.weight = self.tok_emb.weight

    # -- the recipe --------------------------------------------------------------------------------
    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, targets: torch.Tensor | None = None, *,
                src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src (B, Ts), tgt_in (B, Tt) -> logits (B, Tt, V); with targets (B, Tt) -> scalar loss.

        `src_mask` (B, Ts): 1 = real token, 0 = padding; default: `src != config.pad_id` when pad_id is set.
        """
        src_mask = self._src_mask(src, src_mask)
        logits = self.decode(tgt_in, self.encode(src, src_mask), src_mask)  # (B, Tt, V)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return loss + self.config.moe_aux_weight * self.aux_loss() if self.config.n_expert > 0 else loss

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src (B, Ts) -> memory (B, Ts, C). Every source token attends to every non-pad source token."""
        src_mask = self._src_mask(src, src_mask)
        mask = padding_mask(src_mask) if src_mask is not None else None  # (B, 1, 1, Ts)
        positions = torch.arange(src.size(1), device=src.device)  # (Ts,)
        x = self.embed(src, positions)  # (B, Ts, C)
        for blk in self.encoder:
            x = blk(x, mask=mask, positions=positions)  # (B, Ts, C)
        return self.ln_enc(x)

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor | None = None,
               cache: Seq2SeqCache | None = None) -> torch.Tensor:
        """tgt (B, Tt) new target tokens, memory (B, Ts, C) -> logits (B, Tt, V); with `cache`, tgt
        continues the tokens already decoded and the cache advances."""
        start = cache.pos if cache is not None else 0
        positions = torch.arange(start, start + tgt.size(1), device=tgt.device)  # (Tt,)
        if cache is not None and cache.cross is None:
            cache.cross = [memory_kv(blk.cross, memory) for blk in self.decoder]
        cross = cache.cross if cache is not None else [memory_kv(blk.cross, memory) for blk in self.decoder]
        x = self.embed(tgt, positions)  # (B, Tt, C)
        for blk, kv in zip(self.decoder, cross, strict=True):
            x = blk(x, kv, memory_mask=src_mask, positions=positions, cache=cache.self_attn if cache else None)
        if cache is not None:
            cache.self_attn.advance(tgt.size(1))
        return self.lm_head(self.ln_f(x))  # (B, Tt, V)

    def embed(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token embedding * sqrt(d_model) (sec. 3.4) plus positions, then dropout (sec. 5.4)."""
        if positions[-1] >= self.config.block_size:
            raise ConfigMismatch(f"sequence of {int(positions[-1]) + 1} tokens exceeds the model's block_size "
                                 f"{self.config.block_size}; shorten the input")
        x = self.tok_emb(idx) * math.sqrt(self.config.d_model)  # (B, T, C)
        if self.config.positions == "learned":
            x = x + self.pos_emb(positions)
        elif self.config.positions == "sinusoidal":
            x = x + self.pos_table[positions].to(x.dtype)  # (T, C) broadcast over B
        return self.drop(x)

    # -- generation --------------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int | None = None) -> Seq2SeqCache:
        """An empty decoder cache for up to `max_len` (default block_size) target positions."""
        c, w = self.config, self.tok_emb.weight
        kv = KVCache(c.n_layer, batch_size, c.n_kv_head, max_len or c.block_size, c.head_dim,
                     dtype=w.dtype, device=w.device)
        return Seq2SeqCache(kv)

    @torch.no_grad()
    def greedy(self, src: torch.Tensor, max_new_tokens: int, *, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy decoding from BOS: src (B, Ts) -> (B, <= max_new_tokens) token ids, stopping when every
        row has produced EOS (rows that finished keep emitting EOS). Needs config.bos_id."""
        if self.config.bos_id < 0:
            raise ConfigMismatch("greedy decoding starts from BOS, but config.bos_id is unset; set it to the "
                                 "tokenizer's BOS id")
        src_mask = self._src_mask(src, src_mask)
        memory = self.encode(src, src_mask)  # (B, Ts, C): the source is encoded once
        cache = self.new_cache(src.size(0), max_new_tokens)
        tok = torch.full((src.size(0), 1), self.config.bos_id, dtype=torch.long, device=src.device)  # (B, 1)
        done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)  # (B,)
        out = []
        for _ in range(max_new_tokens):
            tok = self.decode(tok, memory, src_mask, cache=cache)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            if self.config.eos_id >= 0:
                tok = tok.masked_fill(done[:, None], self.config.eos_id)
                done |= tok[:, 0] == self.config.eos_id
            out.append(tok)
            if done.all():
                break
        return torch.cat(out, dim=1)

    # -- helpers -----------------------------------------------------------------------------------
    def _src_mask(self, src: torch.Tensor, src_mask: torch.Tensor | None) -> torch.Tensor | None:
        if src_mask is None and self.config.pad_id >= 0:
            return src != self.config.pad_id  # (B, Ts)
        return src_mask

    def aux_loss(self) -> torch.Tensor:
        """Sum of the mixture-of-experts load-balancing losses of the last forward (0 without MoE)."""
        losses = [blk.moe.aux_loss for blk in [*self.encoder, *self.decoder] if hasattr(blk, "moe")]
        return torch.stack(losses).sum() if losses else torch.zeros((), device=self.tok_emb.weight.device)

    def num_params(self) -> int:
        """Trainable parameters, counting the shared embedding matrix once."""
        return sum(p.numel() for p in self.parameters())


def _init_weights(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases, the usual initialisation for this model (the paper names none)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, LearnedPositions):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
