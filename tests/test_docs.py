"""Every citation in the code, like ``twilio-media-streams.md §1.3``, names a heading that exists.

A citation names one of the project's notes in ``docs/`` (written ``docs/design.md`` or just ``design.md``)
or the top-level README.md, optionally followed by places in it:

- a numbered section, as in ``twilio-media-streams.md §1.3`` or a range ``evi-protocol.md §1.4–§5``
  (both ends are checked; words after the number, as in ``§0 item 4``, name a part of that section);
- a numbered pitfall, as in ``twilio-media-streams.md P5`` (a letter after the number, as in ``P4c``,
  names an item inside the pitfall);
- a heading by its title in double quotes, as in ``docs/design.md "Shape"`` (case-insensitive, exact).

The document must exist and contain a heading labelled with that section or pitfall (``## §1.3 …``,
``### P5 …``) or titled with that text. A bare section or pitfall resolves against the nearest document
named before it on the same line; with no document before it on its line, against the first document the
module names. A section of an external standard (``RFC 6455 §7.4.1``) is not checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SCANNED = (ROOT / "gateway", ROOT / "tests")

# A document: an optional ``docs/`` prefix and a file name ending in the Markdown suffix.
_DOCUMENT = re.compile(r"(?<![\w.\-])((?:docs/)?[A-Za-z0-9_\-]+\.md)\b")
# A section of an external standard, e.g. an RFC; its sections are not ours to check.
_STANDARD = re.compile(r"\bRFC\s?\d+\b")
_SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
_PITFALL = re.compile(r"\bP(\d{1,2})[a-z]?\b")
_QUOTED = re.compile(r'[ \t]+"([^"\n]+)"')
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
_LABEL = re.compile(r"^(§\d+(?:\.\d+)*|P\d+)(?=[\s:.—–-]|$)\s*[:.—–-]?\s*(.*)$")


@dataclass(frozen=True, slots=True)
class Headings:
    """What a document's headings offer a citation: their labels and their titles."""

    labels: frozenset[str]
    """``§1.3``, ``P5``: the leading label of a heading."""
    titles: frozenset[str]
    """Heading text, lower-cased and without backticks, both with and without its label."""


@dataclass(frozen=True, slots=True)
class Anchor:
    """A document (or an external standard) named on a line, at a character position."""

    start: int
    end: int
    document: str | None
    """The name as written (``docs/design.md``); None for an external standard."""


def _normalise(title: str) -> str:
    return " ".join(title.replace("`", "").split()).lower()


def read_headings(text: str) -> Headings:
    """Collect the labels and titles of the Markdown headings in ``text`` (fenced code is skipped)."""
    labels: set[str] = set()
    titles: set[str] = set()
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match is None:
            continue
        heading = match.group(1)
        titles.add(_normalise(heading))
        label = _LABEL.match(heading)
        if label is not None:
            labels.add(label.group(1))
            titles.add(_normalise(label.group(2)))
    return Headings(frozenset(labels), frozenset(titles))


def load_documents(root: Path = ROOT) -> dict[str, Headings]:
    """Every citable document under each name a citation may use: with and without ``docs/``; README.md."""
    documents: dict[str, Headings] = {}
    for path in sorted((root / "docs").glob("*.md")):
        headings = read_headings(path.read_text(encoding="utf-8"))
        documents[f"docs/{path.name}"] = headings
        if path.name != "README.md":
            documents[path.name] = headings
    readme = root / "README.md"
    if readme.exists():
        documents["README.md"] = read_headings(readme.read_text(encoding="utf-8"))
    return documents


def _anchors(line: str) -> list[Anchor]:
    found = [Anchor(m.start(), m.end(), m.group(1)) for m in _DOCUMENT.finditer(line)]
    found += [Anchor(m.start(), m.end(), None) for m in _STANDARD.finditer(line)]
    return sorted(found, key=lambda anchor: anchor.start)


