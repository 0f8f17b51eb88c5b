"""The documentation points at what exists: every link between the pages resolves, every file or
folder of the repository a page names in backticks is there, and so is every file a docstring or
comment names. A module moved or a page renamed without its mentions fails here instead of
misleading the next reader. (docs/configuration.md is checked against the settings table by
tests/test_config.py.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The lab notebook keeps each pass as it was written, paths of the time included.
CURRENT_PAGES = [page for page in PAGES if page.name != "performance-history.md"]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
SOURCE_FOLDERS = (
    "ingress",
    "shared",
    "worker",
    "console",
    "bench",
    "devkit",
    "tests",
    "deploy",
    "scripts",
    "migrations",
)
_FOLDER = "(?:" + "|".join((*SOURCE_FOLDERS, "docs")) + ")"
# A page names a repository path in backticks: `worker/pipeline/`, `tests/test_*.py`.
REPO_PATH = re.compile(rf"`({_FOLDER}/[\w./*-]*)`")
# Source names a file: a repository folder, then a path ending in a file type.
SOURCE_MENTION = re.compile(rf"(?<![\w/.])({_FOLDER}/[\w/.-]*\.(?:py|md|sh|conf|toml|ini|html|css|js))\b")
# Named, but made at run time and never committed.
RUN_TIME_OUTPUT = {"bench/results", "bench/results/latest.json"}
README_MAX_LINES = 250


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_between_pages_resolves(page):
    broken = [
        target
        for target in LINK.findall(page.read_text())
        if not target.startswith(("http://", "https://", "mailto:")) and not (page.parent / target).exists()
    ]
    assert broken == []


def _exists(named: str) -> bool:
    """A path, a glob, or a module's attribute (``devkit/history.realistic_history``)."""
    path = named.rstrip("/.")
    if path in RUN_TIME_OUTPUT or (ROOT / path).exists() or any(ROOT.glob(path)):
        return True
    module, dot, _ = path.partition(".")
    return bool(dot) and (ROOT / f"{module}.py").exists()


@pytest.mark.parametrize("page", CURRENT_PAGES, ids=lambda page: page.name)
def test_every_repository_path_a_page_names_exists(page):
    missing = [named for named in REPO_PATH.findall(page.read_text()) if not _exists(named)]
    assert missing == []


def test_every_file_a_docstring_or_comment_names_exists():
    sources = [path for folder in SOURCE_FOLDERS for path in (ROOT / folder).rglob("*") if path.is_file()]
    sources = [
        path for path in sources if path.suffix in {".py", ".sh", ".conf", ".ini"} and "__pycache__" not in path.parts
    ]
    missing = {
        f"{path.relative_to(ROOT)}: {named}"
        for path in sources
        for named in SOURCE_MENTION.findall(path.read_text())
        if not (ROOT / named).exists() and named not in RUN_TIME_OUTPUT
    }
    assert missing == set()


def test_the_readme_stays_short():
    # Issue 13: what it is, the flow, the two commands, the first ten minutes, links; the rest in docs/.
    assert len((ROOT / "README.md").read_text().splitlines()) <= README_MAX_LINES
