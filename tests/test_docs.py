"""README.md and docs/*.md stay true to the code: every command they give resolves, every link
and repository path exists, every table is well-formed, and no development history leaks in.

What "resolves" means here, per kind of command found in code blocks and inline code:

- ``make TARGET...``: each target is a rule of the Makefile;
- ``mushroom SUBCOMMAND --flag`` (or ``.venv/bin/mushroom``): the subcommand and each flag exist
  in :func:`mushroom.cli.build_parser`;
- ``python -m pipelines.X --flag``, ``python benchmarks/X.py --flag``, ``python scripts/X.py``,
  ``python examples/X.py``: the file exists and each flag is an option it defines;
- ``pip install ".[extra]"``: the extra is one of pyproject.toml's;
- a repository path in inline code (``src/...``, ``tests/...``, ...): it exists (a glob matches).
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

from mushroom.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

FENCE = re.compile(r"^```.*?$(.*?)^```\s*$", re.M | re.S)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
REPO_DIRS = ("src", "tests", "pipelines", "images", "manifests", "scripts", "benchmarks", "examples",
             "components", "docs", ".ci")


def _page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _without_fences(text: str) -> str:
    return FENCE.sub("", text)


def code_snippets(text: str) -> list[str]:
    """Every command-like text of a page: code-block lines (continuations joined, comments cut)
    and inline code spans."""
    snippets = []
    for block in FENCE.findall(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                snippets.append(line)
    snippets += INLINE.findall(_without_fences(text))
    return snippets


def _tokens(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # an unbalanced quote in prose-like code: words will do
        return text.split()


def _flags(words: list[str]) -> list[str]:
    """``--flag`` options among words, brackets, values and punctuation removed."""
    flags = []
    for word in words:
        word = word.strip("[](),;'\"")
        if word.startswith("--") and len(word) > 2:
            flags.append(re.split(r"[=|\[\]]", word, maxsplit=1)[0].rstrip(".,"))
    return flags


# --------------------------------------------------------------------------- what the code offers


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+):(?!=)", text, re.M)} - {".PHONY"}


def mushroom_options() -> dict[str, set[str]]:
    """Subcommand -> its option strings."""
    parser = build_parser()
    [sub] = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}


def defines_option(path: Path, flag: str) -> bool:
    return re.search(rf"""["']{re.escape(flag)}["']""", path.read_text(encoding="utf-8")) is not None


def extras() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return set(pyproject["project"]["optional-dependencies"])


# --------------------------------------------------------------------------- checks per snippet


def problems_of(snippet: str, targets: set[str], options: dict[str, set[str]], known_extras: set[str]) -> list[str]:
    problems = []
    words = _tokens(snippet)
    for i, word in enumerate(words):
        if i > 0 and words[i - 1] not in ("&&", ";", "$", "|"):
            continue  # a command starts a line or follows a shell separator; other words are prose or output
        rest = words[i + 1:]
        if word == "make":
            for target in rest:
                if "=" in target:
                    continue
                if not re.fullmatch(r"[a-z][a-z0-9-]*", target):
                    break
                if target not in targets:
                    problems.append(f"make target {target!r} is not in the Makefile")
        elif word in ("mushroom", ".venv/bin/mushroom") and rest and re.fullmatch(r"[a-z]+", rest[0]):
            command = rest[0]
            if command not in options:
                problems.append(f"'mushroom {command}': no such subcommand")
            elif command != "pipeline":
                until = next((j for j, w in enumerate(rest) if w in ("&&", ";", "|")), len(rest))
                problems += [f"'mushroom {command}' has no option {f}" for f in _flags(rest[1:until])
                             if f not in options[command]]
        elif word.endswith("python") or word.endswith("python3.11"):
            if rest[:1] == ["-m"] and len(rest) > 1 and re.fullmatch(r"pipelines\.[a-z_]+", rest[1]):
                path = ROOT / (rest[1].replace(".", "/") + ".py")
                flags = _flags(rest[2:])
            elif rest and re.fullmatch(r"(benchmarks|scripts|examples)/[\w.-]+\.py", rest[0]):
                path = ROOT / rest[0]
                flags = _flags(rest[1:])
            else:
                continue
            if not path.is_file():
                problems.append(f"{path.relative_to(ROOT)} does not exist")
            else:
                problems += [f"{path.relative_to(ROOT)} defines no option {f}" for f in flags
                             if not defines_option(path, f)]
        elif re.fullmatch(r"(benchmarks|scripts|examples|images)/[\w.-]+\.(py|sh)", word):  # a script named bare
            path = ROOT / word
            if not path.is_file():
                problems.append(f"{word} does not exist")
            elif path.suffix == ".py":
                problems += [f"{word} defines no option {f}" for f in _flags(rest) if not defines_option(path, f)]
        elif word == "pip" and rest[:1] == ["install"]:
            for spec in rest[1:]:
                m = re.fullmatch(r"\.\[([\w,-]+)\]", spec)
                if m:
                    problems += [f"pyproject.toml has no extra {e!r}" for e in m.group(1).split(",")
                                 if e not in known_extras]
    return problems


def repo_path_problem(span: str) -> str | None:
    """A repository path in inline code that does not exist (None: fine, or not a path)."""
    text = span.strip().rstrip("/")
    if " " in text or not text.startswith(tuple(f"{d}/" for d in REPO_DIRS)):
        return None
    if re.search(r"<|>|\{|\.\.\.|\b[A-Z]{2,}\b|\$", text):  # a placeholder (NAME, SPLIT, <x>, ...)
        return None
    text = re.split(r"[,;:]", text, maxsplit=1)[0]
    if any(c in text for c in "*?["):
        return None if any(ROOT.glob(text)) else f"{text}: nothing matches"
    return None if (ROOT / text).exists() else f"{text}: no such file or folder"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _without_fences(path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def table_problems(text: str) -> list[str]:
    """Rows whose cell count differs from their table's header (pipes escaped as ``\\|`` are text)."""
    problems = []
    lines = _without_fences(text).splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].lstrip().startswith("|"):
            i += 1
            continue
        block = []
        while i < len(lines) and lines[i].lstrip().startswith("|"):
            block.append(lines[i].strip())
            i += 1
        cells = [len(re.split(r"(?<!\\)\|", row.strip("|"))) for row in block]
        header = block[0]
        if len(block) < 2 or not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", block[1]):
            problems.append(f"table without a separator row after {header[:60]!r}")
            continue
        problems += [f"row {row[:60]!r} has {n} cells, its header {cells[0]}" for row, n in zip(block, cells,
                                                                                               strict=True)
                     if n != cells[0]]
    return problems


# --------------------------------------------------------------------------- tests


def test_the_pages_exist_and_the_readme_is_a_front_door():
    assert len(DOCS) >= 8
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines"
    text = "\n".join(lines)
    for needed in ("make demo", "make test", "make identify-demo", "Safety", "drawings, not mushrooms"):
        assert needed in text, needed
    linked = {(README.parent / target.split("#")[0]).resolve() for target in LINK.findall(text)}
    assert set(DOCS) <= linked, "every docs page is linked from the README"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_command_resolves(page):
    targets, options, known_extras = make_targets(), mushroom_options(), extras()
    problems = []
    for snippet in code_snippets(page.read_text(encoding="utf-8")):
        problems += [f"{snippet!r}: {p}" for p in problems_of(snippet, targets, options, known_extras)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_repository_path_and_link_exists(page):
    text = page.read_text(encoding="utf-8")
    problems = [p for span in INLINE.findall(_without_fences(text)) if (p := repo_path_problem(span))]
    for target in LINK.findall(_without_fences(text)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        if not linked.exists():
            problems.append(f"link {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"link {target}: no heading with that anchor in {linked.name}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_table_is_well_formed(page):
    problems = table_problems(page.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_no_development_history_in_user_docs(page):
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"\bissues? #?\d+", text, re.I), "issue numbers belong in commit messages"
    hashes = [s for s in INLINE.findall(text) if re.fullmatch(r"[0-9a-f]{7,40}", s) and re.search(r"[a-f]", s)]
    assert not hashes, f"commit hashes: {hashes}"


def test_the_checks_catch_what_they_are_for():
    targets, options, known_extras = make_targets(), mushroom_options(), extras()
    assert problems_of("make demo identify-demo CONFIG=x.yaml", targets, options, known_extras) == []
    assert problems_of("make demoo", targets, options, known_extras)
    assert problems_of(".venv/bin/mushroom identify a.jpg --bundle b --verbose", targets, options, known_extras) == []
    assert problems_of(".venv/bin/mushroom identify a.jpg --bundel b", targets, options, known_extras)
    assert problems_of("mushroom identfy a.jpg", targets, options, known_extras)
    assert problems_of(".venv/bin/python -m pipelines.run CONFIG --output DIR", targets, options, known_extras) == []
    assert problems_of("python -m pipelines.run CONFIG --outptu DIR", targets, options, known_extras)
    assert problems_of("python -m pipelines.nothing", targets, options, known_extras)
    assert problems_of("python benchmarks/nothing.py", targets, options, known_extras)
    assert problems_of("benchmarks/openset.py --runn RUN", targets, options, known_extras)
    assert problems_of("benchmarks/openset.py --run RUN", targets, options, known_extras) == []
    assert problems_of('pip install ".[nothing]"', targets, options, known_extras)
    assert repo_path_problem("src/mushroom/nothing.py") and repo_path_problem("src/mushroom/cli.py") is None
    assert repo_path_problem("pipelines/compiled/NAME.yaml") is None  # a placeholder
    assert table_problems("| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 | 5 |\n")
    assert not table_problems("| a | b |\n|---|---|\n| `x \\| y` | 2 |\n")
    assert slug("Open set: \"not one of the species this model knows\"") == \
        "open-set-not-one-of-the-species-this-model-knows"
    assert slug("Why the demo fits a 4-CPU / 8 GB node") == "why-the-demo-fits-a-4-cpu--8-gb-node"


def test_the_readme_demo_photo_is_a_test_photo_of_the_demo(tmp_path):
    """The README's identify command names a photo by path: the demo's seed and split must put it
    in the test split (no model trained on it), so that the command answers as described."""
    from mushroom import stages
    from mushroom.config import load_config
    from mushroom.manifest import read_splits

    m = re.search(r"images/(\d+)/(syn-[\w-]+\.jpg)", README.read_text(encoding="utf-8"))
    assert m, "the README names a demo photo"
    config = load_config(ROOT / "pipelines" / "configs" / "demo.yaml")
    dataset = config.dataset.model_dump(mode="json", exclude_none=True)
    stages.acquire({**dataset, "unknown_species": []}, config.seed, tmp_path / "dataset")
    stages.split(tmp_path / "dataset", config.split.model_dump(mode="json"), config.seed, tmp_path / "splits")
    [record] = [r for r in read_splits(tmp_path / "splits") if r.file == f"images/{m.group(1)}/{m.group(2)}"]
    assert record.split == "test"
