"""The language-model loss without the full logits: cross-entropy of `h @ W^T` in chunks of rows.

The plain recipe, `F.cross_entropy(lm_head(h), targets)`, writes a (B*T, V) logits tensor, a
log-softmax of the same size, and in the backward pass a gradient of the same size again: for
pretraining's 8 x 256 tokens at vocabulary 8192 that is three 67 MB tensors per step, each fresh
from the allocator (glibc hands blocks over 32 MB back to the OS on free, so every step also
page-faults them in again). `linear_cross_entropy` walks the rows in chunks of ~2 M logits
(8 MB in fp32, cache-sized) and, when gradients are wanted, computes each chunk's gradient right
there, in the forward pass, while its logits are hot:

    h, W cast once to the products' dtype (the autocast dtype, as lm_head would compute in)
    per chunk c:   z = h_c W^T  -> fp32
                   e = exp(z - max z);  loss += sum(log sum e + max z - z[target])   (ignored rows: 0)
                   p = (e / sum e - onehot(target)) / n        (n = rows not ignored; ignored rows: 0)
                   dh_c = p W
                   fp32:  dW += p^T h_c  (inside addmm_)
                   bf16:  p kept (in bf16) for one dW product per 64 MB of kept rows
    loss /= n

and the backward pass only multiplies them by the incoming gradient (nothing to do for the usual
1). Same products as the plain forward + backward, the same math to rounding (tests: loss and
both gradients against the plain recipe in fp32 and under bf16 autocast). Under autocast, W is
cast once rather than per chunk and dW is one product instead of one per chunk plus a pass over
(V, C) in fp32 each time. Measured on 2 cores, 2048 rows x 384 -> 8192 (forward + backward):
fp32 168 -> 113 ms, bf16 autocast 111 -> 45 ms.

Not used (the caller falls back to the plain recipe) for logits that fit in one chunk (nothing to
save, and the plain recipe makes fewer calls), under fp16 autocast, where a gradient
computed before the loss scaler multiplies it could underflow, and inside `torch.compile`, which
fuses the plain recipe itself.
"""

from __future__ import annotations

import threading

import torch

CHUNK_LOGITS = 1 << 21  # logits per chunk: 2 M (8 MB in fp32)


