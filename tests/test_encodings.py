"""Text encodings, locales and paths: the command line under a terminal or pipe that is not UTF-8,
files written in UTF-8 whatever the locale, and names with spaces and non-ASCII characters.

The expected bytes are written out by hand here: the ASCII spellings of quantbook's symbols
(``±`` as ``+/-``, ``σ`` as ``sigma``), Python's escape of a character (``λ`` as ``\\u03bb``) and
a file name's bytes as the system holds them."""

from __future__ import annotations

import ast
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import quantbook
from quantbook.cli import main

from checkout import ROOT, checkout_path

LETTER = "\u03bb"   # λ: two bytes in UTF-8, none in ASCII or Latin-1, and no ASCII spelling of quantbook's
SIGMA = "\u03c3"   # σ: its UTF-8 bytes CF 83, held as the surrogates DCCF DC83 in a C locale
NAME, SOURCE = f"nf4-{LETTER}", "M\u00fcller \u2014 0 \u00b1 1"   # "Müller — 0 ± 1"


def _codebook_file(tmp_path: Path) -> Path:
    d = tmp_path / f"dir with space {LETTER}"
    d.mkdir(exist_ok=True)
    path = d / f"cb {LETTER}.json"
    path.write_text(quantbook.get("nf4").replace(name=NAME, source=SOURCE).to_json(), encoding="utf-8")
    return path


def _run(monkeypatch, argv: list[str], encoding: str) -> tuple[int, bytes, bytes]:
    """``main(argv)`` with standard output and error in ``encoding``, as Python opens them for a
    pipe in that locale (stdout strict, stderr backslashreplace); the bytes written."""
    out = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="strict", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="backslashreplace", write_through=True)
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    try:
        status = main(argv)
    except SystemExit as exc:   # --help
        status = exc.code
    assert (out.errors, err.errors) == ("strict", "backslashreplace")   # set back after the command
    return status, out.buffer.getvalue(), err.buffer.getvalue()


SEARCH = ["evaluate", "nf4", "-B", "16", "--scale", "search:4over6", "--samples", "1024"]


@pytest.mark.parametrize("encoding", ["ascii", "latin-1", "cp1252"])
def test_output_the_stream_cannot_encode_is_spelled_in_ascii(monkeypatch, tmp_path, encoding):
    """What the stream's encoding has is itself; quantbook's symbols it lacks in ASCII (``±``
    ``+/-``, ``—`` ``--``, ``·`` ``*``, ``²`` ``^2``, ``ᵀ`` ``^T``, ``σ`` ``sigma``); any other
    character as Python's escape.  Before, the strict stream failed after the work was done (status 2)."""
    own = {"\u00b1": "+/-", "\u2014": "--", "\u00b7": "*", "\u00b2": "^2", "\u1d40": "^T", "\u2212": "-",
           "\u03c3": "sigma"}
    letters = {LETTER: "\\u03bb", "\u00fc": "\\xfc"}

    def spelled(text: str) -> bytes:   # the UTF-8 run's output, spelled by hand for the encoding
        b = b""
        for c in text:
            try:
                b += c.encode(encoding)
            except UnicodeEncodeError:
                b += (own.get(c) or letters[c]).encode("ascii")
        return b

    path = _codebook_file(tmp_path)
    for argv in (SEARCH, ["show", str(path)], ["evaluate-model", "--help"], ["plot-sweep", "--help"]):
        status, utf8, err = _run(monkeypatch, argv, "utf-8")
        assert (status, err) == (0, b"")
        status, out, err = _run(monkeypatch, argv, encoding)
        assert (status, err) == (0, b"")
        assert out == spelled(utf8.decode("utf-8")), argv
    assert b" +/- " in _run(monkeypatch, SEARCH, "ascii")[1]
    assert b"\nsource: M\\xfcller -- 0 +/- 1\n" in _run(monkeypatch, ["show", str(path)], "ascii")[1]


def test_an_error_naming_a_non_ascii_path_is_one_line(monkeypatch, tmp_path):
    missing = tmp_path / f"dir with space {LETTER}" / f"missing {LETTER}.json"
    status, out, err = _run(monkeypatch, ["show", str(missing)], "ascii")
    assert (status, out) == (2, b"")
    shown = str(missing).replace(LETTER, "\\u03bb").encode("ascii")
    assert err == b"quantbook: error: no such codebook file: " + shown + b"\n"


