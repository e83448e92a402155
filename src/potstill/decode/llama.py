"""The decoder's fast path: Llama-family models (Llama, Qwen2, Mistral) run over a preallocated KV cache.

    runner = LlamaRunner.build(model, slots=64, max_len=512)       # None when the model is another family
    logits = runner.prefill(ids, lens, slots)     # right-padded prompts into the given cache slots -> last logits
    logits = runner.step(tokens, pos, width)      # one token for each of the first ``width`` slots, at ``pos``

The model's own weights (q/k/v, their rotated copies and gate/up fused into one matrix each, so a layer is 4
matrix products; models over FUSED_LIMIT take the generic loop rather than hold a second copy) and its own
rotary table; keys and values are written in place into ``[layers, slots, kv_heads, max_len, head_dim]``
buffers, so no step copies the cache (``model.generate``'s dynamic cache concatenates it every step). The maths
is the Hugging Face modules' (RMSNorm in fp32, rotary, softmax in fp32), so greedy outputs match ``generate``
except on near-ties.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

FAMILIES = ("llama", "qwen2", "mistral")
FUSED_LIMIT = 1 << 30  # the fast path keeps fused copies of the projections: only for models up to 1 GiB
STATIC_ROPE = ("default", "linear", "llama3", "yarn")


@dataclass
class _Layer:
    ln1: torch.Tensor
    ln2: torch.Tensor
    wqkv: torch.Tensor  # rows: q, k, v, then q and k with rotate_half folded in (see _rotated)
    bqkv: torch.Tensor | None
    wo_t: torch.Tensor  # o_proj's weight, transposed (a view): x + o @ wo_t in one addmm
    bo: torch.Tensor | None
    wgu: torch.Tensor
    wdown_t: torch.Tensor


def _rope_type(cfg: Any) -> str:
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    return str(params.get("rope_type") or params.get("type") or "default")


def supported(model: Any, max_len: int) -> bool:
    """Whether the fast path reproduces ``model``'s forward exactly (else the caller uses the generic loop)."""
    cfg = getattr(model, "config", None)
    inner = getattr(model, "model", None)
    if cfg is None or inner is None or getattr(cfg, "model_type", None) not in FAMILIES:
        return False
    if not type(model).__name__.endswith("ForCausalLM") or getattr(cfg, "hidden_act", "silu") != "silu":
        return False
    if _rope_type(cfg) not in STATIC_ROPE or getattr(inner, "rotary_emb", None) is None:
        return False
    if sum(t.numel() * t.element_size() for t in model.parameters()) > FUSED_LIMIT:
        return False  # larger models are bound by their matrix products, not by the loop: the generic path
    window = getattr(cfg, "sliding_window", None)
    if window is not None and getattr(cfg, "use_sliding_window", True) and max_len > int(window):
        return False
    layer = inner.layers[0]
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    need = [(attn, "q_proj"), (attn, "k_proj"), (attn, "v_proj"), (attn, "o_proj")]
    need += [(mlp, "gate_proj"), (mlp, "up_proj"), (mlp, "down_proj")]
    return all(isinstance(getattr(m, n, None), torch.nn.Linear) for m, n in need) and not hasattr(attn, "q_norm")


def _rotated(w: torch.Tensor, heads: int, d: int) -> torch.Tensor:
    """Rows (or bias entries) that give rotate_half(x @ w.T) directly: per head, the second half negated, then
    the first. Rotary embedding is then ``qk * cos + qk_rot * sin``: two operations instead of six."""
    per = w.reshape(heads, d, *w.shape[1:])
    half = d // 2
    return torch.cat([-per[:, half:], per[:, :half]], dim=1).reshape(w.shape)


