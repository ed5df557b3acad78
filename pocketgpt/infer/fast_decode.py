"""The decode fast path: one new token per row through a GPT, as a short list of tensor calls.

A decode step feeds one token per sequence, so every matmul is a matrix-vector product and a small
model's step is all overhead: the module path (`GPT.hidden`) makes ~11 module calls per layer, splits
and transposes heads, builds a mask, repeats keys for grouped-query attention. `FastDecoder` reads
the model's weights once and runs the same recipe with ~12 tensor calls per layer and no modules:

    x = tok_emb[ids] + pos_emb[pos]                              (n, C)
    per layer:  qkv = norm1(x) @ Wqkv (+ RoPE on q and k together)  ->  k, v written at each row's length
                y = sdpa(q grouped by kv head, K[:tk], V[:tk])   (a mask only when the rows' lengths differ)
                x = x + y @ Wproj;   x = x + ffn(norm2(x))         (post-LN: the norms after the sums)
    logits = ln_f(x) @ W_head                                    (n, V)

A large model's step is the other extreme: it streams every weight from memory once, and
`F.linear` on one row reads only ~12 GB/s on our CPU where the memory gives ~40 GB/s to 2 threads.
`_Blocked` runs the same product as a batched product over blocks of the weight (views, never copies:
the step reads each weight exactly once and holds no second copy), which reaches ~35-40 GB/s.
A small model (<= `COPY_MAX` parameters, cache-resident) gets copies: its weights are held
transposed, (in, out), where `addmm` runs a few rows 1.2-1.8x faster than `F.linear` (tiny preset:
step 0.78 -> 0.56 ms of CPU time); a few MB, re-made with the rest when weights change.
A large model decoding several rows at once (`pack_rows` > 1: an engine with more than one slot) gets
the other copy: each large weight also in oneDNN's packed layout for that many rows, where the
product of 8 rows streams GPT-2's weights at ~27 GB/s instead of ~16 (18 vs 31 ms per step's
products); one row keeps the blocked product on the model's own weight, which is faster still.
The price is a second copy of the large weights in memory, so it is only made when asked for.

Only models whose parts it knows take this path (`unsupported` says why another does not: mixture of
experts, a swapped-in Linear such as LoRA or a quantized one, hooks, training mode); the engine then
uses the module path. The weight views are rebuilt when a parameter changes or is replaced (an
optimizer step, a load, a swapped module), so a policy trained between rollouts never decodes with
stale weights (`stale` compares versions and storage).
Prefill stays on the module path. Knows nothing of sampling, requests or text.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.measure import fastest
from pocketgpt.model.attention import SlotKVCache
from pocketgpt.model.blocks import LayerNorm, RMSNorm


def unsupported(model: nn.Module) -> str | None:
    """Why `model` cannot take the fast path (None when it can)."""
    from pocketgpt.model.gpt import GPT

    if not isinstance(model, GPT):
        return f"{type(model).__name__} is not a decoder-only GPT"
    if model.training:
        return "the model is in training mode (dropout); call model.eval()"
    c = model.config
    if c.n_expert > 0:
        return "mixture-of-experts layers route tokens per row"
    for name, m in model.named_modules():
        if m._forward_hooks or m._forward_pre_hooks:
            return f"module {name or 'model'} has forward hooks"
    odd = next((type(m).__name__ for m in _linear_modules(model) if type(m) is not nn.Linear), None)
    if odd is not None:
        return f"a {odd} replaces nn.Linear (adapter or quantized weights)"
    norms = [m for b in model.blocks for m in (b.ln1, b.ln2)] + [model.ln_f]
    if any(type(m) not in (LayerNorm, RMSNorm, nn.Identity) for m in norms):
        return "an unknown norm module"
    return None


def _linear_modules(model: nn.Module) -> list[nn.Module]:
    """The vocabulary head and every block's projections: the products of a decode step."""
    linears = [model.lm_head] + [m for b in model.blocks for m in (b.attn.qkv, b.attn.proj, b.mlp.fc, b.mlp.proj)]
    return linears + [b.mlp.gate for b in model.blocks if b.mlp.swiglu]


