"""One option, one meaning: an option that several commands take is defined once, with the same
spelling, short flag, type, metavar and default in each, and its help says the same thing (where
commands differ on purpose, the allow-lists below say why and the help says how); a short flag
names one option everywhere; and what a command uses where an option is left out is the default
of the Python API it calls."""

import argparse
import ast
import inspect
from collections import defaultdict

import numpy as np
import pytest

from quantbook.cli import build_parser, common, main
from quantbook.cli.common import UsageError

from checkout import checkout_path
from test_cli_text import _options, _stated

#: (option, attribute) where commands differ on purpose; every entry must still be needed
DELIBERATE = {
    # each command takes the block sizes of the library it feeds: the exact derivations' (2..10**7), the
    # byte layouts' (powers of two, 16..4096: evaluate-model), or, where that depends on other options,
    # any integer its library checks (export: --scale or a lloyd-... name; derive vq: a multiple of P)
    ("--block-size", "type"),
    # derive vq blocks only with --scale rms|absmax, so its -B has no default
    ("--block-size", "default"),
    # plot draws the block density and plot-sweep sweeps the block size: without blocks (none) neither exists
    ("--normalization", "choices"),
    # the quantile code is classically equal-probability in y = x/absmax; Lloyd fits the weights' error
    ("--domain", "default"),
    # derive vq's --scale divides each block of vectors by its RMS or absmax (evaluate-model's --vq-scale);
    # without a rule export's header describes no layout, and the others' blocks keep the float32 absmax
    # (evaluate-model names it by its rule, float32, plot-sweep, which does not take that rule, by its words)
    ("--scale", "choices"), ("--scale", "metavar"), ("--scale", "default"),
    # each command's sample is its own: a fit's (seed 0), a fresh evaluation's (1), the vector audit's
    ("--samples", "default"), ("--seed", "default"),
    # a picture needs a file; export prints the codebook to standard output without one, derive vq its text,
    # plot-sweep its numbers
    ("--output", "required"), ("--output", "default"),
}

ATTRIBUTES = ("option_strings", "dest", "class", "nargs", "const", "type", "choices", "metavar", "required",
              "default")


def _shared() -> dict[str, dict[str, argparse.Action]]:
    """``{--option: {command: action}}`` of every long option that two or more commands take."""
    by_flag = defaultdict(dict)
    for (command, flag), action in _options().items():
        if flag.startswith("--"):
            by_flag[flag][command] = action
    return {flag: takers for flag, takers in by_flag.items() if len(takers) > 1}


def _number_or_text(value):
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, (tuple, list)):
        return ",".join(f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in value)
    return str(value)


def _default(action: argparse.Action):
    """What the command uses where the option is left out: a switch's off, the parser's default,
    else the one its help states (test_cli_text checks that against the library), else None."""
    if action.nargs == 0:
        return bool(action.default)
    if action.default is not None:
        return _number_or_text(action.default)
    if "default" in (action.help or ""):
        return _number_or_text(_stated(action.help))
    return None


def _attribute(action: argparse.Action, name: str):
    if name == "class":
        return type(action).__name__
    if name == "default":
        return _default(action)
    value = getattr(action, name)
    return tuple(value) if isinstance(value, list) else value


def test_a_shared_option_is_the_same_option_in_every_command():
    differences, used = [], set()
    for flag, takers in _shared().items():
        for name in ATTRIBUTES:
            values = {command: _attribute(a, name) for command, a in takers.items()}
            if len(set(map(repr, values.values()))) == 1:
                continue
            if (flag, name) in DELIBERATE:
                used.add((flag, name))
            else:
                differences.append(f"{flag} {name}: {values}")
    assert not differences, "\n".join(differences)
    assert used == DELIBERATE, f"no longer different: {DELIBERATE - used}"


