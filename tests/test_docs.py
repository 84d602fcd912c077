"""The Markdown pages link to files and headings that exist (docs move; their links must follow)."""

import functools
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted([*REPO.glob("*.md"), *REPO.glob("docs/*.md"), REPO / "benchmarks" / "RESULTS.md",
                REPO / "mtc" / "data" / "README.md"])
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"#{1,6} (.+)")


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as
    hyphens, a repeated heading numbered from -1 on. Headings inside code fences do not count."""
    anchors, seen, in_fence = set(), {}, False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        match = None if in_fence else HEADING.match(line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).replace("`", "").strip().lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


@functools.cache
def _anchors_of(page: Path) -> frozenset[str]:
    return frozenset(heading_anchors(page.read_text(encoding="utf-8")))


def broken_links(page: Path) -> list[str]:
    """Relative links of `page` whose file or heading does not exist."""
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in _anchors_of(linked):
            broken.append(f"{target}: no such heading")
    return broken


def test_heading_anchors_follow_github():
    text = "# Quantization: INT8 and FP16\n## PTQ4VM: learned INT8 (`--method ptq4vm`)\n## Notes\n## Notes\n" \
           "```\n# a shell comment\n```\n"
    assert heading_anchors(text) == {"quantization-int8-and-fp16", "ptq4vm-learned-int8---method-ptq4vm",
                                     "notes", "notes-1"}


def test_broken_links_are_found(tmp_path):
    (tmp_path / "other.md").write_text("# Real heading\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#real-heading) [web](https://example.org/x) [self](#here)\n# Here\n"
                    "[gone](missing.md) [moved](other.md#old-heading)\n")
    assert broken_links(page) == ["missing.md: no such file", "other.md#old-heading: no such heading"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_page_links_resolve(page):
    assert broken_links(page) == []
