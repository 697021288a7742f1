"""Every relative link in README.md and docs/ resolves to a file or folder of the repository, so a
reader who follows one never lands on a 404 after a move."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target), the target up to a space, a title or the closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(text: str) -> list[str]:
    """The link targets of a markdown text that point into the repository (no scheme, no bare anchor),
    without their #fragment; fenced code blocks are skipped."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    targets = (match.group(1) for match in LINK.finditer(text))
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_the_link_reader_finds_relative_links_only():
    text = "[a](docs/x.md#part) ![b](../y.png) [c](https://example.org) [d](#top)\n```\n[e](z.md)\n```"
    assert relative_links(text) == ["docs/x.md", "../y.png"]


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_relative_link_resolves(page):
    broken = [t for t in relative_links(page.read_text()) if not (page.parent / t).exists()]
    assert not broken, f"{page.relative_to(ROOT)} links to missing paths: {broken}"
