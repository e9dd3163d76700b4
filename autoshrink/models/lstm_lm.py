"""The reference LSTM language model (docs/benchmark.md): embedding -> stacked LSTM -> softmax.

Each LSTM layer keeps its input-to-hidden and hidden-to-hidden matrices as separate modules
(`rnn.<k>.ih`, `rnn.<k>.hh`), so a plan can replace either with a compressed module. Gate order
i, f, g, o as in torch.nn.LSTM.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from autoshrink.sites import Site

State = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class LSTMLMConfig:
    vocab_size: int
    emb_dim: int = 256
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.25  # on embeddings, between layers and before the softmax (Zaremba-style)

    def to_dict(self) -> dict:
        return asdict(self)


class LSTMLayer(nn.Module):
    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.ih = nn.Linear(input_size, 4 * hidden)
        self.hh = nn.Linear(hidden, 4 * hidden)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        ih, hh = _sequence_parameters(self.ih), _sequence_parameters(self.hh)
        if ih is not None and hh is not None:
            # torch's fused kernel, as nn.LSTM uses; ~10x faster on a CPU than the step loop.
            # A compressed matrix is built once per sequence for it (dense_parameters).
            h0, c0 = state
            out, h, c = torch.lstm(
                x,
                (h0.unsqueeze(0), c0.unsqueeze(0)),
                [ih[0], hh[0], ih[1], hh[1]],
                True,
                1,
                0.0,
                self.training,
                False,
                False,
            )
            return out, (h.squeeze(0), c.squeeze(0))
        gates_x = self.ih(x)  # any other module: one product for all steps, then step by step
        h, c = state
        outputs = []
        for t in range(x.size(0)):
            i, f, g, o = (gates_x[t] + self.hh(h)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs), (h, c)


def _sequence_parameters(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(W, b) of a Linear, or of a compressed module that builds them (`dense_parameters`)."""
    if type(module) is nn.Linear:
        return module.weight, module.bias
    build = getattr(module, "dense_parameters", None)
    return build() if build is not None else None


class LSTMLM(nn.Module):
    """forward(ids (T, B), state) -> (logits (T, B, V), state)."""

    def __init__(self, config: LSTMLMConfig):
        super().__init__()
        self.config = config
        self.encoder = nn.Embedding(config.vocab_size, config.emb_dim)
        sizes = [config.emb_dim] + [config.hidden] * config.layers
        self.rnn = nn.ModuleList(LSTMLayer(sizes[k], config.hidden) for k in range(config.layers))
        self.drop = nn.Dropout(config.dropout)
        self.decoder = nn.Linear(config.hidden, config.vocab_size)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        for layer in self.rnn:
            bound = layer.hidden**-0.5
            for lin in (layer.ih, layer.hh):
                nn.init.uniform_(lin.weight, -bound, bound)
                nn.init.zeros_(lin.bias)
            with torch.no_grad():  # forget-gate bias 1: remember by default early in training
                layer.ih.bias[layer.hidden : 2 * layer.hidden] = 1.0

    def init_state(self, batch_size: int, device=None) -> State:
        z = torch.zeros(batch_size, self.config.hidden, device=device)
        return [(z, z) for _ in self.rnn]

    def forward(self, ids: torch.Tensor, state: State | None = None):
        if state is None:
            state = self.init_state(ids.size(1), ids.device)
        x = self.drop(self.encoder(ids))
        new_state = []
        for layer, s in zip(self.rnn, state):
            x, s = layer(x, s)
            x = self.drop(x)
            new_state.append(s)
        return self.decoder(x), new_state

    def autoshrink_sites(self) -> list[Site]:
        """Embedding, each layer's ih and hh (recurrent), softmax: the sites of docs/design.md.

        Sites already compressed are not sites any more."""
        c = self.config
        sites = [Site("encoder", "embedding", (c.vocab_size, c.emb_dim))]
        for k in range(c.layers):
            n_in = c.emb_dim if k == 0 else c.hidden  # from the config: a compressed ih has no in_features
            sites.append(Site(f"rnn.{k}.ih", "recurrent", (4 * c.hidden, n_in), bias=True))
            sites.append(Site(f"rnn.{k}.hh", "recurrent", (4 * c.hidden, c.hidden), bias=True))
        sites.append(Site("decoder", "softmax", (c.vocab_size, c.hidden), bias=True))
        return [s for s in sites if isinstance(self.get_submodule(s.name), (nn.Linear, nn.Embedding))]
