"""``audit``: re-derive every published table and compare it bit for bit."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import add_json_flag, add_sample, print_json

__all__ = ["register"]


def _row_json(row, entry) -> dict[str, Any]:
    """An audit row in the JSON vocabulary: ``recipe`` is the recipe object of the audited
    ``entry``, as in every other command's output; its one-line form is ``recipe_text``."""
    from ..codebooks.codebook import format_recipe

    recipe = entry.codebook.recipe
    return {**row.to_dict(), "recipe": recipe, "recipe_text": format_recipe(recipe)}


def _cmd_audit_vector(args) -> int:
    from ..io.progress import progress_bar
    from ..verify.vq import AUDIT_SAMPLES, AUDIT_SEED, audit_vectors, format_row

    samples = AUDIT_SAMPLES if args.samples is None else args.samples
    seed = AUDIT_SEED if args.seed is None else args.seed
    from ..codebooks.vector_registry import vector_registry

    n = sum(1 for e in vector_registry().values() if e.codebook.recipe is None) if not args.names else len(args.names)
    with progress_bar(total=n, desc="auditing", unit="grid") as bar:
        rows = audit_vectors(samples=samples, seed=seed, names=args.names or None, progress=bar.step)
    if args.json:
        print_json([r.to_dict() for r in rows])
    else:
        for r in rows:
            print("\n".join(format_row(r)))
    return 0


def _cmd_audit(args) -> int:
    from .common import UsageError

    if args.vector:
        if args.layouts:
            raise UsageError("--layouts audits the scalar tables' layouts, not --vector")
        return _cmd_audit_vector(args)
    if args.samples is not None or args.seed is not None:
        raise UsageError("--samples and --seed apply only with --vector")
    from ..io.progress import progress_bar
    from ..verify.audit import audit, audit_entries, is_registry_entry
    from ..verify.layouts import format_finding

    entries = audit_entries(args.names or None)   # every name and file read before any work
    with progress_bar(total=len(entries), desc="auditing", unit="table") as bar:
        rows = audit(entries, progress=bar.step)
    if args.layouts:  # findings only: they never change a row's verdict or the exit status
        from ..verify.layouts import LAYOUTS, attach_layouts

        # the layouts are the registry's tables': a file's table of the same name is not one of them
        laid_rows = [r for r, e in zip(rows, entries) if is_registry_entry(e)]
        laid = {lay.codebook for lay in LAYOUTS} & {r.name for r in laid_rows}
        with progress_bar(total=len(laid), desc="layouts", unit="table") as bar:
            attach_layouts(laid_rows, progress=bar.step)
    if args.json:
        print_json([_row_json(r, e) for r, e in zip(rows, entries)])
    else:
        for r in rows:
            fields = (f"bit_exact={'-' if r.bit_exact is None else ('yes' if r.bit_exact else 'no')}"
                      f"  max_ulp={'-' if r.max_ulp is None else r.max_ulp}"
                      f"  max_abs_diff={'-' if r.max_abs_diff is None else f'{r.max_abs_diff:.3g}'}")
            print(f"[{r.status:>11}] {r.name}: {r.recipe}")
            print(f"         {fields}  expect={r.expect}")
            print(f"         {r.explanation}")
            for finding in r.details.get("layouts", ()):
                print(f"         layout {format_finding(finding)}")
    failed = [r.name for r in rows if r.failed]
    if failed:
        print(f"quantbook: audit: not reproduced: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``audit`` to the command line's sub-commands ``sub``."""
    s = sub.add_parser("audit", help="re-derive the published tables (every one, or those named) and compare "
                                     "bit for bit "
                                     "(--vector: audit the vector grids)",
                       description="Re-derive the published tables (every one, or those named) from their recipes "
                                   "and compare them bit for bit; a FILE.json is judged against its own recipe, "
                                   "bit for bit. Exit status 1 when a table expected to reproduce "
                                   "(bit-exact or decimals) does not, with its name on standard error; the vector "
                                   "grids' findings (--vector) and --layouts never fail.")
    s.add_argument("names", nargs="*", metavar="NAME|FILE.json",
                   help="the tables to audit (default: every one `quantbook list` names; with --vector every "
                        "published grid); a codebook file is re-derived from its own recipe and must match it "
                        "bit for bit")
    s.add_argument("--layouts", action="store_true",
                   help="also audit the 4-bit tables in the scaled layouts they were made for (NVFP4, MXFP4, "
                        "float16 block 32, bitsandbytes): expected MSE, the layout's optimum, the loss")
    s.add_argument("--vector", action="store_true",
                   help="audit the vector grids instead (HIGGS): MSE per dimension on N(0,1), gap to D(R), "
                        "Lloyd fixed point, gain of the derived grid (docs/vector-codebooks.md)")
    add_sample(s, "with --vector: ", "vectors", "Monte-Carlo sample of each grid", "10^6", "20241126")
    add_json_flag(s)
    s.set_defaults(func=_cmd_audit)
