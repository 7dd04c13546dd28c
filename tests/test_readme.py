"""The README opens with the two commands a new user runs, and CI runs the second one exactly."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The commands of the README's first two ```bash blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [block.strip() for block in blocks[:2]]


def test_readme_opens_with_two_single_line_commands():
    text = (ROOT / "README.md").read_text()
    first_block = text.index("```bash")
    assert "```" not in text[:first_block], "nothing but prose may precede the two commands"
    setup_and_run, setup_and_test = readme_commands()
    for command in (setup_and_run, setup_and_test):
        assert "\n" not in command and command.startswith("python3 -m venv .venv && ")
    assert "search/run.py" in setup_and_run
    assert "pytest" in setup_and_test


def test_ci_runs_the_readme_test_command_exactly():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert readme_commands()[1] in ci_lines


def test_the_readme_is_a_quickstart_whose_links_lead_to_the_docs():
    """The README stays short; every relative link in it and in docs/ names a file that exists, and every
    docs page is linked from the README."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150, "the README is a quickstart: move reference material to docs/"
    pages = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    assert pages and all(f"]({page})" in readme for page in pages), pages
    for document in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", document.read_text()):
            if "://" not in target:
                assert (document.parent / target).exists(), f"{document.name}: broken link {target}"