def _linear(w: torch.Tensor, b: torch.Tensor | None, chunk_min: int, transpose: bool = False,
            pack_rows: int = 0, one_row: str = "blocks"):
    """y = x W^T + b as a function of x (n, in) -> (n, out), a C call with no Python frame:
    - `transpose`: `addmm(b, x, W^T)` over a contiguous transposed *copy* of W (in, out), which MKL
      reads 1.2-1.8x faster than `F.linear` reads W for a few rows (tiny preset: the head 72 -> 41 us
      at one row); for small models only (`FastDecoder` decides), where the copies are cheap;
    - `_Blocked` for a large weight on a CPU (>= chunk_min elements: streamed from memory), with a
      oneDNN-packed copy for products of several rows when `pack_rows` > 1, and one row through
      row blocks or `F.linear` (`one_row`: whichever `FastDecoder` measured faster on this CPU);
    - else `F.linear` with the weight bound."""
    w, b = w.detach(), None if b is None else b.detach()
    on_cpu = w.device.type == "cpu"  # both layouts were measured on CPUs only
    if on_cpu and transpose:
        wt = w.t().contiguous()  # (in, out)
        one = partial(torch.mm, mat2=wt) if b is None else partial(torch.addmm, b, mat2=wt)
        if pack_rows > 1 and w.numel() >= chunk_min and _onednn_pack is not None and w.dtype == torch.float32:
            return _Transposed(one, _onednn_pack(w, pack_rows), b)
        return one
    if _streamed(w, chunk_min):
        return _Blocked(w, b, pack_rows, one_row)
    return partial(F.linear, weight=w, bias=b)


def _streamed(w: torch.Tensor, chunk_min: int) -> bool:
    """A weight `_Blocked` takes: large enough to stream from memory, on a CPU, with row or inner blocks."""
    blocks = _divisor(w.size(0), 4, 64) or _divisor(w.size(1), 4, 4)
    return w.device.type == "cpu" and w.numel() >= chunk_min and blocks is not None