class LlamaRunner:
    def __init__(self, model: Any, slots: int, max_len: int) -> None:
        cfg, inner = model.config, model.model
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        nh = self.nh = int(cfg.num_attention_heads)
        nkv = self.nkv = int(getattr(cfg, "num_key_value_heads", None) or nh)
        d = self.d = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // nh)
        self.eps = float(cfg.rms_norm_eps)
        self.hidden = int(cfg.hidden_size)
        scale = float(getattr(inner.layers[0].self_attn, "scaling", d**-0.5))
        self.embed = inner.embed_tokens.weight
        self.norm = inner.norm.weight
        self.head = model.lm_head.weight
        self.head_bias = getattr(model.lm_head, "bias", None)
        self.layers: list[_Layer] = []
        with torch.no_grad():
            for layer in inner.layers:
                a, m = layer.self_attn, layer.mlp
                q, k, v = a.q_proj, a.k_proj, a.v_proj
                w = [q.weight, k.weight, v.weight, _rotated(q.weight, nh, d), _rotated(k.weight, nkv, d)]
                bias = None
                if q.bias is not None and k.bias is not None and v.bias is not None:
                    bias = torch.cat([q.bias, k.bias, v.bias, _rotated(q.bias, nh, d), _rotated(k.bias, nkv, d)])
                self.layers.append(
                    _Layer(
                        ln1=layer.input_layernorm.weight,
                        ln2=layer.post_attention_layernorm.weight,
                        wqkv=torch.cat(w),
                        bqkv=bias,
                        wo_t=a.o_proj.weight.t(),
                        bo=a.o_proj.bias,
                        wgu=torch.cat([m.gate_proj.weight, m.up_proj.weight]),
                        wdown_t=m.down_proj.weight.t(),
                    )
                )
            positions = torch.arange(max_len, device=self.device)[None]
            probe = torch.zeros(1, dtype=self.dtype, device=self.device)
            cos, sin = inner.rotary_emb(probe, positions)
            # per head: the query heads carry the attention scale, so scores need no extra multiplication
            head_scale = torch.tensor([scale] * nh + [1.0] * nkv, dtype=self.dtype, device=self.device)
            self.cos = cos[0][:, None, :] * head_scale[None, :, None]  # [max_len, nh + nkv, d]
            self.sin = sin[0][:, None, :] * head_scale[None, :, None]
        self.slots, self.max_len = slots, max_len
        shape = (len(self.layers), slots, nkv, max_len, d)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.heads = torch.arange(nkv, device=self.device)[None]
        self.prefix: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def build(cls, model: Any, slots: int, max_len: int) -> LlamaRunner | None:
        return cls(model, slots, max_len) if supported(model, max_len) else None

    def fits(self, slots: int, max_len: int) -> bool:
        return slots <= self.slots and max_len <= self.max_len

    def _split(self, x: torch.Tensor, ly: _Layer, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Norm, one projection, rotary: (q [.., nh, d] scaled, k [.., nkv, d], v [.., nkv, d])."""
        qkv = F.linear(F.rms_norm(x, (self.hidden,), ly.ln1, self.eps), ly.wqkv, ly.bqkv)
        lead = qkv.shape[:-1]
        nqk = (self.nh + self.nkv) * self.d
        qk = qkv[..., :nqk].view(*lead, self.nh + self.nkv, self.d)
        v = qkv[..., nqk : nqk + self.nkv * self.d].view(*lead, self.nkv, self.d)
        rot = qkv[..., nqk + self.nkv * self.d :].view(*lead, self.nh + self.nkv, self.d)
        qk = torch.addcmul(qk * cos, rot, sin)
        return qk[..., : self.nh, :], qk[..., self.nh :, :], v

    def _mlp(self, x: torch.Tensor, ly: _Layer) -> torch.Tensor:
        """x + the feed-forward block."""
        gate, up = F.linear(F.rms_norm(x, (self.hidden,), ly.ln2, self.eps), ly.wgu).chunk(2, dim=-1)
        h = F.silu(gate) * up
        if h.dim() == 2:
            return torch.addmm(x, h, ly.wdown_t)
        return x + h @ ly.wdown_t

    def _out(self, x: torch.Tensor, o: torch.Tensor, ly: _Layer) -> torch.Tensor:
        """x + the attention output projection."""
        if ly.bo is None and o.dim() == 2:
            return torch.addmm(x, o, ly.wo_t)
        return x + F.linear(o, ly.wo_t.t(), ly.bo)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.rms_norm(x, (self.hidden,), self.norm, self.eps), self.head, self.head_bias)

    # ------------------------------------------------------------------------------------------ prefill
    def set_prefix(self, ids: list[int]) -> int:
        """Compute once the keys and values of a prompt prefix that every coming request shares (a system prompt,
        few-shot examples); ``prefill`` then runs only the rest of each prompt. Returns the prefix length."""
        self.prefix = None
        t = len(ids)
        if t == 0:
            return 0
        x = F.embedding(torch.tensor([ids], device=self.device), self.embed)
        cos, sin = self.cos[:t][None], self.sin[:t][None]
        keys, values = [], []
        for ly in self.layers:
            q, k, v = (z.transpose(1, 2) for z in self._split(x, ly, cos, sin))
            keys.append(k[0])
            values.append(v[0])
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0, enable_gqa=self.nkv != self.nh)
            x = self._mlp(self._out(x, o.transpose(1, 2).reshape(1, t, self.nh * self.d), ly), ly)
        self.prefix = (torch.stack(keys), torch.stack(values))  # [layers, nkv, t, d]
        return t

    def prefill(
        self, ids: torch.Tensor, lens: torch.Tensor, slots: torch.Tensor, after_prefix: bool = False
    ) -> torch.Tensor:
        """Run right-padded prompts ``ids`` [n, T] (true lengths ``lens``), writing their keys and values into
        cache ``slots`` from position 0; with ``after_prefix`` the prompts continue the last set_prefix() and the
        prefix goes into the slots first. Returns the logits at each prompt's last token [n, vocab]."""
        n, t = ids.shape
        prefix = self.prefix if after_prefix else None
        p = 0 if prefix is None else prefix[0].shape[2]
        x = F.embedding(ids, self.embed)
        cos, sin = self.cos[p : p + t][None], self.sin[p : p + t][None]  # [1, t, heads, d]
        see = torch.ones(t, p + t, dtype=torch.bool, device=x.device).tril(diagonal=p) if p else None
        for i, ly in enumerate(self.layers):
            q, k, v = self._split(x, ly, cos, sin)  # [n, t, heads, d]
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            self.k[i][slots, :, p : p + t] = k
            self.v[i][slots, :, p : p + t] = v
            if prefix is not None:
                self.k[i][slots, :, :p] = prefix[0][i]
                self.v[i][slots, :, :p] = prefix[1][i]
                k = torch.cat([prefix[0][i].expand(n, -1, -1, -1), k], dim=2)
                v = torch.cat([prefix[1][i].expand(n, -1, -1, -1), v], dim=2)
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=see, is_causal=see is None, scale=1.0, enable_gqa=self.nkv != self.nh
            )  # right padding: a real token never sees a pad, and pads' outputs are never read
            x = self._out(x, o.transpose(1, 2).reshape(n, t, self.nh * self.d), ly)
            x = self._mlp(x, ly)
        last = x[torch.arange(n, device=x.device), lens - 1]
        return self._logits(last)

    # ------------------------------------------------------------------------------------------ decode
    def step(self, tokens: torch.Tensor, pos: torch.Tensor, width: int, span: int) -> torch.Tensor:
        """One new token for each of slots 0..width-1 (``tokens``, ``pos`` [width]: where it goes; ``span``:
        max(pos) + 1); every slot's cache up to its ``pos`` is attended. Returns the next-token logits."""
        x = F.embedding(tokens, self.embed)  # [w, H]
        cos, sin = self.cos[pos], self.sin[pos]  # [w, heads, d]
        hide = torch.arange(span, device=x.device)[None] > pos[:, None]  # [w, span]: beyond each slot's end
        mask = torch.zeros(hide.shape, dtype=torch.float32, device=x.device).masked_fill_(hide, float("-inf"))
        mask = mask[:, None, None]  # [w, 1, 1, span]
        where = (torch.arange(width, device=x.device)[:, None], self.heads, pos[:, None])
        g = self.nh // self.nkv
        for i, ly in enumerate(self.layers):
            q, k, v = self._split(x, ly, cos, sin)
            self.k[i].index_put_(where, k)
            self.v[i].index_put_(where, v)
            keys, values = self.k[i][:width, :, :span], self.v[i][:width, :, :span]  # views: nothing is copied
            att = torch.matmul(q.reshape(width, self.nkv, g, self.d), keys.transpose(-1, -2))
            att = torch.softmax(att.float() + mask, dim=-1).to(x.dtype)
            o = torch.matmul(att, values)  # [w, nkv, g, d]
            x = self._out(x, o.reshape(width, self.nh * self.d), ly)
            x = self._mlp(x, ly)
        return self._logits(x)

    def move(self, src: torch.Tensor, dst: torch.Tensor, upto: int) -> None:
        """Copy slots ``src`` to ``dst`` (positions < ``upto``): compacts the live rows to the front."""
        self.k[:, dst, :, :upto] = self.k[:, src, :, :upto]
        self.v[:, dst, :, :upto] = self.v[:, src, :, :upto]
