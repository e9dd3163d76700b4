"""A user's own nn.LSTM LM through autoshrink: search at whole-model budgets that need the LSTM
compressed, exact bytes of the export, and the latency of the compressed copy against the dense
model at batch 1 (the module keeps running torch's fused LSTM kernel on the built weights).

The user's model is the usual PyTorch LSTM LM (nn.Embedding -> nn.LSTM -> nn.Linear, as in
pytorch/examples word_language_model) carrying the pretrained weights of the reference `kjv-lstm`
(the same gates in torch's order, so the same outputs).

    python -m autoshrink.bench.torch_modules [--budgets 10x 25x] [--trials 4] [--finetune-steps 20]
        [--final-steps 20] [--rounds 5] [--run-root results/runs/torch_modules] [--out results/torch_modules.md]

Searches are resumed from their run folders; only the latency is measured afresh.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from autoshrink.bench.report import commit, write_report
from autoshrink.data import load_lm_data
from autoshrink.final.export import export_tensors
from autoshrink.final.train import choose_trial, train_plan
from autoshrink.measure.latency import measure_latency_ms, reference_input
from autoshrink.models.adapter import adapt
from autoshrink.models.discover import discover_sites
from autoshrink.models.load import load
from autoshrink.methods import tensors_bytes
from autoshrink.plan import ModelFile, compress, parse_plan, plan_stored_bytes, stored_bytes
from autoshrink.search.config import SearchConfig
from autoshrink.search.controller import search


class WordLSTM(nn.Module):
    """A PyTorch LSTM LM as users write it: forward(input (T, B), hidden) -> (log-probs (T*B, V), hidden)."""

    def __init__(self, ntoken: int, ninp: int = 256, nhid: int = 256, nlayers: int = 2, dropout: float = 0.25):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.ntoken, self.nhid, self.nlayers = ntoken, nhid, nlayers

    def forward(self, input, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(input)), hidden)
        decoded = self.decoder(self.drop(output)).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))

    @classmethod
    def from_reference(cls, ref: nn.Module) -> "WordLSTM":
        """The reference LSTMLM's weights in an nn.LSTM (its layers' ih/hh Linears are torch's gates)."""
        c = ref.config
        model = cls(c.vocab_size, c.emb_dim, c.hidden, c.layers, c.dropout)
        with torch.no_grad():
            model.encoder.weight.copy_(ref.encoder.weight)
            model.decoder.weight.copy_(ref.decoder.weight)
            model.decoder.bias.copy_(ref.decoder.bias)
            for k, layer in enumerate(ref.rnn):
                getattr(model.rnn, f"weight_ih_l{k}").copy_(layer.ih.weight)
                getattr(model.rnn, f"weight_hh_l{k}").copy_(layer.hh.weight)
                getattr(model.rnn, f"bias_ih_l{k}").copy_(layer.ih.bias)
                getattr(model.rnn, f"bias_hh_l{k}").copy_(layer.hh.bias)
        return model.eval()