class _Blocked:
    """One projection y = x W^T + b over the model's own weight (no copy), in the form that reads a
    large weight fastest on a CPU (measured on GPT-2-124M's matrices, 2 threads, fp32, see
    docs/inference.md):

      - one row (n = 1): W (out, in) viewed as c row blocks (c, out/c, in) and one batched product
        `baddbmm`: each block is a plain matrix-vector product and the blocks spread over the threads,
        ~35-40 GB/s on our AMD EPYC machine, where `F.linear`'s single matrix-vector product reads
        ~12 GB/s. On an Intel Xeon (Sapphire Rapids class) it is the other way round (`F.linear` ~50
        GB/s, blocks ~28), so `one_row="linear"` keeps `F.linear` for one row; `FastDecoder` times
        both on the model's own weights (`measure.fastest`) and takes the faster.
      - several rows: oneDNN's inner product (`_onednn_linear`), which uses the CPU's AVX-512 where
        MKL's small-n product does not: 2-4x `F.linear` at n = 8 on the vocabulary head; on a copy
        of the weight in oneDNN's packed layout when one was asked for (`pack_rows` > 1: the rows
        the layout is tuned for), another 1.7x, else on the plain weight. Without oneDNN: the inner
        dimension split into 4 blocks, four partial products summed (1.1-1.5x `F.linear`).
      - a shape with no such blocks: `F.linear`.
    """

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None, pack_rows: int = 0,
                 one_row: str = "blocks") -> None:
        if one_row not in ONE_ROW_KINDS:
            raise ValueError(f"one_row must be one of {ONE_ROW_KINDS}, not {one_row!r}")
        self.w, self.b = w, b
        out, inner = w.shape
        self.rows = _divisor(out, 4, 64) if one_row == "blocks" else None  # row blocks for n = 1
        self.cols = _divisor(inner, 4, 4)  # inner blocks for n > 1
        self.onednn = _onednn_linear is not None and w.device.type == "cpu" and w.dtype == torch.float32
        self.w_many = self.w  # the weight the several-row product reads
        if self.onednn and pack_rows > 1 and _onednn_pack is not None:
            self.w_many = _onednn_pack(w, pack_rows)  # a copy in oneDNN's blocked layout
        if self.rows:
            c = self.rows
            self.w_rows = self.w.view(c, out // c, inner)  # (c, out/c, in)
            self.b_rows = None if b is None else self.b.view(c, out // c, 1)  # (c, out/c, 1)
        if self.cols:
            c = self.cols
            self.w_cols = self.w.view(out, c, inner // c).permute(1, 2, 0)  # (c, in/c, out)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (n, in) -> (n, out)."""
        n, inner = x.shape
        if n == 1 and self.rows:
            xs = x.t().expand(self.rows, inner, 1)  # (c, in, 1): the same row for every block
            if self.b_rows is None:
                return torch.bmm(self.w_rows, xs).view(1, -1)  # (c, out/c, 1) -> (1, out)
            return torch.baddbmm(self.b_rows, self.w_rows, xs).view(1, -1)
        if n > 1 and self.onednn:
            return _onednn_product(x, self.w_many, self.b)
        if n > 1 and self.cols:
            c = self.cols
            parts = torch.bmm(x.view(n, c, inner // c).transpose(0, 1), self.w_cols)  # (c, n, out)
            y = parts.sum(0)  # (n, out)
            return y if self.b is None else y.add_(self.b)
        return F.linear(x, self.w, self.b)


ONE_ROW_KINDS = ("blocks", "linear")  # how `_Blocked` runs one row: row blocks, or `F.linear`
_ONE_ROW_CHOICE: dict[tuple, str] = {}  # measured once per process: (shape, dtype, threads, count) -> kind


def measured_one_row(weights: list[tuple[torch.Tensor, torch.Tensor | None]]) -> str:
    """Which one-row product reads these same-shaped weights (a model's layers) faster on this CPU,
    at the current thread count: "blocks" or "linear". Timed over all of them in turn, as a decode
    step reads them (each weight once, the set larger than the caches for a large model); the answer
    is kept for the process (`FastDecoder` is rebuilt after every weight update in PPO)."""
    w0 = weights[0][0]
    key = (tuple(w0.shape), w0.dtype, torch.get_num_threads(), len(weights))
    if key not in _ONE_ROW_CHOICE:
        x = torch.randn(1, w0.size(1), dtype=w0.dtype, device=w0.device)
        runs = {}
        for kind in ONE_ROW_KINDS:
            products = [_Blocked(w, b, one_row=kind) for w, b in weights]
            runs[kind] = lambda products=products: [f(x) for f in products]
        with torch.inference_mode():
            _ONE_ROW_CHOICE[key] = fastest(runs)
    return _ONE_ROW_CHOICE[key]


class _Transposed:
    """A small model's large weight (the vocabulary head) in two copies: transposed for one row
    (`addmm`, the fastest there: 41 vs 51-92 µs for tiny's 4096 x 128 head) and oneDNN-packed for
    several (106 vs 181-209 µs at 8 rows, where MKL's small-M product over the transposed copy
    crawls)."""

    def __init__(self, one: partial, packed: torch.Tensor, b: torch.Tensor | None) -> None:
        """`one`: the one-row product over the transposed copy (`_linear`'s addmm / mm)."""
        self.one, self.packed, self.b = one, packed, b

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(0) == 1:
            return self.one(x)
        return _onednn_product(x, self.packed, self.b)


def _find_onednn_linear():
    """torch's oneDNN linear op (what inductor emits for CPU linears), or None in a build without it."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        w, x = torch.ones(2, 2), torch.ones(2, 2)
        return op if torch.equal(op(x, w, None, "none", [], ""), F.linear(x, w)) else None
    except (AttributeError, RuntimeError):
        return None


_onednn_linear = _find_onednn_linear()


def _onednn_product(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x (n, in) @ w^T + b through oneDNN's inner product; `w` plain or packed by `_onednn_pack`."""
    return _onednn_linear(x.contiguous(), w, b, "none", [], "")


def _find_onednn_pack():
    """torch's oneDNN weight packing (`pack(w, rows)` -> w in the layout the linear reads fastest
    for that many rows), or None where it is missing or its product differs."""
    if _onednn_linear is None:
        return None
    try:
        op = torch.ops.mkldnn._reorder_linear_weight
        w, x = torch.arange(24.0).view(6, 4), torch.ones(3, 4)
        return op if torch.equal(_onednn_linear(x, op(w, 3), None, "none", [], ""), F.linear(x, w)) else None
    except (AttributeError, RuntimeError):
        return None


_onednn_pack = _find_onednn_pack()


def _copies_of(product) -> list[torch.Tensor]:
    """The weight copies a product from `_linear` holds (packed or transposed); none when it reads
    the model's own weight."""
    if isinstance(product, _Blocked):
        return [] if product.w_many is product.w else [product.w_many]
    if isinstance(product, _Transposed):
        return [*_copies_of(product.one), product.packed]
    mat2 = product.keywords.get("mat2") if isinstance(product, partial) else None
    return [] if mat2 is None else [mat2]


def _divisor(m: int, lo: int, hi: int) -> int | None:
    """The smallest divisor of m in [lo, hi], or None."""
    return next((d for d in range(lo, hi + 1) if m % d == 0), None)


CHUNK_MIN = 1 << 18  # weights of >= 256K elements (1 MB in fp32, GPT-2's 768 x 768 too) stream from memory
COPY_MAX = 4 << 20  # models of <= 4M parameters (16 MB in fp32, half our L3) decode over transposed copies


def _norm(m: nn.Module):
    """A norm module -> a function (n, C) -> (n, C) computing the same thing with one or two calls."""
    if isinstance(m, LayerNorm):
        return partial(
            torch.layer_norm, normalized_shape=m.weight.shape, weight=m.weight, bias=m.bias, eps=m.eps
        )
    if isinstance(m, RMSNorm):
        w, eps = m.weight, m.eps
        if w.dtype in (torch.float16, torch.bfloat16):  # the module computes in float32; so do we
            return m.forward
        return lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    return lambda x: x


_ACTS = {
    "gelu_tanh": partial(F.gelu, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
}  # C calls, no lambda


class _Layer:
    """One block's weights in decode layout."""

    def __init__(self, blk: nn.Module, activation: str, linear) -> None:
        """`linear(weight, bias)` -> the product function (`_linear` with the decoder's choices)."""
        attn, mlp = blk.attn, blk.mlp
        self.norm1, self.norm2 = _norm(blk.ln1), _norm(blk.ln2)
        self.qkv = linear(attn.qkv.weight, attn.qkv.bias)
        self.proj = linear(attn.proj.weight, attn.proj.bias)
        self.fc = linear(mlp.fc.weight, mlp.fc.bias)
        self.gate = linear(mlp.gate.weight, mlp.gate.bias) if mlp.swiglu else None
        self.act = None if mlp.swiglu else _ACTS.get(activation, mlp.act)
        self.down = linear(mlp.proj.weight, mlp.proj.bias)
        # the qkv product can write into a buffer the decoder keeps views of (an addmm over a copy)
        self.qkv_writes_into = isinstance(self.qkv, partial) and self.qkv.func in (torch.addmm, torch.mm)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        """x (n, C) -> (n, C): proj(act(fc(x))), or proj(silu(gate(x)) * fc(x)) for SwiGLU."""
        if self.gate is not None:
            return self.down(F.silu(self.gate(x)) * self.fc(x))
        return self.down(self.act(self.fc(x)))


class FastDecoder:
    """`step(ids, cache)`: logits (n, V) for one new token per active row of a `SlotKVCache`."""

    def __init__(self, model: nn.Module, *, chunk_min: int = CHUNK_MIN, copy_max: int = COPY_MAX,
                 pack_rows: int = 0, one_row: str | None = None) -> None:
        """`chunk_min`: weights with at least this many elements take the blocked products (tests
        lower it to check the blocked path against the module path on tiny models). `copy_max`: a
        model with at most this many weight elements gets transposed copies of its small weights
        (see `_linear`; tests set 0 to check the plain `F.linear` path). `pack_rows` > 1: the large
        weights also get packed copies for steps of several rows (about that many; see `_Blocked`).
        `one_row`: how large weights run one row ("blocks" or "linear"); default: measured per shape
        on this CPU (`measured_one_row`)."""
        why = unsupported(model)
        if why is not None:
            raise ValueError(f"the decode fast path cannot run this model: {why}; use model.hidden instead")
        self.model = model
        c = model.config
        self.n_head, self.n_kv_head, self.head_dim = c.n_head, c.n_kv_head, c.head_dim
        self.pre_norm, self.positions = c.norm_placement == "pre", c.positions
        # q, k and v as three equal (n, heads, 1, hs) views of one product: every head its own kv head, no RoPE
        self.equal_heads = c.n_kv_head == c.n_head and c.positions != "rope"
        self.tok_emb = model.tok_emb.weight.detach()  # (V, C)
        self.pos_table = self._pos_table(model)  # (block_size, C) or None
        self.rope = self._rope_tables(model) if c.positions == "rope" else None
        transpose = sum(p.numel() for p in model.parameters()) <= copy_max
        self.one_row = self._one_row_choices(model, chunk_min, transpose, one_row)  # shape -> kind

        def linear(w: torch.Tensor, b: torch.Tensor | None):
            kind = self.one_row.get(tuple(w.shape), "blocks")
            return _linear(w, b, chunk_min=chunk_min, transpose=transpose, pack_rows=pack_rows, one_row=kind)

        self.layers = [_Layer(blk, c.activation, linear) for blk in model.blocks]
        self.ln_f = _norm(model.ln_f)
        self.head = linear(model.lm_head.weight, None)
        self._paths = [path.split(".") for path in self._read_paths(model)]
        self._versions = self._fingerprint()
        self._qkv_out: dict[int, tuple[torch.Tensor, ...]] = {}  # rows -> a qkv buffer and its q, k, v views
        products = [self.head] + [f for ly in self.layers for f in (ly.qkv, ly.proj, ly.fc, ly.gate, ly.down)]
        copies = [t for f in products if f is not None for t in _copies_of(f)]
        self.copies_bytes = sum(t.numel() * t.element_size() for t in copies)  # memory beyond the model's

    @staticmethod
    def _one_row_choices(model: nn.Module, chunk_min: int, transpose: bool, one_row: str | None) -> dict:
        """For each shape of weight that takes `_Blocked` (large, no transposed copy) with row blocks to
        choose between: `one_row` when given, else what `measured_one_row` finds faster over the
        model's weights of that shape."""
        if transpose:
            return {}
        groups: dict[tuple, list] = {}
        for m in _linear_modules(model):
            w = m.weight.detach()
            if _streamed(w, chunk_min) and _divisor(w.size(0), 4, 64):
                b = None if m.bias is None else m.bias.detach()
                groups.setdefault(tuple(w.shape), []).append((w, b))
        if one_row is not None:
            return dict.fromkeys(groups, one_row)
        return {shape: measured_one_row(ws) for shape, ws in groups.items()}

    # -- staleness -----------------------------------------------------------------------------------
    @staticmethod
    def _read_paths(model: nn.Module) -> list[str]:
        """The modules whose parameters the decoder reads, by path from the model."""
        per_block = ["ln1", "ln2", "attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"]
        paths = ["tok_emb", "ln_f", "lm_head"] + (["pos_emb"] if model.config.positions == "learned" else [])
        for i, blk in enumerate(model.blocks):
            paths += [f"blocks.{i}.{p}" for p in per_block + (["mlp.gate"] if blk.mlp.swiglu else [])]
        return paths

    def _fingerprint(self) -> list[tuple[int, ...]]:
        """Each read module's identity and its parameters' identity, version and storage: an in-place
        update (optimizer step, load_state_dict), a replaced parameter or a swapped-in module (an
        adapter) each change it. Resolves the paths afresh (~40 look-ups, tens of µs: it runs before
        every admission) instead of walking every module of the model as `parameters()` does."""
        out = []
        for path in self._paths:
            m = self.model
            for name in path:
                m = m._modules[name]
            out.append((id(m),))
            out += [(id(p), p._version, p.data_ptr()) for p in m._parameters.values() if p is not None]
        return out

    def stale(self) -> bool:
        """True when any parameter the decoder reads changed, or its module or itself was replaced,
        since the weights were read."""
        return self._fingerprint() != self._versions

    # -- the step ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, ids: torch.Tensor, cache: SlotKVCache) -> torch.Tensor:
        """ids (n,) long: the newest token of each of the cache's n active rows -> logits (n, V).
        Writes each row's key/value at its length and advances the cache by one."""
        n, lens = cache.n, cache.lens[: cache.n]
        uniform = min(lens) == max(lens)
        tk = max(lens) + 1
        if tk > cache.max_len:
            raise ValueError(f"KV cache full: {tk} positions > max_len {cache.max_len}; build a larger cache")
        pos = lens[0] if uniform else cache.positions()[:, 0]  # an int, or (n,) per-row positions
        x = self._embed(ids, pos)  # (n, C)
        cos_sin = self._rope_at(pos)  # (1 or n, 1, hs) each, or None
        K, V = (
            cache.k[:, :n, :, :tk].unbind(0),
            cache.v[:, :n, :, :tk].unbind(0),
        )  # L x (n, nkv, tk, hs) views
        if uniform:  # every row writes at the same position: plain views, no index, no mask
            at = slice(tk - 1, tk) if self.equal_heads else tk - 1  # (n, nkv, 1, hs) or (n, nkv, hs): k's shape
            k_at, v_at = cache.k[:, :n, :, at].unbind(0), cache.v[:, :n, :, at].unbind(0)
            index = mask = None
        else:
            k_at, v_at = cache.k.unbind(0), cache.v.unbind(0)  # L x (S, nkv, max_len, hs)
            index = cache.write_index()  # (n * nkv,) flat rows of a layer's buffer
            mask = cache.step_mask()  # (n, 1, 1, tk): row b sees j <= lengths[b]
        for layer, K_i, V_i, k_i, v_i in zip(self.layers, K, V, k_at, v_at, strict=True):
            x = self._block(layer, x, K_i, V_i, k_i, v_i, index, mask, cos_sin)
        cache.advance(1)
        return self.head(self.ln_f(x))  # (n, V)

    def _block(self, layer: _Layer, x, K, V, k_at, v_at, index, mask, cos_sin) -> torch.Tensor:
        """One layer for n rows: x (n, C) -> (n, C). K/V (n, nkv, tk, hs) are this layer's cache views;
        the new k/v go to k_at/v_at, or through `index` into the flat buffers when ragged. Every tensor
        call counts here (a small model's step is ~60 of them), hence the two ways of splitting qkv."""
        n, nh, nkv, hs = x.size(0), self.n_head, self.n_kv_head, self.head_dim
        h = layer.norm1(x) if self.pre_norm else x
        if self.equal_heads and layer.qkv_writes_into:  # into a buffer whose q, k, v views already exist
            buf, q, k, v = self._qkv_views(n, h)
            layer.qkv(h, out=buf)
        elif self.equal_heads:  # one view, one unbind: q, k, v each (n, nh, 1, hs), q already sdpa's shape
            q, k, v = layer.qkv(h).view(n, 3, nh, 1, hs).unbind(1)
        else:
            qkv = layer.qkv(h).view(n, nh + 2 * nkv, hs)  # (n, nh + 2 nkv, hs): q heads, k heads, v heads
            if cos_sin is None:
                q, k, v = qkv.split((nh, nkv, nkv), dim=1)
            else:  # rotate q and k in one go: x cos + rotate_half(x) sin
                cos, sin, rot = cos_sin
                qk, v = qkv.split((nh + nkv, nkv), dim=1)
                qk = qk * cos + (qk @ rot) * sin  # (n, nh + nkv, hs)
                q, k = qk.split((nh, nkv), dim=1)
            q = q.view(n, nkv, nh // nkv, hs)  # every query head of a group attends over its kv head's keys
        if index is None:
            k_at.copy_(k)
            v_at.copy_(v)
        else:
            k_at.view(-1, hs).index_copy_(0, index, k.reshape(n * nkv, hs))
            v_at.view(-1, hs).index_copy_(0, index, v.reshape(n * nkv, hs))
        y = F.scaled_dot_product_attention(q, K, V, attn_mask=mask)  # (n, nkv, rep, hs): GQA without repeats
        x = x + layer.proj(y.view(n, nh * hs))  # (n, C)
        if not self.pre_norm:
            x = layer.norm1(x)
        return x + layer.ffn(layer.norm2(x)) if self.pre_norm else layer.norm2(x + layer.ffn(x))

    def _qkv_views(self, n: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A (n, 3 C) buffer for n rows' qkv product and its q, k, v views (n, nh, 1, hs), made once per
        row count and shared by the layers (each layer is done with them before the next writes)."""
        got = self._qkv_out.get(n)
        if got is None:
            nh, hs = self.n_head, self.head_dim
            buf = torch.empty(n, 3 * nh * hs, dtype=like.dtype, device=like.device)
            got = self._qkv_out[n] = (buf, *buf.view(n, 3, nh, 1, hs).unbind(1))
        return got

    # -- positions ---------------------------------------------------------------------------------
    @staticmethod
    def _pos_table(model: nn.Module) -> torch.Tensor | None:
        if model.config.positions == "learned":
            return model.pos_emb.weight.detach()
        if model.config.positions == "sinusoidal":
            return model.pos_table
        return None

    def _embed(self, ids: torch.Tensor, pos: int | torch.Tensor) -> torch.Tensor:
        x = F.embedding(ids, self.tok_emb)  # (n, C), a fresh tensor
        if self.pos_table is not None:
            x.add_(self.pos_table[pos])  # (C,) broadcast or (n, C); in place, cast to x's dtype
        return x

    @staticmethod
    def _rope_tables(model: nn.Module):
        """cos/sin (block_size, hs) from the model's own RoPE (same float64 angles, so same values), and
        the (hs, hs) signed permutation with x @ rot == rotate_half(x)."""
        rope, dtype = model.blocks[0].attn.rope, model.tok_emb.weight.dtype
        device = model.tok_emb.weight.device
        cos, sin = rope.cos_sin(torch.arange(model.config.block_size, device=device), dtype)  # (P, hs)
        hs, half = rope.head_dim, rope.head_dim // 2
        rot = torch.zeros(hs, hs, dtype=dtype, device=device)
        rot[torch.arange(half) + half, torch.arange(half)] = -1.0  # out[:half] = -x[half:]
        rot[torch.arange(half), torch.arange(half) + half] = 1.0  # out[half:] = x[:half]
        return cos, sin, rot

    def _rope_at(self, pos: int | torch.Tensor):
        if self.rope is None:
            return None
        cos, sin, rot = self.rope
        if isinstance(pos, int):
            return cos[pos], sin[pos], rot  # (hs,) broadcast over rows and heads
        return cos[pos][:, None], sin[pos][:, None], rot  # (n, 1, hs)
