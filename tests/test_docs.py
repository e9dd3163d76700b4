"""The repository carries its own documentation: nothing points outside it, every link in the
README and docs/ resolves, and docs/methods.md explains every registered method and knob."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from autoshrink.methods import config_class, method_names

ROOT = Path(__file__).resolve().parents[1]
# Pages of the design notes the repository grew from; they are not in it, so nothing may cite them.
OUTSIDE = re.compile(r"\.\./shared|(?<![\w/.])(?:DESIGN|METHODS|STYLE)\.md")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _texts():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "results").glob("*.md"))]
    files += [p for p in sorted((ROOT / "autoshrink").rglob("*.py"))]
    files += [p for p in sorted((ROOT / "tests").glob("*.py")) if p.name != Path(__file__).name]
    return [(p, p.read_text(errors="replace")) for p in files]


def test_nothing_refers_to_pages_outside_the_repository():
    bad = [
        f"{p.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}: {m.group(0)}"
        for p, text in _texts()
        for m in OUTSIDE.finditer(text)
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("page", ["README.md", *[f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md"))]])
def test_relative_links_resolve(page):
    path = ROOT / page
    base = ROOT if path.name.startswith("README") else path.parent  # the README drafts link as README.md does
    for target in LINK.findall(path.read_text()):
        if "://" in target:
            continue
        assert (base / target).exists(), f"{page} links to {target}, which does not exist"


def _section(text: str, method: str) -> str:
    start = text.index(f"(`{method}`)")
    end = text.find("\n## ", start)
    return text[start : end if end >= 0 else None]


@pytest.mark.parametrize("method", method_names())
def test_methods_page_explains_every_knob(method):
    text = (ROOT / "docs" / "methods.md").read_text()
    assert f"(`{method}`)" in text, f"docs/methods.md has no section for {method}"
    shared = text[: text.index("\n## Low-rank")]  # "What every method shares": bits, group_size
    section = _section(text, method)
    for name, _default, _help in config_class(method).knobs():
        assert f"`{name}`" in section or f"**`{name}`**" in shared, f"docs/methods.md does not explain {method}.{name}"
