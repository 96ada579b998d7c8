"""What the prose of README.md and docs/*.md names is there (test_docs_commands.py runs what it
quotes as commands and code, with the same reading of the pages):

* every file path (``docs/...``, ``benchmarks/...``, ``tests/...``, ``quantbook/...``) and every
  relative link, with its ``#anchor``;
* every Python name in a span: ``quantbook.x.y``, ``Class.attr`` of a quantbook class (its
  dataclass fields too), ``module.attr`` of a quantbook module (``format.pieces``), and each
  keyword of a call (``lloyd(4, 16, scale=...)``) among the callee's parameters;
* every option in a span (``--vq-group G``) on a command the sentence names, or on some command
  (or benchmark script) where it names none; a default stated beside it (``(default 64)``) is
  the one the command's help states (which tests/test_cli_text.py holds to the value used);
* the README's layer diagram is pyproject.toml's import-linter contract, and its short tour
  runs every command of the top-level help.

A sentence that says a name is gone (``... are gone``, ``since removed``) is not checked.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import re
import shlex

import pytest

from quantbook.cli import build_parser
from test_cli_text import _options, _stated
from test_docs_commands import DOCS, ROOT, _fences_blanked, _of, _subparsers
from test_package_names import _modules

_GONE = re.compile(r"\b(gone|removed)\b")
_OTHER_PROGRAMS = ("pip ", "ncu ", "nvcc ", "pytest ", "python -m pytest", "python -m build", "bash ", "gcc ", "node ",
                   "mypy ")
#: options of other programs that the prose names alone
_FOREIGN = {"--no-deps"}   # pip's


@dataclasses.dataclass(frozen=True)
class Span:
    where: str        # FILE:LINE
    text: str         # the span, whitespace collapsed
    sentence: str     # the sentence around it, as written

    def __str__(self) -> str:
        return f"{self.where} {self.text[:80]}"


def _sentence(text: str, start: int, end: int) -> str:
    bounds = r"\.\s|\n\s*\n|\n- |\n#"
    before = [m.end() for m in re.finditer(bounds, text[:start])]
    after = re.search(bounds, text[end:])
    return text[before[-1] if before else 0:end + (after.start() if after else len(text) - end)]


def spans() -> list[Span]:
    """The backticked spans of the prose (the ``` fences blanked, as test_docs_commands reads them)."""
    found = []
    for path in DOCS:
        text, _ = _fences_blanked(path.read_text(encoding="utf-8"))
        for m in re.finditer(r"`([^`\n]+(?:\n[^`\n]+)*)`", text):
            found.append(Span(f"{path.name}:{text.count(chr(10), 0, m.start()) + 1}", " ".join(m.group(1).split()),
                              _sentence(text, m.start(), m.end())))
    return found


SPANS = [s for s in spans() if not _GONE.search(s.sentence)]


# ------------------------------------------------------------------------------------ paths
_PATH = re.compile(r"(?<![\w/.])((?:docs|benchmarks|tests|quantbook|\.ci)/[\w./*-]*[\w*/])")


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_paths_and_links_named_in_the_docs_exist():
    missing, checked = [], 0
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in _PATH.finditer(text):
            checked += 1
            name = m.group(1)
            if not (list(ROOT.glob(name)) if "*" in name else (ROOT / name.rstrip("/")).exists()):
                missing.append(f"{path.name}:{text.count(chr(10), 0, m.start()) + 1}: {name}")
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            target, _, anchor = m.group(1).partition("#")
            if target.startswith(("http:", "https:")):
                continue
            checked += 1
            page = (path.parent / target) if target else path
            where = f"{path.name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(1)}"
            if not page.exists():
                missing.append(where)
            elif anchor and anchor not in {_slug(h) for h in re.findall(r"^#+ (.*)$", page.read_text(encoding="utf-8"),
                                                                        re.M)}:
                missing.append(where + " (no such heading)")
    assert checked > 100 and missing == []


# ----------------------------------------------------------------------------- Python names
def _quantbook_objects():
    """Every module of the package, and every class and function its modules define, by name."""
    modules = _modules()
    named: dict[str, list] = {}
    for module in modules.values():
        for name, value in vars(module).items():
            if (inspect.isclass(value) or callable(value)) and getattr(value, "__module__", "").startswith("quantbook"):
                if all(value is not v for v in named.get(name, [])):
                    named.setdefault(name, []).append(value)
    return modules, named


MODULES, NAMED = _quantbook_objects()


def _has(obj, attr: str) -> bool:
    fields = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
    return hasattr(obj, attr) or attr in fields or attr in getattr(obj, "__annotations__", {})


def _follow(obj, attrs: list[str]):
    for attr in attrs:
        if not _has(obj, attr):
            return None
        obj = getattr(obj, attr, None)
        if obj is None:   # a dataclass field without a class default: it is there, and ends the chain
            return True
    return obj


def resolve(dotted: str) -> list | None:
    """What a dotted name names: ``[]`` when it names nothing of quantbook's that is there,
    ``None`` when it is not a quantbook name at all (``np.float64``, a JSON path)."""
    parts = dotted.split(".")
    if parts[0] == "quantbook":
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            found = _follow(obj, parts[i:])
            return [found] if found is not None else []
    if parts[0] in NAMED and inspect.isclass(NAMED[parts[0]][0]):
        return [f for f in (_follow(c, parts[1:]) for c in NAMED[parts[0]]) if f is not None]
    for i in range(len(parts) - 1, 0, -1):   # `format.pieces`, `model.evaluate.check_backend`
        prefix = ".".join(parts[:i])
        homes = [m for n, m in MODULES.items() if n.endswith("." + prefix)]
        if homes:
            return [f for f in (_follow(m, parts[i:]) for m in homes) if f is not None]
    return None


def _callees(func: ast.expr) -> list | None:
    name = ast.unparse(func)
    if "." in name:
        return resolve(name)
    return NAMED.get(name)


_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.\w+)+")
_FILE = re.compile(r"\.(py|json|md|toml|sh|npy|npz|safetensors|gguf|png|pdf|svg|cuh|h|txt|log)$")


def test_the_reading_of_names():
    assert resolve("quantbook.bulk.sums") and resolve("QuantState.shape") and resolve("format.pieces")
    assert resolve("quantbook.bulk.no_such") == [] and resolve("Codebook.no_such") == []
    assert resolve("np.float64") is None and resolve("recipe.method") is None
    assert _GONE.search(_sentence("One. `ScaleRule.closed` is gone: nothing read it. Two.", 5, 24))


def _takes(callee, keywords: set[str]) -> bool:
    try:
        params = inspect.signature(callee).parameters
    except (TypeError, ValueError):   # a numba dispatcher
        return True
    return keywords <= set(params) or any(p.kind == p.VAR_KEYWORD for p in params.values())


@pytest.mark.parametrize("span", [s for s in SPANS if _DOTTED.match(s.text) or re.match(r"\w+\(", s.text)], ids=str)
def test_python_names_in_the_prose_exist(span):
    try:
        node = ast.parse(span.text.replace("…", "..."), mode="eval").body
    except SyntaxError:   # a formula: `D(R) = 2^(-2R)`
        node = None
    if isinstance(node, ast.Call):
        if any(isinstance(n, ast.Call) for n in ast.walk(node.func)):
            return   # a method of what a call returns: `VQRecipe.from_dict(...).derive()`
        callees = _callees(node.func)
        if callees is None:   # numpy's, torch's
            return
        keywords = {k.arg for k in node.keywords if k.arg}
        assert callees, f"{span}: no such name"
        assert any(_takes(c, keywords) for c in callees), f"{span}: takes none of {sorted(keywords)}"
        return
    m = _DOTTED.match(span.text)
    if not m or m.group(0) != span.text.removesuffix("()") or _FILE.search(span.text):
        return
    head = m.group(0).split(".")[0]
    if span.where.startswith("json.md:") and head != "quantbook" and not inspect.isclass(NAMED.get(head, [None])[0]):
        return   # a JSON path (`vq.group`), which tests/test_cli_json.py checks
    found = resolve(m.group(0))
    assert found is None or found, f"{span}: no such name"


def test_a_backend_in_the_docs_overrides_the_methods_it_names():
    """``class Mine(Backend, name="mine"): def quantize_blocks(self, x, code, bits, block_size)``:
    each method of a snippet's subclass of a quantbook class has the base method's parameters."""
    checked = 0
    for snippet in _of("python"):
        code = shlex.split(snippet.text)[2] if snippet.text.startswith("python") else snippet.text
        for cls in (n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.ClassDef)):
            bases = [b for base in cls.bases for b in NAMED.get(ast.unparse(base), []) if inspect.isclass(b)]
            for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
                for base in bases:
                    want = list(inspect.signature(getattr(base, fn.name)).parameters)
                    assert [a.arg for a in fn.args.args] == want, f"{snippet.where} {cls.name}.{fn.name}"
                    checked += 1
    assert checked >= 2


# ---------------------------------------------------------------------------------- options
def _commands() -> dict[str, argparse.ArgumentParser]:
    """``{"derive lloyd": parser, "evaluate": parser, ...}``: every command and sub-command."""
    out = {}

    def walk(parser, words):
        for name, sub in _subparsers(parser).items():
            out[" ".join(words + [name])] = sub
            walk(sub, words + [name])

    walk(build_parser(), [])
    return out


COMMANDS = _commands()
BENCHMARK_OPTIONS = {p.name: set(re.findall(r"\"(--[\w-]+)\"", p.read_text(encoding="utf-8")))
                     for p in (ROOT / "benchmarks").glob("*.py")}


def _named_commands(sentence: str) -> set[str]:
    """The commands a sentence names in its spans: ``quantbook CMD``, ``CMD --opt``, ``CMD``."""
    named = set()
    for span in re.findall(r"`([^`]+)`", sentence):
        words = re.sub(r"^(quantbook|python3? -m quantbook\.cli) ", "", " ".join(span.split())).split(" ")
        for n in (2, 1):
            head = " ".join(words[:n])
            for cmd in head.split("|") if n == 1 else [head]:
                if cmd in COMMANDS:
                    named.add(cmd)
                    break
            else:
                continue
            break
    return {c for c in named if not any(o != c and o.startswith(c + " ") for o in named)}


def _has_option(command: str, flag: str) -> bool:
    """Whether ``quantbook [--version] COMMAND`` takes ``flag`` (``--vq-*``: one that begins so)."""
    parsers = [build_parser()] + [p for c, p in COMMANDS.items() if c == command or c.startswith(command + " ")]
    if flag.endswith("*"):
        return any(o.startswith(flag[:-1]) for p in parsers for o in p._option_string_actions)
    return any(flag in p._option_string_actions for p in parsers)


OPTION_SPANS = [s for s in SPANS if re.search(r"(?:^|\s)--[a-z]", s.text) and not s.text.startswith(_OTHER_PROGRAMS)]


def test_the_reading_of_options():
    assert _named_commands("`derive lloyd --scale search:…` and `quantbook evaluate NAME`") == {"derive lloyd",
                                                                                                 "evaluate"}
    assert _has_option("evaluate-model", "--vq-*") and not _has_option("evaluate", "--vq-group")
    assert len(OPTION_SPANS) > 100


@pytest.mark.parametrize("span", OPTION_SPANS, ids=str)
def test_options_named_in_the_prose_are_the_commands(span):
    scripts = [name for name in BENCHMARK_OPTIONS if name in span.sentence]
    commands = _named_commands(span.sentence) or set(COMMANDS)
    for flag in re.findall(r"(?:^|[\s(\[])(--[a-z][\w-]*\*?)", span.text):
        on_script = any(flag in BENCHMARK_OPTIONS[s] for s in scripts) if scripts else \
            any(flag in opts for opts in BENCHMARK_OPTIONS.values())
        assert on_script or flag in _FOREIGN or any(_has_option(c, flag) for c in commands), \
            f"{span}: {flag} is not an option of {' / '.join(sorted(commands)) if len(commands) < 5 else 'any command'}"


_DEFAULT_BESIDE = re.compile(r"`(--[a-z][\w-]*)[^`]*`,? \(?default:? `?([^\s`,;)]+)")


def _number(text: str):
    """``2²²``, ``10⁶``, ``10^7``, ``6``, ``rms``: the value a page writes."""
    sup = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
    power = re.fullmatch(r"(\d+)(?:\^(\d+)|([⁰¹²³⁴⁵⁶⁷⁸⁹]+))", text)
    if power:
        return float(int(power.group(1)) ** int(power.group(2) or power.group(3).translate(sup)))
    return float(text) if re.fullmatch(r"-?\d+(\.\d+)?", text) else text


def test_defaults_stated_beside_an_option_are_its_help_s():
    helps = {}
    for (command, flag), action in _options().items():
        if "default" in (action.help or ""):
            helps.setdefault(flag, {})[command] = _number(str(_stated(action.help)))
    checked = 0
    for path in DOCS:
        text, _ = _fences_blanked(path.read_text(encoding="utf-8"))
        for m in _DEFAULT_BESIDE.finditer(text):
            flag, said = m.group(1), _number(m.group(2))
            if flag not in helps:   # a benchmark's option
                continue
            named = _named_commands(_sentence(text, m.start(), m.end())) & set(helps[flag])
            stated = {helps[flag][c] for c in (named or helps[flag])}
            assert said in stated, f"{path.name}:{text.count(chr(10), 0, m.start()) + 1}: {flag} default {said}"
            checked += 1
    assert checked >= 6


# ------------------------------------------------------------------------- the README's map
def test_the_layer_diagram_is_the_import_contract():
    toml = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    # the first contract is the package's layers (the others are inside a container)
    layers = re.findall(r'"([^"]+)"', re.search(r"^layers = \[(.*?)\]", toml, re.M | re.S).group(1))
    readme = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Layout\n")[1].split("\n## ")[0]
    drawn = [line.strip().split("  ")[0] for line in readme.splitlines() if line.startswith("    quantbook")]
    assert "quantbook.console" in layers[0] and len(drawn) >= 8
    # quantbook.errors imports nothing, so no layer holds it
    assert [set(d.split(" | ")) for d in drawn if d != "quantbook.errors"] == [set(x.split(" | ")) for x in layers]


def test_the_tour_runs_every_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8").split("## A short tour")[1].split("\n## ")[0]
    toured = {line.split()[1] for line in readme.splitlines() if line.startswith("    quantbook ")}
    assert toured == set(_subparsers(build_parser()))
