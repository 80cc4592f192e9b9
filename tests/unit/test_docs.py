"""The README stays a five-minute read and the documentation site stays whole.

`make docs` (mkdocs build --strict) checks links and anchors between pages; these checks need
no mkdocs: the README's length, its links, and that every page under docs/ is in the nav.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 250

# [text](target) outside code; the target up to whitespace or ')'.
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_SNIPPET = re.compile(r'^--8<-- "([^"]+)"', re.M)


def _nav_pages(nav: list) -> list[str]:
    pages: list[str] = []
    for entry in nav:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            pages.extend(_nav_pages(value) if isinstance(value, list) else [value])
    return pages


def _relative_links(path: Path) -> list[str]:
    text = _FENCE.sub("", path.read_text())
    return [t for t in _LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def _mkdocs() -> dict:
    return yaml.safe_load((REPO / "mkdocs.yml").read_text())


def test_readme_is_a_five_minute_read() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"
    head = "\n".join(lines[:25])
    assert "make serve" in head and "make test" in head, "the two commands come first"


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    config = _mkdocs()
    assert config["docs_dir"] == "docs"
    nav = _nav_pages(config["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(set(nav)) == pages, (
        f"not in nav: {sorted(set(pages) - set(nav))}; missing: {sorted(set(nav) - set(pages))}"
    )
    assert len(nav) == len(set(nav)), "a page is in the nav twice"


def test_strict_link_validation_is_on() -> None:
    config = _mkdocs()
    assert config["strict"] is True
    links = config["validation"]["links"]
    for check in ("not_found", "anchors", "absolute_links", "unrecognized_links"):
        assert links[check] == "warn", check  # --strict turns each warning into a failure
    assert config["validation"]["nav"]["omitted_files"] == "warn"


def test_readme_links_point_at_existing_files() -> None:
    links = _relative_links(README)
    into_docs = [t for t in links if t.startswith("docs/")]
    assert len(into_docs) >= 5, f"the README should lead into docs/: {links}"
    for target in links:
        path = (README.parent / target.split("#", 1)[0]).resolve()
        assert path.is_file(), f"README.md links to {target}, which does not exist"


def test_every_docs_md_page_is_linked_from_the_readme_or_the_index() -> None:
    """A page in the nav but reachable from nowhere a newcomer starts is easy to lose."""
    linked = {
        (DOCS / t.split("#", 1)[0]).resolve()
        for t in _relative_links(DOCS / "index.md")
        if t.split("#", 1)[0]
    }
    linked |= {
        (REPO / t.split("#", 1)[0]).resolve()
        for t in _relative_links(README)
        if t.startswith("docs/")
    }
    pages = {p.resolve() for p in DOCS.rglob("*.md")} - {(DOCS / "index.md").resolve()}
    assert not pages - linked, sorted(p.name for p in pages - linked)


def test_included_readmes_exist() -> None:
    """The reference pages include the READMEs kept beside the chart, deploy/ and loadtests/."""
    included = [
        include
        for page in DOCS.rglob("*.md")
        for include in _SNIPPET.findall(page.read_text())
    ]
    assert included, "no reference page includes a README"
    for include in included:
        assert (REPO / include).is_file(), include
