"""provenance: the commit a process records is the code it imported, not its checkout's later HEAD."""

from __future__ import annotations

import subprocess

from autoshrink import provenance


def test_a_commit_made_while_a_run_goes_on_is_not_what_it_records(monkeypatch):
    before = provenance.source_commit()

    def later_head(args, **kwargs):  # the checkout moved on: a new commit, nothing changed since
        out = "f00dfee\n" if "rev-parse" in args else ""
        return subprocess.CompletedProcess(args, 0, stdout=out, stderr="")

    monkeypatch.setattr(provenance.subprocess, "run", later_head)
    assert provenance._read_commit() == "f00dfee"  # what a fresh read of the checkout says now
    assert provenance.source_commit() == before  # what this process ran