def usable(h: torch.Tensor, vocab: int) -> bool:
    """Whether `linear_cross_entropy` should replace the plain recipe for hidden states `h` (..., C)
    and a head of `vocab` outputs: not under fp16 autocast or torch.compile (see the module doc), and
    only when the logits take more than one chunk. Below that there is no memory to save and the
    plain recipe's fewer calls win: 2 cores, forward + backward, 768 x 65 logits 0.32 vs 0.59 ms,
    2048 x 512 3.4 vs 3.6 ms; from ~3 M logits the chunks win, 768 x 4096 10.9 vs 9.4 ms."""
    if torch.compiler.is_compiling() or h.numel() // max(h.size(-1), 1) * vocab <= CHUNK_LOGITS:
        return False
    dev = h.device.type
    return not (torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev) == torch.float16)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of the logits `h @ weight^T` (h (..., C), weight (V, C)) against `targets`
    (...,), targets of -1 ignored; what `F.cross_entropy(F.linear(h, weight).float().view(-1, V),
    targets.view(-1), ignore_index=-1)` gives, without holding the logits. `chunk`: rows per chunk
    (default: CHUNK_LOGITS / V)."""
    V, C = weight.shape
    if h.size(-1) != C or h.shape[:-1] != targets.shape:
        raise ValueError(f"h {tuple(h.shape)} and targets {tuple(targets.shape)} do not match weight {tuple(weight.shape)}")
    chunk = chunk or max(1, CHUNK_LOGITS // V)
    return _LinearCrossEntropy.apply(h.reshape(-1, C), weight, targets.reshape(-1), chunk)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dev = h.device.type
        # The products' dtype: what lm_head would compute in (the autocast dtype, else the inputs').
        # Both operands are cast once here, not per chunk (autocast would recast W for every chunk).
        cd = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.promote_types(h.dtype, w.dtype)
        hl, wl = h.to(cd), w.to(cd)
        keep = targets != -1  # (N,)
        n = keep.sum().to(torch.promote_types(cd, torch.float32))  # 0 rows kept: 0/0 = nan, as F.cross_entropy's mean
        grad_h = torch.empty(h.shape, dtype=cd, device=h.device) if need_h else None  # lm_head's backward dtype
        grad_w, low = None, cd in (torch.float16, torch.bfloat16)
        if need_w and not low:
            grad_w = torch.zeros(w.shape, dtype=cd, device=w.device)  # accumulated inside addmm_
        elif need_w:  # the rows' softmax gradients, kept in cd for one grad_w product per `_rows_kept` rows
            kept = _workspace(min(h.size(0), _rows_kept(w.size(0), cd, chunk)) * w.size(0), cd, h.device).view(-1, w.size(0))
            flushed = 0
        total = torch.zeros((), dtype=n.dtype, device=h.device)
        with torch.autocast(dev, enabled=False):  # every cast is explicit below
            for s in range(0, h.size(0), chunk):
                e_ = min(s + chunk, h.size(0))
                kc, tc = keep[s:e_], targets[s:e_].clamp(min=0)  # ignored rows point at 0; their terms are zeroed
                z = hl[s:e_] @ wl.t()  # (c, V) in cd; the softmax in fp32 (or fp64)
                z = z.float() if low else z
                picked = z.gather(1, tc[:, None])[:, 0]  # (c,) the targets' logits
                top = z.amax(dim=-1, keepdim=True)  # (c, 1)
                e = z.sub_(top).exp_()  # exp(z - max), in place of z
                mass = e.sum(dim=-1, keepdim=True)  # (c, 1)
                total += torch.where(kc, (mass.log() + top)[:, 0] - picked, 0.0).sum()  # logsumexp - target
                if not (need_h or need_w):
                    continue
                scale = kc / n  # the mean's 1/n, and 0 for ignored rows
                p = e.mul_(scale[:, None] / mass)  # softmax / n, ignored rows zeroed: one pass for all three
                p[torch.arange(p.size(0), device=p.device), tc] -= scale.to(p.dtype)  # - onehot(target) / n
                if low and need_w:  # cast once, into the buffer the grad_w product reads
                    if e_ - flushed > kept.size(0):
                        grad_w = _add_product(grad_w, kept[: s - flushed], hl[flushed:s])
                        flushed = s
                    p = kept[s - flushed : e_ - flushed].copy_(p)
                elif low:
                    p = p.to(cd)
                if need_h:
                    torch.mm(p, wl, out=grad_h[s:e_])
                if need_w and not low:
                    grad_w.addmm_(p.t(), hl[s:e_])  # accumulate inside the product: no temporary, no extra pass
            if need_w and low:
                grad_w = _add_product(grad_w, kept[: h.size(0) - flushed], hl[flushed:])
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = h.dtype, w.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        one = grad.device.type == "cpu" and grad.item() == 1.0  # loss.backward(): skip a pass over W's size
        return (
            None if grad_h is None else (grad_h if one else grad_h * grad.to(grad_h.dtype)).to(ctx.dtypes[0]),
            None if grad_w is None else (grad_w if one else grad_w * grad.to(grad_w.dtype)).to(ctx.dtypes[1]),
            None,
            None,
        )


KEPT_BYTES = 64 << 20  # half-precision softmax gradients kept for one grad_w product: at most 64 MB


def _rows_kept(vocab: int, dtype: torch.dtype, chunk: int) -> int:
    """Rows of half-precision softmax gradients to keep before a grad_w product: as many as fit in
    `KEPT_BYTES`, at least one chunk. One product over many rows, instead of one per chunk plus an
    fp32 sum over the whole (V, C) gradient each time, is what makes this path fast."""
    return max(chunk, KEPT_BYTES // (vocab * torch.finfo(dtype).bits // 8))


_local = threading.local()


def _workspace(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A flat buffer of at least `numel` elements, kept per thread, dtype and device across calls:
    a fresh 30-60 MB buffer every step costs ~6 ms of page faults on first touch."""
    spaces = _local.__dict__.setdefault("spaces", {})
    buf = spaces.get((dtype, device))
    if buf is None or buf.numel() < numel:
        buf = spaces[(dtype, device)] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel]


def _add_product(grad_w: torch.Tensor | None, p: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """grad_w + p^T h, the product in p's half precision (as lm_head's backward computes it) and the
    sum over groups of rows in fp32."""
    if p.size(0) == 0:
        return grad_w if grad_w is not None else torch.zeros(p.size(1), h.size(1), device=h.device)
    part = p.t() @ h  # (V, C) in half precision
    return part.float() if grad_w is None else grad_w.add_(part)
