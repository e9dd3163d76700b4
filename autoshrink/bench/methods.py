"""Each method on the reference model's softmax and one LSTM matrix at 10x and 25x.

For every method the size knob is fitted so that the site's stored bytes just meet the ratio
(dense fp32 bytes of the matrix / stored bytes of the method; the bias is left out: it is the
same for all). Reported: relative reconstruction error ||W - W_hat||_F / ||W||_F at
initialisation (before any fine-tuning), and CPU forward time relative to the dense matrix
(median of repeats; the softmax on 35 hidden states, as one BPTT window of batch 1; the LSTM
matrix on the 35 x 20 states of a training window). Dense and compressed are timed in the same
run, so the ratio is what counts.

    python -m autoshrink.bench.methods [--model kjv-lstm] [--out results/methods.md]
"""
from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from autoshrink.models.load import load
from autoshrink.bench.report import commit, write_report
from autoshrink.plan.fit import largest_within
from autoshrink.measure.latency import median_seconds
from autoshrink.methods import config_from_dict, method_names, weight_class
from autoshrink.models import discover_sites
from autoshrink.plan import method_bytes

# Every method at its defaults, fp32 storage: the knob search varies only the size knob, so
# the table compares the structures themselves (quantisation is a separate row).
BASE = {name: {"method": name} for name in method_names()}
BASE["quant"] = {"method": "quant", "bits": 8}
BASE["kronecker"] = {"method": "kronecker", "density": 0.01}


def measure(model, site_name: str, ratios=(10, 25), inputs: int = 35) -> list[dict]:
    site = next(s for s in discover_sites(model) if s.name == site_name)
    w = model.get_submodule(site_name).weight.detach().float()
    freqs = model.vocab.freqs if site.is_vocab else None
    x = torch.randn(inputs, site.shape[1])
    dense_s = median_seconds(lambda: F.linear(x, w))
    rows = []
    dense_bytes = 4 * site.shape[0] * site.shape[1]
    for ratio in ratios:
        for name in method_names():
            cfg = config_from_dict(BASE[name])
            try:
                cfg.check_site(site)
            except Exception:
                continue  # a vocabulary method on an LSTM matrix
            fitted = largest_within(site, cfg, dense_bytes // ratio, freqs)
            row = {"site": site_name, "shape": f"{site.shape[0]}x{site.shape[1]}", "target": f"{ratio}x", "method": name}
            if fitted is None:
                rows.append({**row, "config": "cannot reach the ratio"})
                continue
            start = time.perf_counter()
            mod = weight_class(fitted).build(w, site, fitted, freqs=freqs).eval()
            build_s = time.perf_counter() - start
            nbytes = method_bytes(site, fitted, freqs)
            with torch.no_grad():
                err = (torch.linalg.norm(mod.weight() - w) / torch.linalg.norm(w)).item()
            t = median_seconds(lambda: mod.matmul(x))
            knobs = {k: v for k, v in fitted.to_dict().items() if k != "method" and v != getattr(type(fitted)(), k)}
            rows.append({**row, "config": ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in knobs.items()) or "defaults",
                         "ratio": dense_bytes / nbytes, "rel_error": err, "time_vs_dense": t / dense_s, "build_s": build_s})
    return rows


def to_markdown(rows: list[dict], header: str) -> str:
    out = [header, "", "| site | target | method | knobs | ratio | rel. error at init | forward time / dense | build s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "ratio" not in r:
            out.append(f"| {r['site']} {r['shape']} | {r['target']} | {r['method']} | {r['config']} | - | - | - | - |")
            continue
        out.append(f"| {r['site']} {r['shape']} | {r['target']} | {r['method']} | {r['config']} | {r['ratio']:.1f}x | "
                   f"{r['rel_error']:.3f} | {r['time_vs_dense']:.2f} | {r['build_s']:.1f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="kjv-lstm")
    p.add_argument("--sites", nargs="+", default=["decoder", "rnn.0.hh"])
    p.add_argument("--out", default="results/methods.md")
    args = p.parse_args(argv)
    model = load(args.model)
    rows = [r for s in args.sites for r in measure(model, s)]
    header = (f"## Methods at 10x and 25x on single matrices of `{args.model}`\n\n"
              f"{time.strftime('%Y-%m-%d')}, CPU ({platform.machine()}, {torch.get_num_threads()} threads), commit {commit()}, "
              f"`python -m autoshrink.bench.methods --model {args.model}`. Ratio = dense fp32 bytes of the matrix / "
              "stored bytes (bias excluded). Error before any fine-tuning. Time: median forward of 35 input rows.")
    write_report(args.out, to_markdown(rows, header))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
