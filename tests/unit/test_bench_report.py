"""The benchmark report lines and the README table `entasis bench all --readme` writes
(tests/bench/report.py, tests/bench/suite.py): a figure survives the round trip, the table shows
value, anchor and ratio, and the README changes only between its markers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.report import markdown, parse, report
from tests.bench.suite import BEGIN, END, write_readme


def test_a_reported_figure_parses_back_with_its_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    report("rest", "price", 4000.0, "req/s", anchor="hello", anchor_value=8000.0, target=">= 0.6")
    report("rest", "p99", 8.0, "ms", anchor="hello p99", anchor_value=4.0, higher_is_better=False)
    lines = capsys.readouterr().out.splitlines()
    first, second = (parse(line) for line in lines)
    assert first is not None and second is not None
    assert (first["value"], first["anchor_value"], first["ratio"]) == (4000.0, 8000.0, 0.5)
    assert second["ratio"] == 0.5  # lower is better: the anchor's 4 ms over our 8 ms
    assert parse("price 4000 req/s") is None
    table = markdown([first, second], "entasis bench all")
    assert "| rest | price | 4,000 req/s | hello: 8,000 req/s | 0.50 | >= 0.6 |" in table.splitlines()
    assert table.endswith("Reproduce: `entasis bench all`")


def test_the_readme_changes_only_between_its_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{BEGIN}\nold table\n{END}\n\nmore text\n")
    write_readme(readme, "| new |")
    assert readme.read_text() == f"# title\n\n{BEGIN}\n| new |\n{END}\n\nmore text\n"
    readme.write_text("no markers here\n")
    with pytest.raises(SystemExit):
        write_readme(readme, "| new |")