def unresolved_citations(where: str, source: str, documents: dict[str, Headings]) -> list[str]:
    """Every citation in ``source`` that does not resolve, as ``where:line: citation: why``."""
    lines = source.splitlines()
    default: str | None = None
    for line in lines:
        match = _DOCUMENT.search(line)
        if match is not None:
            default = match.group(1)
            break
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        anchors = _anchors(line)
        for anchor in anchors:
            if anchor.document is None:
                continue
            if anchor.document not in documents:
                problems.append(f"{where}:{number}: {anchor.document}: no such document in docs/")
                continue
            quoted = _QUOTED.match(line, anchor.end)
            if quoted is not None and _normalise(quoted.group(1)) not in documents[anchor.document].titles:
                problems.append(f'{where}:{number}: {anchor.document} "{quoted.group(1)}": no such heading')
        places = [(m.start(), f"§{m.group(1)}") for m in _SECTION.finditer(line)]
        places += [(m.start(), f"P{m.group(1)}") for m in _PITFALL.finditer(line)]
        for start, label in sorted(places):
            before = [anchor for anchor in anchors if anchor.end <= start]
            if before and before[-1].document is None:
                continue  # a section of an external standard
            document = before[-1].document if before else default
            if document is None:
                problems.append(f"{where}:{number}: {label}: no document named on the line or in the module")
            elif document in documents and label not in documents[document].labels:
                problems.append(f"{where}:{number}: {document} {label}: no such heading")
    return problems


def _python_files() -> list[Path]:
    return sorted(path for folder in SCANNED for path in folder.rglob("*.py"))


def test_every_citation_in_the_code_resolves() -> None:
    """Each citation in gateway/ and tests/ names a heading that exists in docs/ (or README.md)."""
    documents = load_documents()
    problems = [
        problem
        for path in _python_files()
        for problem in unresolved_citations(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"), documents)
    ]
    assert not problems, f"{len(problems)} unresolved citations:\n" + "\n".join(problems)


def test_a_bogus_citation_is_reported_with_its_file_and_line() -> None:
    """Unknown sections, pitfalls, headings and documents are each reported, with file and line."""
    documents = load_documents()
    section, pitfall = "§" + "97.3", "P" + "99"
    heading = '"No Such Heading"'
    source = "\n".join(
        [
            '"""Media (twilio-media-streams.md §1.3)."""',
            f"# twilio-media-streams.md {section}: bogus",
            f"# a bare {pitfall} resolves against the module's first document",
            f"# docs/design.md {heading}",
            "# see " + "missing-notes" + ".md for more",
        ]
    )
    assert unresolved_citations("fake.py", source, documents) == [
        f"fake.py:2: twilio-media-streams.md {section}: no such heading",
        f"fake.py:3: twilio-media-streams.md {pitfall}: no such heading",
        f"fake.py:4: docs/design.md {heading}: no such heading",
        "fake.py:5: " + "missing-notes" + ".md: no such document in docs/",
    ]


def test_a_bare_citation_follows_the_line_then_the_module() -> None:
    """A bare section goes with the document before it on its line, else the module's first document."""
    documents = load_documents()
    source = "\n".join(
        [
            "# EVI speaks first (evi-protocol.md §1.4).",
            "# Tools: §6; the Twilio side of it: twilio-media-streams.md §3.4, §3.5.",
            "# Closing code: RFC 6455 §7.4.1.",
            "# §" + "5.1 exists for Twilio, not for EVI, the module's first document.",
        ]
    )
    assert unresolved_citations("fake.py", source, documents) == [
        "fake.py:4: evi-protocol.md §" + "5.1: no such heading",
    ]


def test_a_module_without_a_document_cannot_cite_bare_sections() -> None:
    """A bare section in a module that names no document is reported."""
    assert unresolved_citations("fake.py", "# see §" + "1.3", load_documents()) == [
        "fake.py:1: §" + "1.3: no document named on the line or in the module",
    ]


def test_links_between_the_notes_name_existing_files() -> None:
    """Relative links in docs/ and README.md point at files that exist."""
    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
    missing = [
        f"{path.relative_to(ROOT)}: {target}"
        for path in [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
        for target in link.findall(path.read_text(encoding="utf-8"))
        if "://" not in target and not target.startswith("mailto:") and not (path.parent / target).exists()
    ]
    assert missing == []


def test_nothing_points_outside_the_repository_for_its_notes() -> None:
    """No file in gateway/, tests/, docs/ or README.md refers to notes kept outside the repository."""
    outside = ("/work" + "/shared", ".." + "/shared")
    files = [ROOT / "README.md", *(p for d in (*SCANNED, DOCS) for p in sorted(d.rglob("*")) if p.is_file())]
    offenders = [
        f"{path.relative_to(ROOT)}: {needle}"
        for path in files
        if "__pycache__" not in path.parts
        for needle in outside
        if needle.encode() in path.read_bytes()
    ]
    assert offenders == []
