"""The README's numbers are the generated reports' numbers: its demo table is the table of the demo
run kept in docs/demo/report.md, its study table one of docs/results-smollm2.md, so the README cannot drift from what the code produced."""

import re

from conftest import ROOT


def _block(text: str, name: str) -> str:
    m = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.S)
    assert m, f"README.md lacks the {name} block"
    return m.group(1).strip()


def _tables(md: str) -> list[str]:
    """Every Markdown table of a report, each as its lines joined."""
    tables, cur = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            tables.append("\n".join(cur))
            cur = []
    return tables


def test_readme_demo_tables_are_the_generated_report():
    readme = (ROOT / "README.md").read_text()
    report = (ROOT / "docs/demo/report.md").read_text()
    shown = _tables(_block(readme, "demo-table"))
    assert shown and all(t in _tables(report) for t in shown)


def test_readme_study_table_is_the_generated_report():
    readme = (ROOT / "README.md").read_text()
    report = (ROOT / "docs/results-smollm2.md").read_text()
    shown = _tables(_block(readme, "study-table"))
    assert shown and all(t in _tables(report) for t in shown)


def test_readme_first_screen_gives_the_two_commands():
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:20])
    assert "./setup.sh && .venv/bin/anchorlm demo" in head
    assert "./setup.sh && .venv/bin/python -m pytest" in head
    assert (ROOT / ".ci/run").read_text().strip().endswith("./setup.sh && .venv/bin/python -m pytest")