def test_a_benchmark_prints_by_the_same_rule(monkeypatch):
    # the benchmarks' ± of a Monte Carlo mean failed after the measurement (status 2)
    import runpy

    run = runpy.run_path(str(checkout_path("benchmarks", "_cli.py")))["run"]
    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict", write_through=True)
    monkeypatch.setattr(sys, "stdout", out)
    with pytest.raises(SystemExit) as exc:
        run(lambda: print("6.7e-03 \u00b1 2.1e-04 \u03c3") or 0)
    assert (exc.value.code, out.buffer.getvalue()) == (0, b"6.7e-03 +/- 2.1e-04 sigma\n")
    assert out.errors == "strict"


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "PYTHONIOENCODING", "PYTHONUTF8"))}
    return dict(env, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **values)


#: one process per environment runs the commands (the start-up, numpy's import, is most of the time); their
#: arguments are bytes, read as the locale reads a command line's (os.fsdecode)
_DRIVER = """
import os, sys
from quantbook.cli import main
for argv in ARGV:
    try:
        status = main([os.fsdecode(a) for a in argv])
    except SystemExit as exc:   # --help
        status = exc.code
    sys.stdout.flush()
    sys.stdout.buffer.write(b"<<%d>>\\n" % status)
    sys.stdout.buffer.flush()
    sys.stderr.write("<<>>\\n")
"""

_ENVIRONMENTS = {"PYTHONIOENCODING=ascii": {"PYTHONIOENCODING": "ascii"},
                 "PYTHONIOENCODING=latin-1": {"PYTHONIOENCODING": "latin-1"},
                 "LC_ALL=C PYTHONUTF8=0": {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}}


