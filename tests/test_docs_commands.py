"""Every quantbook command in README.md, docs/*.md and the command line's ``--help`` runs as written.

The commands are read from the markdown and the help texts themselves, so a flag renamed in the
code or a command added to the docs is checked without editing this file:

* indented code blocks (outside ``` fences): the lines that run ``quantbook``, a benchmark or
  ``python -c``, with ``\\`` continuations joined, and the shell variables the page sets before
  them (``M=$(python -c "...")``);
* inline spans that begin with ``quantbook``, ``python -m quantbook.cli`` or ``python benchmarks/``,
  and spans that begin with a sub-command and name its options (``evaluate-model --rotate``),
  in the markdown and in every command's ``--help`` text (its description, epilog and options);
* the ```` ```python ```` blocks.

A synopsis (``[--json]``, ``NAME|FILE.json``, ``--loss l1|l2``, ``…``) must name a command and its
options, list only choices an option takes, and write ``--opt NAME ...`` only for an option that
takes several values.  A command runs in a scratch directory through ``quantbook.cli.main``: exit
status 0, its ``> FILE`` or ``-o FILE`` written, and where the page shows its output (a code block
that begins with ``...``, after the command) every line of it.  Those in ``_slow`` are only parsed,
with the values the parser leaves to the library (a scale rule, the codebook names) resolved.  The
user's own files are stand-ins: ``model.safetensors``, and ``MODEL`` where only its weights are
read, are a small random file (``user_model.user_model``).  A benchmark's arguments go through the
script's own parser, which stops it before it measures.  A Python snippet must compile, and every
quantbook name it uses must exist.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib
import io
import json
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from quantbook.cli import UsageError, build_parser, main

from checkout import checkout_path
from user_model import user_model

ROOT = checkout_path()
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]

#: spans that quote a line instead of giving a command: an old header's comment named this command
QUOTED = {"quantbook export unnamed"}

_PLACEHOLDER = re.compile(r"[\[\]…|]|\.\.\.|^[A-Z][A-Z0-9_]*(\.[a-z]+)?$")
_USER_FILES = ("model.safetensors", "MODEL")


@dataclasses.dataclass(frozen=True)
class Snippet:
    where: str               # FILE:LINE
    kind: str                # "cli", "option", "benchmark" or "python"
    text: str                # as written; continuation lines joined (python: the code)
    inline: bool = False     # a span in the prose, which may name a command without its arguments
    env: tuple = ()          # the page's shell variables set before it: (name, ("python"|"text", value))
    output: str = ""         # the output the page shows for it

    def __str__(self) -> str:
        return f"{self.where} {' '.join(self.text.split())[:90]}"


def _fences_blanked(text: str) -> tuple[str, list[tuple[int, str]]]:
    """The text with its ``` fences blanked (line numbers kept), and the python fences' code."""
    code = []

    def blank(m: re.Match) -> str:
        if m.group(1) == "python":
            code.append((text.count("\n", 0, m.start()) + 2, m.group(2)))
        return "\n" * m.group(0).count("\n")

    return re.sub(r"^```(\w*)\n(.*?)^```", blank, text, flags=re.S | re.M), code


def _code_blocks(lines: list[str]):
    """The indented code blocks, each a list of ``(line number, line)`` with the indent removed:
    ``\\`` continuations, a ``python -c "`` whose quote closes further down and a synopsis's
    further-indented ``[--option]`` lines joined."""
    block, i = [], 0
    while i < len(lines):
        line = lines[i]
        if block and re.match(r"     +[\[-]", line) and _kind(block[-1][1]):
            block[-1] = (block[-1][0], f"{block[-1][1]} {line.strip()}")   # a synopsis's next line
        elif line.startswith("    ") and (block or i == 0 or not lines[i - 1].strip()):
            start, text = i, line[4:]
            while (text.endswith("\\") or text.count('"') % 2) and i + 1 < len(lines):
                i += 1
                text = text[:-1] + " " + lines[i].strip() if text.endswith("\\") else text + "\n" + lines[i][4:]
            block.append((start + 1, text.rstrip()))
        elif line.strip() and block:             # a blank line does not end a block; text does
            yield block
            block = []
        i += 1
    if block:
        yield block


def _assignments(line: str) -> dict[str, tuple[str, str]]:
    """``M=$(python -c "CODE")`` or ``W='dense.weight'; S='self.*.weight'``."""
    m = re.fullmatch(r'(\w+)=\$\(python -c "(.*)"\)', line)
    if m:
        return {m.group(1): ("python", m.group(2))}
    if not re.match(r"\w+=", line):
        return {}
    return {name: ("text", shlex.split(value)[0]) for name, value in (a.split("=", 1) for a in line.split("; "))}


def _kind(text: str) -> str | None:
    if re.match(r"(quantbook|python3? -m quantbook\.cli)( |$)", text) and not re.match(r"quantbook \S+:(\s|$)", text):
        return "cli"                 # (that second kind is a message: `quantbook COMMAND: error: ...`)
    if re.match(r"python3? benchmarks/\w+\.py\b", text):
        return "benchmark"
    if re.match(r"python3? -c ", text):
        return "python"
    return None


def _variants(text: str) -> list[str]:
    """``quantbook list [--json]``: the command without its optional flags, and with them."""
    groups = re.findall(r"\[(-[^][]*)\]", text)
    if not groups or not all(re.fullmatch(r"(--?[a-z][\w-]*\s*)+", g) for g in groups):
        return [text]
    return [re.sub(r"\s*\[-[^][]*\]", "", text), re.sub(r"\[(-[^][]*)\]", r"\1", text)]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def collect() -> list[Snippet]:
    subcommands = set(_subparsers(build_parser()))
    found: list[Snippet] = []
    for path in DOCS:
        text, python = _fences_blanked(path.read_text(encoding="utf-8"))
        page = [Snippet(f"{path.name}:{n}", "python", code) for n, code in python]
        env: dict[str, tuple[str, str]] = {}
        for block in _code_blocks(text.splitlines()):
            if block[0][1].startswith("..."):      # what the last command before it prints
                last = max((s for s in page if s.kind == "cli" and not s.inline), default=None,
                           key=lambda s: int(s.where.split(":")[1]))
                assert last is not None, f"{path.name}:{block[0][0]}: output of no command"
                page[page.index(last)] = dataclasses.replace(last, output="\n".join(t for _, t in block))
                continue
            for n, line in block:
                env.update(_assignments(line))
                kind = _kind(line)
                for variant in _variants(line) if kind == "cli" else [line] if kind else []:
                    page.append(Snippet(f"{path.name}:{n}", kind, variant, env=tuple(env.items())))
        page += _inline(text, path.name, subcommands)
        for s in sorted(page, key=lambda s: int(s.where.split(":")[1])):
            if all((s.kind, s.text) != (f.kind, f.text) for f in found):   # each once
                found.append(s)
    for s in help_snippets():
        if all((s.kind, s.text) != (f.kind, f.text) for f in found):
            found.append(s)
    return found


def _inline(text: str, name: str, subcommands: set[str]) -> list[Snippet]:
    """The commands of ``text``'s inline spans (``name``: where it is, for the snippets' FILE)."""
    found = []
    for m in re.finditer(r"`([^`\n]+(?:\n[^`\n]+)*)`", text):
        span, n = " ".join(m.group(1).split()), text.count("\n", 0, m.start()) + 1
        if span in QUOTED:
            continue
        if span.split(" ", 1)[0] in subcommands and " -" in span:
            found.append(Snippet(f"{name}:{n}", "option", "quantbook " + span, inline=True))
        elif _kind(span) in ("cli", "benchmark"):
            found += [Snippet(f"{name}:{n}", _kind(span), v, inline=True) for v in _variants(span)]
    return found


def help_snippets() -> list[Snippet]:
    """The commands that every command's ``--help`` shows, as a user reads them (``format_help``)."""
    found, parsers = [], [build_parser()]
    subcommands = set(_subparsers(parsers[0]))
    while parsers:
        parser = parsers.pop(0)
        found += _inline(parser.format_help(), f"{parser.prog} --help", subcommands)
        parsers += _subparsers(parser).values()
    return found


def _words(text: str) -> list[str]:
    """Shell words of a command up to a pipe, without ``quantbook`` (``python -m quantbook.cli``)
    and a ``> FILE``."""
    words = shlex.split(text, comments=True)
    if "|" in words:                 # `quantbook show nf4 | true`: the command is the pipe's first part
        words = words[:words.index("|")]
    if ">" in words:
        words = words[:words.index(">")]
    return words[3 if words[0].startswith("python") else 1:]


def _is_synopsis(text: str) -> bool:
    """Whether a command holds a placeholder outside its quoted words (a glob's ``[012]`` is
    the command's own)."""
    words = _words(re.sub(r"\"[^\"]*\"|'[^']*'", "x", text))
    return any(_PLACEHOLDER.search(w) for w in words if w not in _USER_FILES)


def _check_synopsis(words: list[str]) -> None:
    """The command and its options exist (``_check_options``).  A command named without its
    sub-command (``derive --json``) is checked against all of them."""
    parsers, words = [build_parser()], list(words)
    while words and not words[0].startswith("-") and _subparsers(parsers[0]):
        names = words.pop(0).split("|")
        if re.search(r"[A-Z…]|\.\.\.", names[0]):
            break                    # `quantbook COMMAND ...`, `derive … --scale`: any command
        subs = _subparsers(parsers[0])
        unknown = [n for n in names if n not in subs]
        assert not unknown, f"no command {unknown[0]!r}; there are {sorted(subs)}"
        parsers = [subs[n] for n in names]   # `derive lloyd|quantile`: each takes the options
    if _subparsers(parsers[0]):
        _check_options(list(_subparsers(parsers[0]).values()), words, each=False)
    else:
        _check_options(parsers, words)


def _check_options(parsers: list[argparse.ArgumentParser], words: list[str], each: bool = True) -> None:
    """Every option is one of ``parsers``' (of each, or of one at least), the alternatives listed
    as its value (``--loss l1|l2``) are its choices, and ``--opt NAME ...`` (several values after
    one option) is written only for an option that takes them."""
    for i, word in enumerate(words):
        flag = word.strip("[]").split("=")[0]
        if not flag.startswith("-") or re.match(r"-[\d.]", flag) or flag == "-":
            continue
        having = [p for p in parsers if flag in p._option_string_actions]
        assert having if not each else len(having) == len(parsers), \
            f"{' / '.join(p.prog for p in parsers)}: no option {flag}"
        value = word.split("=", 1)[1] if "=" in word else (words[i + 1] if i + 1 < len(words) else "")
        listed = [] if value.startswith(("-", "[-")) else \
            [v for v in re.split(r"[|\[\]]", value) if v and not _PLACEHOLDER.search(v)]
        taking = [p for p in having if not p._option_string_actions[flag].choices
                  or set(listed) <= set(p._option_string_actions[flag].choices)]
        assert taking == having if each else taking, \
            f"{' / '.join(p.prog for p in having)} {flag}: not every one of {listed} is a choice"
        metavars = {p._option_string_actions[flag].metavar for p in having} - {None}
        placeholder = value.strip("[]")
        if re.fullmatch(r"[A-Z][A-Z0-9_]*", placeholder) and metavars:   # the name --help gives the value
            assert placeholder in metavars, f"{' / '.join(p.prog for p in having)} {flag} {placeholder}: " \
                                            f"the help calls its value {' or '.join(sorted(metavars))}"
        if "=" not in word and i + 2 < len(words) and words[i + 2].strip("[]") in ("...", "…"):
            one = [p.prog for p in having if p._option_string_actions[flag].nargs in (None, "?")]
            assert not one, f"{' / '.join(one)} {flag} takes one value: repeat the option for more"


def _slow(words: list[str], text: str) -> str | None:
    """Why a command is only parsed here (times on the 2-core VM), or None: it runs."""
    if "$" in text or any(w.endswith((".safetensors", ".gguf")) for w in words if w not in _USER_FILES):
        return "a real model's weights (all-MiniLM-L6-v2's 22.7 M: 5-80 s)"
    if "--task" in words:
        return "loads a transformers model (1-10 min)"
    if words[:2] == ["derive", "vq"]:
        return "Lloyd on 10^7 vectors (20 s)"
    if words[0] == "audit" and {"--vector", "--layouts"} & set(words):
        return "Monte Carlo on 10^6 vectors, the layouts' optima (15-30 s)"
    if words[:2] == ["derive", "lloyd"] and any("search:" in w for w in words):
        return "Lloyd under a search rule on 10^7 values (1-3 min)"
    return None


def _expanded(snippet: Snippet) -> str:
    """The command with its shell variables' values, as the page sets them (``M=$(python -c
    ...)`` runs here); skips when that needs a package that is not installed."""
    values = {}
    for name, (how, value) in snippet.env:
        if how == "python":
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    exec(value, {})
            except ImportError as exc:
                pytest.skip(f"${name} is found through {exc.name or exc}, which is not installed")
            value = out.getvalue().strip()
        values[name] = value
    text = re.sub(r"\$\(dirname \$(\w+)\)", lambda m: str(Path(values[m.group(1)]).parent), snippet.text)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], text)


SNIPPETS = collect()


def _of(kind: str) -> list[Snippet]:
    return [s for s in SNIPPETS if s.kind == kind]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One directory for the commands in document order (a later one may read an earlier one's
    file), with the repository's `docs/` folder that some of them write into."""
    d = tmp_path_factory.mktemp("docs_commands")
    (d / "docs").mkdir()
    user_model(d / "model.safetensors")
    return d


def test_every_line_of_the_tour_is_a_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = readme.index("## A short tour")
    end = next(i for i in range(start + 1, len(readme)) if readme[i].startswith("## "))
    lines = [i + 1 for i in range(start, end) if readme[i].startswith("    quantbook ")]
    found = {int(s.where.split(":")[1]) for s in _of("cli") if s.where.startswith("README.md:")}
    assert len(lines) >= 10 and set(lines) <= found
    assert {s.kind for s in SNIPPETS} == {"cli", "option", "benchmark", "python"}
    shown = [s.text for s in _of("cli") if s.output and s.where.startswith("README.md:")]
    assert any(t.startswith("quantbook evaluate-model $M") for t in shown), shown   # the output it shows


def test_the_help_texts_commands_are_read():
    # audit's NAME help names `quantbook list`: run here, as README's spans are
    found = help_snippets()
    shown = [(s.where.split(":")[0], s.kind, s.text) for s in found]
    assert ("quantbook audit --help", "cli", "quantbook list") in shown, shown
    assert all(any((s.kind, s.text) == (f.kind, f.text) for f in SNIPPETS) for s in found)


@pytest.mark.parametrize("snippet", [s for s in _of("cli") + _of("option") if _is_synopsis(s.text)], ids=str)
def test_synopsis_names_existing_commands_and_options(snippet):
    _check_synopsis(_words(snippet.text))


@pytest.mark.parametrize("snippet", [s for s in _of("option") if not _is_synopsis(s.text)], ids=str)
def test_options_named_in_prose_exist(snippet):
    _check_synopsis(_words(snippet.text))


@pytest.mark.parametrize("snippet", [s for s in _of("cli") if not _is_synopsis(s.text)], ids=str)
def test_command_runs_as_written(snippet, scratch, monkeypatch, capsys):
    monkeypatch.chdir(scratch)
    if snippet.output:               # the page shows what it prints: run it on the files it names
        text = _expanded(snippet)
    else:                            # never read: only parsed, if at all
        text = re.sub(r"\$\(dirname \$(\w+)\)|\$\{?(\w+)\}?", r"/\1\2", snippet.text)
    words = [str(scratch / "model.safetensors") if w in _USER_FILES else w for w in _words(text)]
    if words == ["--version"]:
        with pytest.raises(SystemExit) as exc:
            main(words)
        assert exc.value.code == 0
        return
    try:
        args = build_parser().parse_args(words)      # a refused argument raises UsageError
    except UsageError as exc:
        if not (snippet.inline and re.search(r"arguments are required|expected one argument", str(exc))):
            raise
        _check_synopsis(words)       # `quantbook export`, `evaluate-model --rotate`: a command or option named
        return
    if not snippet.output and _slow(words, snippet.text):
        _resolve_what_the_parser_leaves(args)
        return
    if words[0] in ("plot", "plot-sweep") or "--plot" in words:
        pytest.importorskip("matplotlib", reason="the plot extra (pip install -e '.[plot]') draws it")
    status = main(words)
    out, err = capsys.readouterr()
    assert status == 0, err
    shell = shlex.split(snippet.text, comments=True)
    if ">" in shell:
        name = shell[shell.index(">") + 1]
        (scratch / name).write_text(out, encoding="utf-8")
        if name.endswith(".json"):
            json.loads(out)
    if "-o" in words:
        assert (scratch / words[words.index("-o") + 1]).stat().st_size > 0
    printed = out.splitlines()
    for line in filter(None, snippet.output.splitlines()):   # `...` stands for the start of a line
        assert any(p.endswith(line[3:]) if line.startswith("...") else p == line for p in printed), \
            f"the docs show {line!r}; it printed:\n{out}"


def _resolve_what_the_parser_leaves(args: argparse.Namespace) -> None:
    """A slow command's scale rule and codebook names, which its parser takes as any text."""
    from quantbook.naming import is_vector_spec, resolve_codebook, resolve_vector, split_specs
    from quantbook.scales import get_rule

    parser = build_parser()
    for name in (args.command, getattr(args, "method", None)):
        parser = _subparsers(parser).get(name, parser)
    scale = parser._option_string_actions.get("--scale")
    if getattr(args, "scale", None) and not scale.choices:   # derive vq's --scale is a choice
        get_rule(args.scale)
    for spec in split_specs(getattr(args, "codebooks", None) or []):
        if not str(spec).endswith(".json"):          # a file an earlier command writes
            (resolve_vector if is_vector_spec(spec) else resolve_codebook)(spec)


class _Parsed(Exception):
    """Raised in place of measuring, once a benchmark's arguments are parsed."""


@pytest.mark.parametrize("snippet", _of("benchmark"), ids=str)
def test_benchmark_command_parses(snippet, monkeypatch):
    script, *words = shlex.split(snippet.text, comments=True)[1:]
    path = ROOT / script
    assert path.is_file(), f"no {script}"
    synopsis = _is_synopsis(snippet.text)
    seen = []
    parse = argparse.ArgumentParser.parse_args

    def parsed(self, args=None, namespace=None):
        seen.append(self)
        if not synopsis:
            parse(self, args, namespace)             # a flag the script lacks exits 2 here
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parsed)
    monkeypatch.setattr(sys, "argv", [str(path), *words])
    monkeypatch.setattr(sys, "path", [str(path.parent), *sys.path])
    with pytest.raises(_Parsed):
        runpy.run_path(str(path), run_name="__main__")
    if synopsis:
        _check_options(seen[:1], words)


def _quantbook_names(code: str) -> list[str]:
    """The dotted quantbook names a snippet uses: what it imports from quantbook, and attribute
    chains on a quantbook module it imported (``quantbook.get``, ``qb.quantize``)."""
    tree = ast.parse(code)
    aliases, names = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname or a.name.split(".")[0]: a.name if a.asname else a.name.split(".")[0]
                            for a in node.names if a.name.split(".")[0] == "quantbook"})
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "quantbook":
            names += [f"{node.module}.{a.name}" for a in node.names]
    for node in ast.walk(tree):
        chain = []
        while isinstance(node, ast.Attribute):
            chain.insert(0, node.attr)
            node = node.value
        if chain and isinstance(node, ast.Name) and node.id in aliases:
            names.append(".".join([aliases[node.id], *chain]))
    return names


@pytest.mark.parametrize("snippet", _of("python"), ids=str)
def test_python_snippet_names_exist(snippet):
    code = shlex.split(snippet.text)[2] if snippet.text.startswith("python") else snippet.text
    for name in _quantbook_names(code):
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                break
            except ModuleNotFoundError as exc:
                if exc.name and not exc.name.startswith("quantbook"):
                    pytest.skip(f"{name} needs {exc.name}, an optional extra")
        for attr in parts[i:]:
            assert hasattr(obj, attr), f"{name}: {'.'.join(parts[:i])} has no {attr!r}"
            obj = getattr(obj, attr)
