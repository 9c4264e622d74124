"""The docs live in the repository: README.md and docs/*.md point only inside it.

* no path of a machine and no file outside the checkout (`../shared/...`);
* every relative link of README.md and docs/*.md names a file that exists;
* docs/DESIGN.md has the sections §1–§7 that code comments cite as "docs/DESIGN.md §n",
  and every such citation names one of them.
"""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + [
    os.path.join("docs", n)
    for n in sorted(os.listdir(os.path.join(ROOT, "docs")))
    if n.endswith(".md")
]
_MACHINE_PATH = re.compile(r"(\.\./shared/|/work/|/home/|/tmp/|/Users/)")
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def test_no_machine_paths_and_links_resolve():
    for rel in DOCS:
        text = _read(rel)
        assert not _MACHINE_PATH.search(text), (rel, _MACHINE_PATH.search(text).group(0))
        for target in _LINK.findall(text):
            if "://" in target:
                continue
            path = os.path.normpath(os.path.join(ROOT, os.path.dirname(rel), target))
            assert os.path.exists(path), f"{rel} links to missing {target}"


def test_design_sections_cited_by_the_code_exist():
    headings = re.findall(r"^## (\d+)\. ", _read(os.path.join("docs", "DESIGN.md")), re.M)
    assert headings == [str(n) for n in range(1, 8)]
    cited = set()
    for directory, _, files in os.walk(ROOT):
        if any(part.startswith(".") for part in directory[len(ROOT) :].split(os.sep)):
            continue
        for name in files:
            if name.endswith((".py", ".md")):
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    cited |= set(re.findall(r"docs/DESIGN.md §(\d+)", f.read()))
    assert cited and cited <= set(headings), sorted(cited - set(headings))
