"""Text encodings, locales and paths: the command line under a terminal or pipe that is not UTF-8,
files written in UTF-8 whatever the locale, and names with spaces and non-ASCII characters.

The expected bytes are written out by hand here: the ASCII spellings of quantbook's symbols
(``±`` as ``+/-``), Python's escape of a character (``σ`` as ``\\u03c3``) and a file name's
bytes as the system holds them."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# -- every text file is opened with its encoding named ------------------------------------------------

def _text_opens_without_encoding(tree: ast.AST):
    """Calls that open a file in text mode without ``encoding=``: ``open``/``io.open``,
    ``os.fdopen``, ``Path.open``, ``Path.read_text``/``write_text``.  A mode that is not a
    constant counts as text (name the encoding, None for binary)."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
        if isinstance(f, ast.Attribute) and f.attr in ("read_text", "write_text"):
            given = len(node.args) >= (1 if f.attr == "read_text" else 2)   # encoding passed by position
            if not given and not any(k.arg == "encoding" for k in node.keywords):
                yield node.lineno
            continue
        if isinstance(f, ast.Name) and f.id == "open" or owner == "io" and f.attr == "open" \
                or owner == "os" and f.attr == "fdopen":
            mode_at = 1
        elif isinstance(f, ast.Attribute) and f.attr == "open" and owner not in ("os", "tarfile", "zipfile"):
            mode_at = 0   # Path.open(mode)
        else:
            continue
        mode = next((k.value for k in node.keywords if k.arg == "mode"),
                    node.args[mode_at] if len(node.args) > mode_at else ast.Constant("r"))
        binary = isinstance(mode, ast.Constant) and isinstance(mode.value, str) and "b" in mode.value
        if not binary and not any(k.arg == "encoding" for k in node.keywords):
            yield node.lineno


def test_every_text_file_is_opened_with_its_encoding_named():
    # without it Python takes the locale's (a Windows code page, ASCII in a C locale): a name with
    # a non-ASCII character fails to write, or is read back as other characters
    paths = [*(ROOT / "quantbook").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py"),
             *(ROOT / "tests" / "data").rglob("*.py")]
    found = [f"{p.relative_to(ROOT)}:{line}" for p in sorted(paths)
             for line in _text_opens_without_encoding(ast.parse(p.read_text(encoding="utf-8")))]
    assert not found, f"text files opened without encoding= (name it, or open in binary): {found}"


def test_the_open_scan_finds_the_spellings_it_is_for():
    for text in ("open(p)", "open(p, 'w')", "io.open(p, 'rt')", "os.fdopen(fd, mode)", "p.open()", "p.open('a')",
                 "p.read_text()", "p.write_text(s)", "open(p, mode=m, **kw)", "Path(p).read_text(errors='replace')"):
        assert list(_text_opens_without_encoding(ast.parse(text))), text
    for text in ("open(p, 'rb')", "open(p, 'w', encoding='utf-8')", "os.fdopen(fd, mode, encoding=enc)",
                 "p.open('wb')", "p.read_text('utf-8')", "p.write_text(s, encoding='utf-8')", "os.open(p, flags)",
                 "tarfile.open(p)", "read_text(p)", "p.read_bytes()", "open(p, mode='ab')"):
        assert not list(_text_opens_without_encoding(ast.parse(text))), text