def interleaved_ms(models: dict[str, nn.Module], ids: torch.Tensor, rounds: int, repeats: int) -> dict[str, float]:
    """Median over rounds of each model's median forward time, the models taking turns in every
    round (a shared machine's load then weighs on all of them alike)."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name].append(measure_latency_ms(model, ids, repeats=repeats, warmup=5))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", nargs="+", default=["10x", "25x"])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--finetune-steps", type=int, default=20)
    p.add_argument("--final-steps", type=int, default=20, help="training of the best plan before its export")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    p.add_argument("--run-root", default="results/runs/torch_modules")
    p.add_argument("--out", default="results/torch_modules.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    ref = load("kjv-lstm", device="cpu")
    user = WordLSTM.from_reference(ref)
    data = load_lm_data("kjv", vocab=ref.vocab)
    dense = adapt(user, data.vocab).eval()
    ids = reference_input(len(data.vocab))
    with torch.no_grad():
        same = (dense(ids)[0] - F.log_softmax(ref.eval()(ids)[0], -1)).abs().max().item()
    sites = discover_sites(dense)
    lstm_sites = [s.name for s in sites if s.role == "recurrent"]
    rows = []
    for budget in args.budgets:
        run_dir = Path(args.run_root) / budget
        result = search(
            SearchConfig(
                budget, model=user, data="kjv", trials=args.trials, finetune_steps=args.finetune_steps, run_dir=run_dir
            )
        )
        number, plan_json = choose_trial(result.run_dir, "best")
        out = run_dir / "final"
        final = train_plan(
            dense,
            data,
            plan_json,
            out,
            args.final_steps,
            label=number,
            corpus="kjv",
            device="cpu",
            info={"run_dir": str(run_dir), "trial": number},
        )
        analytic = plan_stored_bytes(sites, parse_plan(plan_json), data.vocab.freqs, ModelFile.of(dense, sites))
        loaded = load(str(out), model=WordLSTM(len(data.vocab)))
        rows.append(
            {
                "budget": budget,
                "trial": number,
                "plan": plan_json,
                "analytic": analytic,
                "model": stored_bytes(final.model),
                "loaded": stored_bytes(loaded),
                "tensors": tensors_bytes(export_tensors(loaded)),
                "file": os.path.getsize(out / "model.safetensors"),
                "ratio": final.metrics["ratio"],
                "test_ppl": final.metrics["test_ppl"],
                "model_obj": loaded,
                "lstm_methods": sorted({plan_json[n]["method"] for n in lstm_sites if n in plan_json}),
                "lstm_compressed": all(n in plan_json for n in lstm_sites),
            }
        )
    same_shapes = compress(dense, {s.name: {"method": "quant", "bits": 8} for s in sites}).eval()
    models = {
        "dense nn.LSTM LM": dense,
        "reference LSTMLM (autoshrink's own)": ref.eval(),
        "8-bit quant on every site (same shapes)": same_shapes,
    }
    models.update({f"best plan at {r['budget']} (loaded export)": r["model_obj"].eval() for r in rows})
    latency = interleaved_ms(models, ids, args.rounds, args.repeats)
    base = latency["dense nn.LSTM LM"]
    lines = [
        "## A user's own nn.LSTM LM (issue 18)",
        "",
        f"{time.strftime('%Y-%m-%d')}, CPU ({platform.machine()}, {torch.get_num_threads()} thread(s), machine shared "
        f"with other jobs), commit {commit()}, torch {torch.__version__}:",
        f"`python -m autoshrink.bench.torch_modules --budgets {' '.join(args.budgets)} --trials {args.trials} "
        f"--finetune-steps {args.finetune_steps} --final-steps {args.final_steps} --rounds {args.rounds}` "
        f"({(time.perf_counter() - started) / 60:.0f} min).",
        "",
        "The model: `WordLSTM` (nn.Embedding -> nn.LSTM(256, 256, 2) -> nn.Linear, log-softmax outputs flattened "
        "to (T*B, V), a required hidden state with init_hidden) holding the pretrained `kjv-lstm` weights; "
        f"its log-probabilities equal the reference model's to {same:.1e}. `adapt` found "
        f"`{dense.conventions}`. Sites: {', '.join(s.name for s in sites)}.",
        "",
        "### Search at budgets that need the LSTM compressed",
        "",
        f"The LSTM matrices alone are {sum(s.dense_bytes for s in sites if s.role == 'recurrent'):,} bytes in "
        f"fp32, more than the whole model may hold at 10x ({stored_bytes(dense) // 10:,}). Each search: "
        f"{args.trials} trials of {args.finetune_steps} fine-tuning steps (default space, warm start); its best "
        f"front plan then trained {args.final_steps} steps and exported.",
        "",
        "| budget | best trial | LSTM compressed (methods) | ratio | test ppl | analytic bytes | model bytes | "
        "export tensor bytes | loaded bytes | model.safetensors size |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['budget']} | {r['trial']} | {'yes' if r['lstm_compressed'] else 'NO'} "
            f"({', '.join(r['lstm_methods'])}) | {r['ratio']:.1f}x | {r['test_ppl']:.1f} | {r['analytic']:,} | "
            f"{r['model']:,} | {r['tensors']:,} | {r['loaded']:,} | {r['file']:,} |"
        )
    lines += ["", "Plans:", ""] + [f"- {r['budget']}: `{json.dumps(r['plan'], sort_keys=True)}`" for r in rows]
    lines += [
        "",
        "### Latency at batch 1",
        "",
        f"One forward pass of 35 tokens at batch 1 (`measure_latency_ms`, median of {args.repeats}), the "
        f"models taking turns over {args.rounds} rounds; median over rounds.",
        "",
        "| model | ms | / dense |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {ms:.3f} | {ms / base:.2f} |" for name, ms in latency.items()]
    write_report(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