def test_a_shared_option_is_read_by_one_rule_of_cli_common():
    """A type of its own (an int_in range, a copy in a command module) would refuse what another
    command takes for the same option: each is one of cli.common's types."""
    for flag, takers in _shared().items():
        for command, a in takers.items():
            assert a.type is None or getattr(common, a.type.__name__, None) is a.type, (flag, command, a.type)


def test_a_shared_option_s_help_says_one_thing():
    """The same help everywhere, or (where commands differ on purpose) each help says the option's
    words (cli.common.OPTION_WORDS) and what differs."""
    different = set()
    for flag, takers in _shared().items():
        helps = {command: a.help for command, a in takers.items()}
        if len(set(helps.values())) == 1:
            continue
        different.add(flag)
        assert flag in common.OPTION_WORDS, f"{flag}: help differs and no OPTION_WORDS: {helps}"
        for command, text in helps.items():
            assert common.OPTION_WORDS[flag] in text, (flag, command, text)
    assert set(common.OPTION_WORDS) == different, set(common.OPTION_WORDS) ^ different


def test_a_shared_option_is_defined_in_one_place():
    """Every shared option has one add_argument call in the command line's source: commands
    reach it through one helper, so no copy can drift."""
    sites = defaultdict(list)
    for path in sorted(checkout_path("quantbook", "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and str(arg.value).startswith("--"):
                        sites[arg.value].append(f"{path.name}:{node.lineno}")
    shared = _shared()
    assert len(shared) >= 12, sorted(shared)
    for flag in shared:
        assert len(sites[flag]) == 1, (flag, sites[flag])


def test_a_short_flag_names_one_option():
    meaning = defaultdict(set)
    for (command, flag), a in _options().items():
        for short in (o for o in a.option_strings if not o.startswith("--")):
            meaning[short].add(flag)
    assert {"-B", "-o"} <= set(meaning)
    assert all(len(flags) == 1 for flags in meaning.values()), dict(meaning)


# ------------------------------------------------------------------------ the API's defaults
def _api():
    """``{command: the public functions it calls}``, whose parameters its options are."""
    from quantbook.derive.lloyd import quantile, solve_lloyd
    from quantbook.derive.metrics import evaluate
    from quantbook.derive.normal_float import nf
    from quantbook.derive.search_lloyd import evaluate_search, solve_search_lloyd
    from quantbook.derive.vq import VQRecipe, solve_vq
    from quantbook.export import export
    from quantbook.model import evaluate_model
    from quantbook.model.evaluate import VQOptions
    from quantbook.model.quality import evaluate_quality
    from quantbook.plots import plot_levels, plot_sweep
    from quantbook.verify.vq import audit_vectors

    return {"derive nf": [nf], "derive lloyd": [solve_lloyd, solve_search_lloyd], "derive quantile": [quantile],
            "derive vq": [VQRecipe, solve_vq], "evaluate": [evaluate, evaluate_search],
            "evaluate-model": [evaluate_model, evaluate_quality, VQOptions], "export": [export],
            "audit": [audit_vectors], "plot": [plot_levels], "plot-sweep": [plot_sweep]}


#: an option's dest -> (the parameter, what of its default the option is), where the names differ
RENAMED = {"fix": ("fixed", None), "rotate": ("rotations", None), "format": ("fmt", None), "file": ("path", None),
           "output": ("out", None), "min_block": ("block_sizes", min), "max_block": ("block_sizes", max)}

#: (command, parameter, function) whose defaults differ on purpose; the option's help names the API's
API_DELIBERATE = {
    # one block size, 64, in every command, a search rule's fit too (solve_search_lloyd keeps NVFP4's 16)
    ("derive lloyd", "block_size", "solve_search_lloyd"),
    # the search fit runs only where --scale names a search rule
    ("derive lloyd", "scale", "solve_search_lloyd"),
    # evaluate_quality runs only where --task names a task: without it, evaluate_model
    ("evaluate-model", "task", "evaluate_quality"),
}


def _name(fn, dest: str) -> tuple[str | None, object]:
    """The name of ``fn``'s parameter that option ``dest`` sets, and what of its default the option is."""
    if fn.__name__ == "VQOptions":   # evaluate-model's vector options are --vq-*
        return (dest[3:] if dest.startswith("vq_") else None), None
    return RENAMED.get(dest, (dest, None))


def _parameter(fn, dest: str):
    """The default of ``fn``'s parameter that option ``dest`` sets (inspect.Parameter.empty: none)."""
    name, of = _name(fn, dest)
    p = inspect.signature(fn).parameters.get(name)
    if p is None or p.default is inspect.Parameter.empty:
        return inspect.Parameter.empty
    return p.default if of is None else of(p.default)


def test_every_default_the_command_line_uses_is_the_api_s():
    """The CLI's default of an option (the parser's or, left to the library, the one its help
    states) is the default of the parameter it sets, in every function the command calls.  A
    parameter whose default is None is the library's choice, which the command leaves to it."""
    api = _api()
    takes_options = {cmd for (cmd, flag), a in _options().items() if flag.startswith("--") and flag != "--json"}
    assert takes_options <= set(api), takes_options - set(api)
    compared, used = 0, set()
    for (command, flag), action in _options().items():
        if command not in api or action.required:
            continue
        cli = _default(action)
        for fn in api[command]:
            want = _parameter(fn, action.dest)
            if want is inspect.Parameter.empty or want is None:
                continue
            compared += 1
            if cli != _number_or_text(want):
                key = (command, _name(fn, action.dest)[0], fn.__name__)
                assert key in API_DELIBERATE, f"{command} {flag}: {cli!r}, {fn.__name__}: {want!r}"
                assert str(want) in action.help, f"{command} {flag}: the help does not say {fn.__name__}'s {want!r}"
                used.add(key)
    assert used == API_DELIBERATE, API_DELIBERATE - used
    assert compared > 40, compared


# ------------------------------------------------------------------ the block sizes, by their rules
def _derivable(b: int) -> bool:
    """The exact derivations' block sizes (quantbook.naming's grammar: B from 2 to 10**7)."""
    return 2 <= b <= 10**7


def _stored(b: int) -> bool:
    """The byte layouts' block sizes (docs/format.md: powers of two from 16 to 4096)."""
    return b in {2**k for k in range(4, 13)}


@pytest.mark.parametrize("argv, rule", [
    (["derive", "lloyd"], _derivable), (["derive", "quantile"], _derivable), (["evaluate", "nf4"], _derivable),
    (["plot", "nf4", "-o", "x.png"], _derivable), (["plot-sweep", "nf4", "-o", "x.png", "--min-block"], _derivable),
    (["plot-sweep", "nf4", "-o", "x.png", "--max-block"], _derivable), (["evaluate-model", "m.safetensors"], _stored),
])
def test_a_block_size_is_refused_by_its_library_s_rule_at_the_parser(argv, rule):
    """Each -B (and plot-sweep's ends) takes exactly the block sizes of the library that reads it, and
    refuses the others before any work, naming the option in the same words everywhere: plot stopped
    at 10**6, which the derivations take, and derive and evaluate refused 0 only after parsing."""
    parser = build_parser()
    option = [] if argv[-1].startswith("--") else ["-B"]
    for b in (-4, 0, 1, 2, 3, 15, 16, 48, 64, 4096, 8192, 2 * 10**6, 10**7, 10**7 + 1):
        try:
            parser.parse_args([*argv, *option, str(b)])
            took = True
        except UsageError as exc:
            took = False
            words = "must be between 2 and 10**7" if rule is _derivable else "must be a power of two from 16 to 4096"
            assert str(exc).endswith(f"{words}, got {b}"), str(exc)
        assert took == rule(b), (argv, b)


# ------------------------------------------------------------------- the vector audit's sample
def test_audit_samples_is_read_by_the_library_s_rule(monkeypatch, capsys):
    """audit --vector --samples is the library's rule, as every other --samples (its parser had its
    own, 100 to 10**9 vectors: past 2**29 values the audit drew until memory ran out)."""
    from quantbook.verify import vq

    def no_draw(*args, **kwargs):
        raise AssertionError("a sample was drawn")

    monkeypatch.setattr(vq, "draw_vectors", no_draw)
    assert main(["audit", "--vector", "higgs-2d-16", "--samples", str(10**9)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--samples {10**9} vectors of 2 values is more than {2**29} values" in err, err


@pytest.mark.parametrize("argv, option", [
    (["audit", "--vector", "higgs-2d-16", "--samples", "10"], "--samples"),
    (["derive", "vq", "--dim", "2", "--points", "64", "--restarts", "0"], "--restarts"),
    (["derive", "lloyd", "--bits", "9"], "--bits"),
])
def test_a_library_error_names_the_option_the_user_typed(argv, option, monkeypatch, capsys):
    """The library words a broken rule by its parameter (``samples must be ...``); on the command line
    the subject is the option the user typed, by the one rewriting of library messages (cli._as_options)."""
    from quantbook.verify import vq

    monkeypatch.setattr(vq, "draw_vectors", lambda *a, **k: pytest.fail("a sample was drawn"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"quantbook: error: {option} must be "), err


def test_a_word_that_is_not_the_option_typed_is_left_alone(capsys, tmp_path):
    from quantbook.cli import _as_options

    bad = tmp_path / "x.json"   # a codebook file's own field, named like an option the user typed
    bad.write_text('{"name": "x", "bits": 2, "levels": [-1, 0, 0.5, 1], "source": 1}', encoding="utf-8")
    assert main(["evaluate", str(bad), "--source", "laplace"]) == 2
    assert "x.json: source must be a string" in capsys.readouterr().err

    parser = build_parser()
    args = parser.parse_args(["audit", "--vector", "--samples", "10"])
    # the subject of another sentence or of a file's rule, and an option the user did not type, stay words
    assert _as_options("the samples must be drawn", parser, args) == "the samples must be drawn"
    assert _as_options("g.json: samples must be an integer", parser, args) == "g.json: samples must be an integer"
    args = parser.parse_args(["audit", "--vector"])
    assert _as_options("samples must be an integer", parser, args) == "samples must be an integer"


def test_the_derivations_block_size_is_one_rule():
    """The derivations, the name grammar (a lloyd-... name's B) and the command line's -B refuse a block
    size by one rule (quantbook.codebooks.blocks), in its words."""
    from quantbook import naming
    from quantbook.codebooks.blocks import MAX_DERIVED_BLOCK_SIZE
    from quantbook.derive import lloyd

    assert naming.MAX_BLOCK_SIZE == MAX_DERIVED_BLOCK_SIZE
    too_big = MAX_DERIVED_BLOCK_SIZE + 1
    with pytest.raises(ValueError) as derived:
        lloyd(block_size=too_big)
    with pytest.raises(ValueError) as named:
        naming.resolve_codebook(f"lloyd-l2-{too_big}")
    with pytest.raises(ValueError) as context:
        naming.resolve_codebook("lloyd-l2", block_size=too_big)
    rule = f"must be between 2 and 10**7, got {too_big}"
    assert str(derived.value) == f"block size {rule}"
    assert str(named.value) == f"lloyd-l2-{too_big}: block size B {rule}"
    assert str(context.value) == f"lloyd-l2: block size {rule}"


def test_the_command_line_uses_no_private_name_of_the_library():
    """A rule the command line needs is public where it lives (cli.common read -B by a private
    function of quantbook.derive.block)."""
    cli = checkout_path() / "quantbook" / "cli"
    private = []
    for path in sorted(cli.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level >= 2 or \
                    isinstance(node, ast.ImportFrom) and (node.module or "").startswith("quantbook.") \
                    and not (node.module or "").startswith("quantbook.cli"):
                private += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert not private, private
