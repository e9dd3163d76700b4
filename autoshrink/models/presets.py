"""Built-in model presets: the reference `kjv-lstm` and its quick sibling `kjv-lstm-tiny`."""

from __future__ import annotations

from dataclasses import dataclass, field

from autoshrink.errors import UserError
from autoshrink.models.lstm_lm import LSTMLM, LSTMLMConfig
from autoshrink.models.training import TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    max_words: int  # vocabulary: this many train words + <unk> + <eos>
    emb_dim: int
    hidden: int
    layers: int
    dropout: float
    train: TrainConfig = field(default_factory=TrainConfig)
    default_data: str = "kjv"

    def build(self, vocab_size: int) -> LSTMLM:
        return LSTMLM(LSTMLMConfig(vocab_size, self.emb_dim, self.hidden, self.layers, self.dropout))


PRESETS = {
    # docs/benchmark.md: 2 x 256 LSTM, untied 10,002-word embedding and softmax, 6,183,698 parameters.
    # Dropout 0.4: 6.2M parameters on 846k tokens overfit quickly without it.
    "kjv-lstm": Preset(
        "kjv-lstm",
        10_000,
        256,
        256,
        2,
        0.4,
        TrainConfig(epochs=12, batch_size=32, bptt=35, lr=2e-3, patience=2, schedule="plateau", validate_start=False),
    ),
    # Same architecture, small enough to pretrain in well under a minute on 2 CPU cores.
    "kjv-lstm-tiny": Preset(
        "kjv-lstm-tiny",
        2_000,
        32,
        32,
        2,
        0.1,
        TrainConfig(epochs=0.4, batch_size=64, bptt=35, lr=1e-2, patience=2, schedule="plateau", validate_start=False),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"unknown model {name!r}: use {', '.join(PRESETS)} or a path to a saved model")
    return PRESETS[name]
