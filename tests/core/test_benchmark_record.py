"""benchmarks/run_all.py writes docs/performance.md: a run of some benchmarks replaces only their sections, and every
other section (another benchmark's, or hand-written notes titled after one) keeps its text under its own heading."""

from __future__ import annotations

import sys
import types

from benchmarks import run_all


def _sections(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line.startswith("## "):
            out.append((line[3:], ""))
        elif out:
            out[-1] = (out[-1][0], out[-1][1] + line + "\n")
    return out


def test_a_partial_run_keeps_every_other_section_under_its_own_heading(tmp_path, monkeypatch):
    bench = types.ModuleType("mvc_fake_bench_second")
    bench.run = lambda quick: [{"name": "new row", "seconds": 1.5}]
    monkeypatch.setitem(sys.modules, bench.__name__, bench)
    monkeypatch.setattr(run_all, "BENCHMARKS", [("First", "mvc_fake_bench_first"), ("Second", bench.__name__),
                                                 ("Second: more", "mvc_fake_bench_more")])
    record = tmp_path / "performance.md"
    record.write_text("# Performance record\n\nold header\n\n"
                      "## Other\n\nkept elsewhere\n\n"
                      "## Second: notes\n\nwhat the second table says\n\n"
                      "## Second\n\n| name |\n|---|\n| old row |\n\n"
                      "## First\n\n| name |\n|---|\n| first row |\n\n"
                      "## First: notes\n\nabout the first\n\n"
                      "## Second: more\n\n| name |\n|---|\n| more row |\n", encoding="utf-8")
    assert run_all.main(["--only", bench.__name__, "--out", str(record)]) == 0
    text = record.read_text(encoding="utf-8")
    sections = _sections(text)
    assert [t for t, _ in sections] == ["First", "First: notes", "Second", "Second: more", "Second: notes", "Other"]
    body = dict(sections)
    assert body["First"].strip() == "| name |\n|---|\n| first row |"
    assert "| new row | 1.5 |" in body["Second"] and "old row" not in text
    assert body["Second: notes"].strip() == "what the second table says"
    assert body["First: notes"].strip() == "about the first" and body["Other"].strip() == "kept elsewhere"
    assert text.startswith("# Performance record\n\nLast written by `python -m benchmarks.run_all --only "
                           f"{bench.__name__}`") and "old header" not in text
