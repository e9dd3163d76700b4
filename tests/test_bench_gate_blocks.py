"""bench/gate_blocks: one low-rank factorisation per LSTM matrix against one per gate, equal parameters."""

from __future__ import annotations

from autoshrink.bench import gate_blocks


def test_every_lstm_matrix_and_rank_gets_a_row_and_the_count_line_follows_the_table(
    tiny_model_dir, text_file, tmp_path, monkeypatch
):
    import autoshrink
    from autoshrink.models import discover_sites

    shapes = {s.name: s.shape for s in discover_sites(autoshrink.load(str(tiny_model_dir))) if s.role == "recurrent"}
    monkeypatch.setattr(gate_blocks, "RANKS", (2, 6))  # the tiny model's LSTM matrices are small
    out = tmp_path / "gate_blocks.md"
    argv = ["--budget", "2x", "--model", str(tiny_model_dir), "--data", str(text_file), "--out", str(out)]
    assert gate_blocks.main(argv) == 0
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| rnn.")]
    assert len(rows) == 4 * 2  # two layers' ih and hh, two ranks each
    for site, rank, params, joint, ranks, gate_params, gates, ratio in (map(str.strip, r) for r in rows):
        m, n = shapes[site]
        split = [int(x) for x in ranks.split(",")]
        assert len(split) == 4 and sum(split) == int(rank) * (m + n) // (m // 4 + n)  # the same parameters ...
        assert (
            int(params.replace(",", "")) - (m // 4 + n)
            < int(gate_params.replace(",", ""))
            <= int(params.replace(",", ""))
        )
        assert float(gates) >= 0 and float(joint) >= 0 and float(ratio) > 0
    assert "- Per gate is lower at " in out.read_text()


def test_the_count_line_is_computed_from_the_results():
    rows = [
        {"site": s, "rank": 4, "params": 10, "gate_params": 10, "ranks": [1, 1, 1, 1], "joint": j, "gates": g}
        for s, j, g in (("rnn.0.ih", 0.02, 0.01), ("rnn.0.hh", 0.01, 0.02), ("rnn.1.hh", 0.03, 0.015))
    ]
    text = gate_blocks.markdown(rows, "header")
    assert "- Per gate is lower at 2 of 3 (site, rank) pairs: rnn.0.ih, rnn.1.hh." in text
    assert "| rnn.1.hh | 4 | 10 | 0.0300 | 1, 1, 1, 1 | 10 | 0.0150 | 0.50 |" in text
