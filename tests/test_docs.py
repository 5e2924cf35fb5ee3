"""The examples on the documentation pages (docs/**/*.md) run and print what the pages show.

The pages' ``>>>`` examples are doctests, checked like the docstrings' and the README's; pages
whose code blocks need a cluster or a GPU show plain code blocks instead, which are not run.
"""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(
    p
    for p in DOCS.rglob("*.md")
    if "generated" not in p.relative_to(DOCS).parts and ">>>" in p.read_text(encoding="utf-8")
)


def test_pages_with_examples_are_found() -> None:
    # the guide pages of the core, the metrics and the torch layer have examples: a glob that
    # silently finds nothing would make the test below vacuous
    names = {p.relative_to(DOCS).as_posix() for p in PAGES}
    assert {"guide/information-theory.md", "guide/metrics.md", "guide/torch.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_page_examples(page: Path) -> None:
    flags = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
    parser = doctest.DocTestParser()
    test = parser.get_doctest(page.read_text(encoding="utf-8"), {}, page.name, str(page), 0)
    runner = doctest.DocTestRunner(optionflags=flags)
    report: list[str] = []
    runner.run(test, out=report.append)
    assert test.examples, f"{page}: no examples parsed"
    assert runner.failures == 0, "".join(report)
