"""Beam search for the encoder-decoder model: keep the `beam` best partial translations, not just one.

Greedy decoding commits to the single most likely next token, and a token that looks best now can
lead to a worse whole sentence. Beam search keeps the `beam` highest-scoring prefixes (score = sum of
token log-probabilities) and extends each by every token, keeping the best `beam` again (Sutskever et
al. 2014, sec. 3.1; Vaswani et al. 2017 use beam 4). A prefix that emits EOS is finished and set
aside; the search ends when no live prefix can still beat the `beam` best finished ones (scores only
fall as tokens are added) or at `max_new_tokens`. With `length_penalty` a > 0 the final choice
divides by length ** a (Wu et al. 2016 use a similar normaliser) so short outputs are not favoured.

The decoder cache holds one row per beam; after each step its rows are reordered to follow their
parents. The source is encoded once. Knows nothing of tokenizers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pocketgpt.errors import ConfigMismatch


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids (EOS included when it finished)
    score: float  # sum of log-probabilities of `tokens`


@torch.no_grad()
def beam_search(
    model: torch.nn.Module,
    src: list[int],
    *,
    beam: int = 4,
    max_new_tokens: int = 32,
    length_penalty: float = 0.0,
) -> Hypothesis:
    """The best continuation of BOS for one source sentence `src` (token ids) under a `Seq2Seq`."""
    c = model.config
    if c.bos_id < 0:
        raise ConfigMismatch(
            "beam search starts from BOS, but config.bos_id is unset; set it to the tokenizer's BOS id"
        )
    device = model.tok_emb.weight.device
    src_t = torch.tensor([src], device=device)  # (1, Ts)
    src_mask = model._src_mask(src_t, None)
    memory = model.encode(src_t, src_mask).expand(
        beam, -1, -1
    )  # (beam, Ts, C): one encode, shared by all beams
    src_mask = src_mask.expand(beam, -1) if src_mask is not None else None
    cache = model.new_cache(beam, max_new_tokens)
    tok = torch.full((beam, 1), c.bos_id, dtype=torch.long, device=device)  # (beam, 1)
    scores = torch.full((beam,), float("-inf"), device=device)
    scores[0] = 0.0  # all beams start identical: only one may expand, or the first step picks duplicates
    seqs: list[list[int]] = [[] for _ in range(beam)]
    finished: list[Hypothesis] = []
    for _ in range(max_new_tokens):
        logp = model.decode(tok, memory, src_mask, cache=cache)[:, -1].float().log_softmax(-1)  # (beam, V)
        cand = (scores[:, None] + logp).view(-1)  # (beam * V,)
        top, flat = cand.topk(2 * beam)  # enough that `beam` non-EOS candidates always remain
        alive_parent, alive_token, alive_score = [], [], []
        for s, f in zip(top.tolist(), flat.tolist(), strict=True):
            parent, token = divmod(f, logp.size(-1))
            if s == float("-inf"):
                break
            if token == c.eos_id:
                if len(finished) < beam or s > min(h.score for h in finished):
                    finished.append(Hypothesis(seqs[parent] + [token], s))
            elif len(alive_parent) < beam:
                alive_parent.append(parent), alive_token.append(token), alive_score.append(s)
        order = torch.tensor(alive_parent, device=device)
        seqs = [seqs[p] + [t] for p, t in zip(alive_parent, alive_token, strict=True)]
        scores = torch.tensor(alive_score, device=device)
        _reorder(cache, order)
        tok = torch.tensor(alive_token, device=device)[:, None]  # (beam, 1)
        best_finished = sorted(h.score for h in finished)[-beam:]
        if len(best_finished) >= beam and max(alive_score) <= best_finished[0]:
            break  # no live prefix can catch up: adding tokens only lowers a score
    finished += [Hypothesis(s, float(v)) for s, v in zip(seqs, scores.tolist(), strict=True)]
    return max(finished, key=lambda h: h.score / (len(h.tokens) ** length_penalty if h.tokens else 1.0))


def _reorder(cache, order: torch.Tensor) -> None:
    """Rows of the decoder self-attention cache follow their parent beams (cross K/V are the same for all)."""
    kv = cache.self_attn
    kv.k = kv.k.index_select(1, order)  # (L, beam, nkv, max_len, hs)
    kv.v = kv.v.index_select(1, order)
