"""The language-model loss without the full logits: cross-entropy of `h @ W^T` in chunks of rows.

The plain recipe, `F.cross_entropy(lm_head(h), targets)`, writes a (B*T, V) logits tensor, a
log-softmax of the same size, and in the backward pass a gradient of the same size again: for
pretraining's 8 x 256 tokens at vocabulary 8192 that is three 67 MB tensors per step, each fresh
from the allocator (glibc hands blocks over 32 MB back to the OS on free, so every step also
page-faults them in again). `linear_cross_entropy` walks the rows in chunks of ~2 M logits
(8 MB in fp32, cache-sized) and, when gradients are wanted, computes each chunk's gradient right
there, in the forward pass, while its logits are hot:

    per chunk c:   z = h_c W^T  (in the autocast dtype, as lm_head would)   -> fp32
                   e = exp(z - max z);  loss += sum(log sum e + max z - z[target])   (ignored rows: 0)
                   p = e / sum e - onehot(target)                             (ignored rows: 0)
                   dh_c = p W;   dW += p^T h_c
    loss /= n;  dh /= n;  dW /= n                       (n = rows not ignored; the mean of the plain loss)

and the backward pass only multiplies them by the incoming gradient. Same products as the plain
forward + backward (three per chunk), the same math to rounding (tests: loss and both gradients
against the plain recipe in fp32 and under bf16 autocast). Measured on 2 cores, 2048 rows x 384
-> 8192 (forward + backward): fp32 168 -> 123 ms, bf16 autocast 111 -> 56 ms.

Not used (the caller falls back to the plain recipe) under fp16 autocast, where a gradient
computed before the loss scaler multiplies it could underflow, and inside `torch.compile`, which
fuses the plain recipe itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_LOGITS = 1 << 21  # logits per chunk: 2 M (8 MB in fp32)


def usable(h: torch.Tensor) -> bool:
    """Whether `linear_cross_entropy` may replace the plain recipe here (see the module doc)."""
    if torch.compiler.is_compiling():
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
        keep = targets != -1  # (N,)
        n = keep.sum().float()  # 0 rows kept: 0/0 = nan, as F.cross_entropy's mean gives
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(w.shape, dtype=torch.promote_types(w.dtype, torch.float32), device=w.device) if need_w else None
        total = torch.zeros((), dtype=torch.promote_types(h.dtype, torch.float32), device=h.device)
        for s in range(0, h.size(0), chunk):
            hc, kc = h[s : s + chunk], keep[s : s + chunk]
            tc = targets[s : s + chunk].clamp(min=0)  # ignored rows point at 0; their terms are zeroed
            z = F.linear(hc, w)  # (c, V): the product in the autocast dtype, the softmax in fp32 (or fp64)
            z = z.float() if z.dtype in (torch.bfloat16, torch.float16) else z
            picked = z.gather(1, tc[:, None])[:, 0]  # (c,) the targets' logits
            top = z.amax(dim=-1, keepdim=True)  # (c, 1)
            e = z.sub_(top).exp_()  # exp(z - max), in place of z
            mass = e.sum(dim=-1, keepdim=True)  # (c, 1)
            total += torch.where(kc, (mass.log() + top)[:, 0] - picked, 0.0).sum()  # logsumexp - target
            if need_h or need_w:
                p = e.mul_(kc[:, None] / mass)  # softmax, ignored rows zeroed: one pass for both
                p[torch.arange(p.size(0), device=p.device), tc] -= kc.to(p.dtype)  # - onehot(target)
                if need_h:
                    grad_h[s : s + chunk] = p @ w  # autocast: in the low-precision dtype, as lm_head's backward
                if need_w and hc.dtype == grad_w.dtype == p.dtype and not torch.is_autocast_enabled(hc.device.type):
                    grad_w.addmm_(p.t(), hc)  # accumulate inside the product: no temporary, no extra pass
                elif need_w:
                    grad_w += p.t() @ hc  # autocast: the product in its dtype, the sum in fp32
        if grad_h is not None:
            grad_h /= n
        if grad_w is not None:
            grad_w /= n
        ctx.save_for_backward(grad_h, grad_w)
        ctx.w_dtype = w.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return (
            None if grad_h is None else grad_h * grad.to(grad_h.dtype),
            None if grad_w is None else (grad_w * grad).to(ctx.w_dtype),
            None,
            None,
        )
