"""bench/storage_widths: low-rank at 4, 3 and 2 bits at about equal bytes, per site, untrained."""

from __future__ import annotations

import re

from autoshrink.bench import storage_widths


def test_each_site_and_size_gets_a_row_with_its_best_width_marked(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "widths.md"
    argv = ["--budget", "2x", "--model", str(tiny_model_dir), "--data", str(text_file), "--out", str(out)]
    assert storage_widths.main(argv) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 2 + 2 + 4 * 3  # embedding and softmax at 2 sizes, four recurrent matrices at 3
    for row in rows:
        losses = [float(x) for x in re.findall(r"\*{0,2}(-?\d+\.\d{4})\*{0,2} \(rank", row)]
        bold = float(re.search(r"\*\*(-?\d+\.\d{4})\*\*", row).group(1))
        assert len(losses) == 3 and bold == min(losses)
