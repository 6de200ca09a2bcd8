"""Citations of the project's own documents resolve: ``docs/NAME.md`` exists, and every section or id cited
right after it (``§2``, ``§2.1``, ``§0-§2``, ``V2c``, ``A8``, ``F1/F4``) is a heading of that file.

The heading convention (docs/placement.md, docs/calibration.md): a section is a heading that begins with its
number (``## §2 ...``, ``### §2.1 ...``), a rule or figure a heading that begins with its id (``#### A8 ...``,
``### V2c ...``). A citation of ``placement.md`` without its folder fails too: that is how the docs were once
cited while they did not exist. Citations of the specs beside the project (``workloads.md``, ``linux-7.md``
in ``../shared/spec``) are not checked: they are not in this repository.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCANNED = ("src", "tests", "bench", "docs", "README.md")
SUFFIXES = (".py", ".toml", ".md")
SKIPPED = ("__pycache__", ".egg-info")

REF = r"(?:§\d+(?:\.\d+)*|[A-Z]\d+[a-z]?)"
CITATION = re.compile(rf"docs/(?P<doc>[A-Za-z0-9_.-]+?\.md)(?P<refs>(?:(?:\s*[,/\-–]\s*|\s+){REF}(?![\w.]\w))*)")
ANCHOR = re.compile(rf"^#{{1,6}}[ \t]+(?P<id>{REF})(?=[\s:.]|$)", re.MULTILINE)


def anchors(doc: Path) -> set[str]:
    """The sections and ids a document has headings for."""
    return set(ANCHOR.findall(doc.read_text(encoding="utf-8")))


def problems_in(text: str, where: str, docs: Path = DOCS) -> list[str]:
    """Every citation in ``text`` of a ``docs/*.md`` file that is missing, or of a section it has no heading
    for; and every mention of one of those files without its folder."""
    out: list[str] = []
    cache: dict[str, set[str] | None] = {}
    for m in CITATION.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        name = m["doc"]
        if name not in cache:
            path = docs / name
            cache[name] = anchors(path) if path.is_file() else None
        have = cache[name]
        if have is None:
            out.append(f"{where}:{line}: cites docs/{name}, which does not exist")
            continue
        for ref in re.findall(REF, m["refs"]):
            if ref not in have:
                out.append(f"{where}:{line}: cites docs/{name} {ref}, which has no heading beginning with {ref}")
    existing = sorted(p.name for p in docs.glob("*.md"))
    if existing:
        bare = re.compile(r"(?<![\w/.\"'-])(" + "|".join(map(re.escape, existing)) + r")\b")
        for m in bare.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append(f"{where}:{line}: cites {m[1]} without its folder: write docs/{m[1]}")
    return out


def scanned_files() -> list[Path]:
    files: list[Path] = []
    for entry in SCANNED:
        path = ROOT / entry
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [p for p in candidates if p.is_file() and p.suffix in SUFFIXES
                  and not any(s in part for part in p.parts for s in SKIPPED) and p != Path(__file__).resolve()]
    return files


def test_every_citation_of_a_doc_resolves() -> None:
    files = scanned_files()
    assert len(files) > 100  # the walk found the tree
    problems = [p for f in files for p in problems_in(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]
    assert not problems, "\n".join(problems)


def test_the_placement_and_calibration_docs_have_what_the_code_cites() -> None:
    assert {"§0", "§1", "§1.2", "§2", "§2.1", "§3", "§4", "A8", "F6b"} <= anchors(DOCS / "placement.md")
    assert {"§1", "§3", "V1", "V2c", "V10"} <= anchors(DOCS / "calibration.md")


def test_a_bad_citation_is_caught(tmp_path: Path) -> None:
    """The check can fail: a missing file, a missing section, a missing id, a range end, a bare name."""
    (tmp_path / "guide.md").write_text("# Guide\n\n## §1 One\n\n### §1.2 Two\n\n#### A8 Eight\n")
    ok = "see docs/guide.md §1, §1.2 and docs/guide.md A8; docs/guide.md §1-§1.2; docs/guide.md §1.2 step 3"
    assert problems_in(ok, "x", tmp_path) == []
    bad = {
        "docs/missing.md §1": "does not exist",
        "(docs/guide.md §2)": "docs/guide.md §2, which has no heading",
        "[docs/guide.md §1.3, M]": "§1.3",
        "docs/guide.md A9": "A9",
        "docs/guide.md §1-§3": "§3",
        "docs/guide.md F1/A8": "F1",
        "rules in guide.md": "without its folder",
    }
    for text, why in bad.items():
        found = problems_in(text, "x", tmp_path)
        assert len(found) == 1 and why in found[0], (text, found)