@pytest.mark.parametrize("setting", list(_ENVIRONMENTS))
def test_the_command_line_in_a_locale_that_is_not_utf8(tmp_path, setting):
    """The interpreter's own streams for the environment (a C locale: ASCII, and file names'
    non-ASCII bytes held as surrogates), and files written there."""
    path = _codebook_file(tmp_path)
    d = path.parent
    argv = [["evaluate-model", "--help"], SEARCH, ["show", str(path)], ["show", str(d / f"missing {LETTER}.json")],
            ["export", str(path), "--format", "c", "--name", "nf4s", "-o", str(d / f"out {LETTER}.h")],
            ["export", str(path), "--format", "json", "-o", str(d / f"out {LETTER}.json")]]
    code = _DRIVER.replace("ARGV", repr([[os.fsencode(a) for a in args] for args in argv]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=_env(**_ENVIRONMENTS[setting]),
                       timeout=300)
    assert r.returncode == 0, r.stderr.decode("utf-8", "replace")
    outs, errs = r.stdout.split(b"<<"), r.stderr.split(b"<<>>\n")
    statuses = [int(o.split(b">>")[0]) for o in outs[1:]]
    outs = [outs[0]] + [o.split(b">>\n", 1)[1] for o in outs[1:]]
    assert statuses == [0, 0, 0, 2, 0, 0], r.stderr.decode("utf-8", "replace")
    latin = setting.endswith("latin-1")
    assert (b"dequant(W\xb7H)\xb7H^T" if latin else b"dequant(W*H)*H^T") in outs[0] and errs[0] == b""
    assert (b" \xb1 " if latin else b" +/- ") in outs[1] and errs[1] == b""
    assert outs[2].startswith(b"nf4-\\u03bb: 4-bit, 16 levels\n") and errs[2] == b""
    # a path is written as it was given: its own bytes where the locale could not decode them
    given = os.fsencode(d / f"missing {LETTER}.json")
    shown = given if setting.startswith("LC_ALL") else given.replace(LETTER.encode(), b"\\u03bb")
    assert errs[3] == b"quantbook: error: no such codebook file: " + shown + b"\n"
    # the header (the command that wrote it, the name and source in its comments) is UTF-8
    header = (d / f"out {LETTER}.h").read_bytes().decode("utf-8")
    assert f"/* {NAME}: 4-bit codebook" in header and f" * Source: {SOURCE}\n" in header
    assert f"(`quantbook export '{path}' --format c --name nf4s`)" in header
    back = quantbook.Codebook.from_json((d / f"out {LETTER}.json").read_text(encoding="utf-8"))
    assert (back.name, back.source) == (NAME, SOURCE)
    assert back.levels.tobytes() == quantbook.get("nf4").levels.tobytes()


def test_quantbooks_own_text_is_readable_on_an_ascii_stream():
    """Every command's help and the errors' units (``σ²`` of the weight domain, what ``σ`` is) on a
    pipe in ASCII: quantbook's own text has an ASCII spelling for each of its symbols, so no escape
    (``\\u03c3``) is left where no user's text is printed.  Before, ``σ`` was written ``\\u03c3``."""
    from test_cli_text import _options

    commands = {tuple(words.split()[:n]) for words, _ in _options() for n in range(len(words.split()) + 1)}
    argv = [[*words, "--help"] for words in sorted(commands)]
    argv += [["evaluate", "nf4"], ["derive", "lloyd", "--bits", "2", "-B", "16"]]
    code = _DRIVER.replace("ARGV", repr([[os.fsencode(a) for a in args] for args in argv]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=_env(PYTHONIOENCODING="ascii"),
                       timeout=300)
    assert r.returncode == 0, r.stderr.decode("ascii", "replace")
    assert r.stdout.count(b"<<0>>") == len(argv) and r.stderr == b"<<>>\n" * len(argv)
    escapes = sorted(set(re.findall(rb"\\(?:x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})", r.stdout)))
    assert escapes == [], escapes
    assert b" sigma^2 " in r.stdout and b"units: sigma = the source's RMS" in r.stdout
    # evaluate's columns line up as spelled: "normalised" at one offset on the MSE and MAE lines
    rows = [ln for ln in r.stdout.decode("ascii").splitlines() if ln.startswith(("  MSE  weight", "  MAE  weight"))]
    assert len(rows) == 2 and rows[0].index("normalised") == rows[1].index("normalised"), rows


@pytest.mark.parametrize("encoding", ["utf-8", "ascii", "latin-1"])
def test_evaluate_columns_line_up_in_each_encoding(encoding):
    r = subprocess.run([sys.executable, "-m", "quantbook", "evaluate", "nf4"], capture_output=True,
                       env=_env(PYTHONIOENCODING=encoding), timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [ln for ln in r.stdout.decode(encoding).splitlines() if ln.startswith(("  MSE  weight", "  MAE  weight"))]
    assert len(rows) == 2 and rows[0].index("normalised") == rows[1].index("normalised"), rows


def test_a_header_names_a_file_by_its_bytes_read_as_utf8():
    """In a C locale a file name's non-ASCII bytes reach Python as surrogates, which no UTF-8
    writer takes: the header names the file as a UTF-8 terminal shows it (a byte that is not
    UTF-8 as U+FFFD); the codebook's name, made from a file's, too."""
    from quantbook.export import export
    from quantbook.naming import resolve_vector

    cb = quantbook.get("nf4")
    held = "dir \udccf\udc83/cb \udcff.json"   # os.fsdecode(b"dir \xcf\x83/cb \xff.json") in a C locale
    for fmt in ("c", "cuda"):
        text = export(cb.replace(name="lloyd@" + held), fmt, name="nf4s", spelling=held)
        assert f"(`quantbook export 'dir {SIGMA}/cb \ufffd.json' --format {fmt} --name nf4s`)" in text
        assert text.startswith(f"/* lloyd@dir {SIGMA}/cb \ufffd.json: 4-bit codebook")
        text.encode("utf-8")
    # a lone surrogate that is no byte (JSON's "\\ud800" in a name) is U+FFFD too
    assert export(cb.replace(name="x\ud800"), "c", name="nf4s").startswith("/* x\ufffd: 4-bit codebook")
    assert f"'dir {SIGMA}/cb \ufffd.json'" in export(resolve_vector("higgs-2d-256"), "c", spelling=held)


def test_names_with_spaces_and_non_ascii_characters_round_trip(tmp_path, capsys):
    path = _codebook_file(tmp_path)
    d = path.parent
    for fmt, suffix in (("json", "json"), ("npy", "npy"), ("bnb", "bin")):
        out = d / f"out {LETTER}.{suffix}"
        assert main(["export", str(path), "--format", fmt, "-o", str(out)]) == 0
        assert capsys.readouterr().err == f"wrote {out} ({fmt}, {out.stat().st_size} " \
            f"{'chars' if fmt == 'json' else 'bytes'})\n"
    assert quantbook.load(str(d / f"out {LETTER}.json")).name == NAME
    np.testing.assert_array_equal(np.load(d / f"out {LETTER}.npy"), quantbook.get("nf4").code.astype(np.float32))
    assert main(["show", str(d / f"out {LETTER}.json"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["name"], shown["source"]) == (NAME, SOURCE)


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
    paths = [*checkout_path("quantbook").rglob("*.py"), *checkout_path("benchmarks").rglob("*.py"),
             *checkout_path("tests").rglob("*.py")]
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


def test_json_output_writes_a_file_names_bytes_as_unicode(capsys):
    """In a C locale Python holds a file name's non-ASCII bytes as lone surrogates; json.dumps
    wrote them as \\udccf escapes, which strict JSON readers refuse (they are no characters).
    The --json output reads them as UTF-8, as the headers and plots do."""
    from quantbook.cli.common import print_json

    print_json({"label": "cb \udccf\udc83.json", "cb \udccf\udc83": [1.5, "\udcff"]})
    out = capsys.readouterr().out
    assert "\\udc" not in out.lower()
    assert json.loads(out) == {"label": f"cb {SIGMA}.json", f"cb {SIGMA}": [1.5, "\ufffd"]}
