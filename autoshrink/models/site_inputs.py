"""The inputs of in-place sites, for calibration (data-aware initialisation collects each site's
input second moment).

A module site's input is what a forward hook on that module sees (`args[0]`). The matrices of
nn.LSTM / nn.GRU / nn.RNN and nn.MultiheadAttention are multiplied inside fused kernels, so no
hook sees their inputs; a hook on the owning module sees the module's input and output, and these
functions replay the module from them:

    def hook(module, args, kwargs, output):          # register_forward_hook(hook, with_kwargs=True)
        if isinstance(module, nn.RNNBase):
            rows = recurrent_inputs(module, *args)
        else:                                        # nn.MultiheadAttention
            rows = attention_inputs(module, *args, **kwargs)
        for tensor_name, x in rows.items():          # site name: f"{module_name}.{tensor_name}"
            ...                                      # x: (N, in) rows that W (out, in) multiplies

nn.RNNBase: `weight_ih_l{k}` multiplies layer k's input sequence (the embeddings for k = 0, the
previous layer's outputs, both directions concatenated, above); `weight_hh_l{k}` the state h_{t-1}
of that layer and direction (h0 at t = 0, then the layer's own outputs shifted by one step, in the
direction's time order); `weight_hr_l{k}` (proj_size) the unprojected o_t * tanh(c_t). The replay
is a step loop in the module's own gate equations (calibration runs a few windows once).
nn.MultiheadAttention: the input projections multiply query, key and value (`in_proj_weight`:
all three, as one self-attention input when they are the same tensor), `out_proj` the attention
output before it, replayed with an identity output projection. A hook on a module disables the
fused fast path of nn.TransformerEncoderLayer, so its `linear1`/`linear2` are then called as
modules and plain hooks on them see their inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _gates(mode: str, x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr):
    """One step of torch's recurrent cells: (h_t, c_t, the input of weight_hr or None)."""
    gi, gh = F.linear(x, w_ih, b_ih), F.linear(h, w_hh, b_hh)
    if mode == "LSTM":
        i, f, g, o = (gi + gh).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        full = torch.sigmoid(o) * torch.tanh(c)
        return (F.linear(full, w_hr) if w_hr is not None else full), c, full
    if mode == "GRU":
        (ri, zi, ni), (rh, zh, nh) = gi.chunk(3, -1), gh.chunk(3, -1)
        r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
        n = torch.tanh(ni + r * nh)
        return (1 - z) * n + z * h, None, None
    act = torch.tanh if mode == "RNN_TANH" else torch.relu
    return act(gi + gh), None, None


@torch.no_grad()
def recurrent_inputs(rnn: nn.RNNBase, input: torch.Tensor, hx=None) -> dict[str, torch.Tensor]:
    """{weight name: (N, in) rows it multiplies} of an nn.LSTM / nn.GRU / nn.RNN run on `input`
    (the module's forward arguments; packed sequences are not supported)."""
    if isinstance(input, nn.utils.rnn.PackedSequence):
        raise TypeError("recurrent_inputs: packed sequences are not supported")
    x = input.transpose(0, 1) if rnn.batch_first else input
    if x.dim() == 2:
        x = x.unsqueeze(1)
    steps, batch = x.shape[:2]
    dirs = 2 if rnn.bidirectional else 1
    out_size = rnn.proj_size or rnn.hidden_size
    h0 = hx[0] if isinstance(hx, tuple) else hx
    c0 = hx[1] if isinstance(hx, tuple) else None
    zeros = x.new_zeros(rnn.num_layers * dirs, batch, out_size)
    h0 = zeros if h0 is None else h0.reshape(rnn.num_layers * dirs, batch, out_size)
    cells = x.new_zeros(rnn.num_layers * dirs, batch, rnn.hidden_size)
    c0 = cells if c0 is None else c0.reshape(cells.shape)
    rows: dict[str, torch.Tensor] = {}
    layer_in = x
    for k in range(rnn.num_layers):
        outputs = []
        for d in range(dirs):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            w = {n: getattr(rnn, n + sfx, None) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")}
            h, c = h0[k * dirs + d], c0[k * dirs + d]
            order = range(steps - 1, -1, -1) if d else range(steps)
            hs, prev, full = [None] * steps, [], []
            for t in order:
                prev.append(h)
                h, c, unprojected = _gates(
                    rnn.mode,
                    layer_in[t],
                    h,
                    c,
                    w["weight_ih"],
                    w["weight_hh"],
                    w["bias_ih"],
                    w["bias_hh"],
                    w["weight_hr"],
                )
                hs[t] = h
                if unprojected is not None:
                    full.append(unprojected)
            rows[f"weight_ih{sfx}"] = layer_in.reshape(-1, layer_in.shape[-1])
            rows[f"weight_hh{sfx}"] = torch.stack(prev).reshape(-1, out_size)
            if w["weight_hr"] is not None:
                rows[f"weight_hr{sfx}"] = torch.stack(full).reshape(-1, rnn.hidden_size)
            outputs.append(torch.stack(hs))
        layer_in = torch.cat(outputs, -1)
    return rows


@torch.no_grad()
def attention_inputs(
    mha: nn.MultiheadAttention,
    query,
    key,
    value,
    key_padding_mask=None,
    need_weights=True,
    attn_mask=None,
    average_attn_weights=True,
    is_causal=False,
) -> dict[str, torch.Tensor]:
    """{site tensor: (N, in) rows it multiplies} of an nn.MultiheadAttention called with these
    arguments: the projections' inputs, and `out_proj` (under the site name `out_proj`) the
    attention output that enters it."""
    q, k, v = (t.transpose(0, 1) if mha.batch_first else t for t in (query, key, value))
    if mha._qkv_same_embed_dim:
        same = query is key and key is value
        rows = {
            "in_proj_weight": q.reshape(-1, q.shape[-1])
            if same
            else torch.cat([t.reshape(-1, t.shape[-1]) for t in (q, k, v)])
        }
    else:
        rows = {f"{n}_proj_weight": t.reshape(-1, t.shape[-1]) for n, t in zip("qkv", (q, k, v))}
    eye = torch.eye(mha.embed_dim, dtype=q.dtype, device=q.device)
    context, _ = F.multi_head_attention_forward(
        q,
        k,
        v,
        mha.embed_dim,
        mha.num_heads,
        mha.in_proj_weight,
        mha.in_proj_bias,
        mha.bias_k,
        mha.bias_v,
        mha.add_zero_attn,
        0.0,
        eye,
        None,
        training=False,
        key_padding_mask=key_padding_mask,
        need_weights=False,
        attn_mask=attn_mask,
        use_separate_proj_weight=not mha._qkv_same_embed_dim,
        q_proj_weight=mha.q_proj_weight,
        k_proj_weight=mha.k_proj_weight,
        v_proj_weight=mha.v_proj_weight,
        is_causal=is_causal,
    )
    rows["out_proj"] = context.reshape(-1, mha.embed_dim)
    return rows
