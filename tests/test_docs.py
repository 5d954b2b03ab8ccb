"""The README is a front door and docs/ holds the rest: every relative link in them, and every anchor,
leads somewhere."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "outputs" / "README.md"]
LINK = re.compile(r"\[[^\]]+\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())  # no heading inside a code block
    return {slug(m.group(1)) for m in re.finditer(r"(?m)^#+ (.*)$", text)}


def links(page: Path) -> list[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_leads_somewhere(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    first_block = re.search(r"(?ms)^```bash\n(.*?)^```", readme).group(1)
    assert first_block.splitlines()[0].startswith("make demo") and "make test" in first_block.splitlines()[1]
    for page in sorted((ROOT / "docs").glob("*.md")):  # every page is reachable from the README
        assert f"(docs/{page.name})" in readme, page.name


def test_the_slug_follows_githubs_rule():
    assert slug("The loss swaps' options, measured") == "the-loss-swaps-options-measured"
    assert slug("Several GPUs (torchrun)") == "several-gpus-torchrun"
    assert slug("Quick start (a fresh machine with Python 3.11 and `make`)") == (
        "quick-start-a-fresh-machine-with-python-311-and-make"
    )
