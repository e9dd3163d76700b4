"""bench/u_groups: low-rank with U in rows and transposed at about equal bytes, per site, untrained."""

from __future__ import annotations

import re

from autoshrink.bench import u_groups


def test_each_site_size_and_width_gets_a_row_with_its_best_layout_marked(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "u_groups.md"
    argv = ["--budget", "2x", "--model", str(tiny_model_dir), "--data", str(text_file), "--out", str(out)]
    assert u_groups.main(argv) == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    per_site = {role: len(r) * len(u_groups.BITS) for role, r in u_groups.RANKS.items()}
    assert len(rows) == per_site["embedding"] + per_site["softmax"] + 4 * per_site["recurrent"]
    for row in rows:
        limit = int(row.split("|")[3].strip().replace(",", ""))
        cells = re.findall(r"\*{0,2}(-?\d+\.\d{4})\*{0,2} \(rank (\d+), ([\d,]+) B\)", row)
        assert cells, row
        assert all(int(b.replace(",", "")) <= limit for _, _, b in cells)  # no layout spends more than rows
        bold = float(re.search(r"\*\*(-?\d+\.\d{4})\*\*", row).group(1))
        assert bold == min(float(loss) for loss, _, _ in cells)
    assert re.search(r"- encoder: best layout (rows|g = \d+) at \d", text)
