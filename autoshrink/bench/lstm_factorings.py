"""Is one low-rank factorisation per LSTM matrix the right structure for the LSTM layers at 25x?
Untrained, at equal parameters (fp32, no quantisation), the search's structure against ones that
share factors across sites or split a site:

- separate: each of rnn.{0,1}.{ih,hh} (1024 x 256) at rank r, as the search plans it;
- joint [ih hh]: per layer one factorisation of the two matrices side by side (they add into the
  same gates), sharing the 1024-row factor;
- shared h0 basis: rnn.0.hh and rnn.1.ih both read layer 0's output, so one input basis for both;
- per gate: each of the four gate blocks (256 x 256) its own factorisation, ranks equal or chosen
  greedily by the whitened singular values.

Every factorisation is data-aware as the low-rank method's (SVD-LLM: truncated SVD of W L, L the
Cholesky factor of the input covariance over 20,000 training tokens), measured on the allocation's
held-out validation slice (4,000 tokens after the trials' 12,000).

    python -m autoshrink.bench.lstm_factorings [--ranks 52 40 30] [--out results/lstm_factorings.md]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time

import torch

from autoshrink.bench.report import commit, write_report

GATES = 4  # an LSTM matrix is 4 gate blocks of `hidden` rows


def whitened_lowrank(weight: torch.Tensor, cov: torch.Tensor, rank: int) -> torch.Tensor:
    """The rank-`rank` W' minimising ||(W - W') L|| with L L^T = cov (the low-rank method's data-aware init)."""
    eye = torch.eye(cov.size(0), dtype=cov.dtype)
    chol = torch.linalg.cholesky(cov + 1e-5 * cov.diagonal().mean() * eye)
    u, s, vh = torch.linalg.svd(weight @ chol, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank] @ torch.linalg.inv(chol)


def input_covariances(model, ids: torch.Tensor) -> dict[tuple[int, str], torch.Tensor]:
    """Per layer, the covariance of what its ih and hh matrices read (the layer's input, its output)."""
    from autoshrink.models.training import evaluate_perplexity

    seen: dict[int, list] = {}
    hooks = [
        layer.register_forward_hook(lambda m, args, out, i=i: seen.setdefault(i, []).append((args[0], out[0])))
        for i, layer in enumerate(model.rnn)
    ]
    evaluate_perplexity(model, ids)
    for h in hooks:
        h.remove()
    cov = {}
    for i, pairs in seen.items():
        x = torch.cat([a.reshape(-1, a.size(-1)) for a, _ in pairs])
        h = torch.cat([b.reshape(-1, b.size(-1)) for _, b in pairs])
        both = torch.cat([x, h], 1)
        cov[(i, "ih")], cov[(i, "hh")], cov[(i, "cat")] = (t.T @ t / len(t) for t in (x, h, both))
    return cov


def greedy_gate_ranks(weight: torch.Tensor, cov: torch.Tensor, total: int) -> list[int]:
    """Ranks per gate block, `total` in all, each next one where the whitened spectrum is largest."""
    chol = torch.linalg.cholesky(cov + 1e-5 * cov.diagonal().mean() * torch.eye(cov.size(0)))
    spectra = [torch.linalg.svdvals(block @ chol) for block in weight.chunk(GATES)]
    ranks = [0] * GATES
    for _ in range(total):
        g = max(range(GATES), key=lambda g: spectra[g][ranks[g]].item())
        ranks[g] += 1
    return ranks


def variants(weights: dict, cov: dict, r: int) -> dict[str, tuple[dict, int]]:
    """{name: ({(layer, ih|hh): W'}, parameters)} at the parameters of rank r per matrix: `weights`
    {(layer, "ih"|"hh"): W} of a 2-layer LSTM whose input and hidden sizes are equal."""
    hidden = weights[(0, "hh")].shape[1]
    n_sep = 4 * (GATES * hidden + hidden) * r
    sep = {k: whitened_lowrank(w, cov[k], r) for k, w in weights.items()}
    joint_rank = n_sep // (2 * (GATES * hidden + 2 * hidden))
    joint = {}
    for i in range(2):
        both = whitened_lowrank(torch.cat([weights[(i, "ih")], weights[(i, "hh")]], 1), cov[(i, "cat")], joint_rank)
        joint[(i, "ih")], joint[(i, "hh")] = both[:, :hidden], both[:, hidden:]
    shared_rank = (n_sep // 2) // (2 * GATES * hidden + hidden)
    stacked = whitened_lowrank(torch.cat([weights[(0, "hh")], weights[(1, "ih")]], 0), cov[(0, "hh")], shared_rank)
    shared = {
        (0, "ih"): sep[(0, "ih")],
        (1, "hh"): sep[(1, "hh")],
        (0, "hh"): stacked[: GATES * hidden],
        (1, "ih"): stacked[GATES * hidden :],
    }
    gate_total = n_sep // 4 // (2 * hidden)
    equal = {k: [gate_total // GATES] * GATES for k in weights}
    greedy = {k: greedy_gate_ranks(w, cov[k], gate_total) for k, w in weights.items()}

    def per_gate(ranks: dict) -> dict:
        return {
            k: torch.cat([whitened_lowrank(b, cov[k], rk) for b, rk in zip(w.chunk(GATES), ranks[k])])
            for k, w in weights.items()
        }

    return {
        f"separate, rank {r} each": (sep, n_sep),
        f"joint [ih hh] per layer, rank {joint_rank}": (joint, 2 * (GATES * hidden + 2 * hidden) * joint_rank),
        f"shared h0 basis (rnn.0.hh, rnn.1.ih) rank {shared_rank}, others {r}": (
            shared,
            2 * (GATES * hidden + hidden) * r + (2 * GATES * hidden + hidden) * shared_rank,
        ),
        f"per gate, equal ranks {gate_total // GATES}": (
            per_gate(equal),
            4 * 2 * hidden * GATES * (gate_total // GATES),
        ),
        "per gate, greedy ranks": (per_gate(greedy), 4 * 2 * hidden * gate_total),
    }


def main(argv=None) -> int:
    from autoshrink.data import load_lm_data
    from autoshrink.models.load import load
    from autoshrink.models.training import evaluate_perplexity

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, nargs="+", default=[52, 40, 30], help="ranks per matrix of the separate plan")
    p.add_argument("--out", default="results/lstm_factorings.md")
    args = p.parse_args(argv)
    if any(not 1 <= r <= 128 for r in args.ranks):
        print("error: --ranks must lie in 1..128 (half of kjv-lstm's hidden size)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    model = load("kjv-lstm", data="kjv", seed=0).eval()
    lm = load_lm_data("kjv", vocab=model.vocab)
    held_out = lm.valid.reshape(-1)[12_000:16_000]
    cov = input_covariances(model, lm.train.reshape(-1)[:20_000])
    weights = {(i, k): getattr(model.rnn[i], k).weight.detach().clone() for i in range(2) for k in ("ih", "hh")}
    dense = math.log(evaluate_perplexity(model, held_out))
    rows, best = [], []
    for r in args.ranks:
        losses = {}
        for name, (new, params) in variants(weights, cov, r).items():
            trial = copy.deepcopy(model)
            with torch.no_grad():
                for (i, k), w in new.items():
                    getattr(trial.rnn[i], k).weight.copy_(w)
            loss = math.log(evaluate_perplexity(trial, held_out))
            losses[name] = loss - dense
            rows.append(f"| {r} | {name} | {params:,} | {math.exp(loss):.2f} | {loss - dense:+.4f} |")
            print(rows[-1], flush=True)
        winner = min(losses, key=losses.get)
        best.append(f"- at the parameters of rank {r}: lowest loss increase **{winner}** ({losses[winner]:+.4f})")
    command = "python -m autoshrink.bench.lstm_factorings " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join(
        [
            "## Factorisations of kjv-lstm's LSTM matrices, untrained, at equal parameters",
            "",
            f"{time.strftime('%Y-%m-%d')}, commit {commit()}, `{command.strip()}`. fp32 parameters of the "
            f"four matrices (dense: {sum(w.numel() for w in weights.values()):,}); perplexity on 4,000 held-out validation "
            f"tokens (dense {math.exp(dense):.2f}); every variant data-aware (whitened SVD).",
            "",
            "| rank per matrix (separate) | structure | parameters | ppl | loss increase |",
            "|---:|---|---:|---:|---:|",
            *rows,
            "",
            *best,
            "",
        ]
    )
    write_report(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
