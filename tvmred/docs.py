"""The README's operation and reduction tables, generated from the registries
(``python -m tvmred.docs`` prints them; ``tests/test_docs.py`` checks README.md is current)."""

from __future__ import annotations

from .ops import REGISTRY
from .reductions import REDUCTIONS


def ops_table() -> str:
    rows = ["| operation | args | params | description |", "|---|---|---|---|"]
    for name in sorted(REGISTRY):
        d = REGISTRY[name]
        kind = " (loop)" if d.loop else " (macro)" if d.expand else ""
        doc = d.doc.replace("|", "\\|")
        rows.append(f"| `{name}` | {d.nargs} | {d.nparams} | {doc}{kind} |")
    return "\n".join(rows)


def reductions_table() -> str:
    rows = ["| reduction_op | gradient | description |", "|---|---|---|"]
    for name in REDUCTIONS:
        d = REDUCTIONS[name]
        extra = " (`opt_arg=K`)" if d.needs_k else ""
        extra += {"optional": " (`formula2` optional)", "required": " (`formula2` required)"}.get(
            d.weight or "", ""
        )
        doc = d.doc if d.name == name else f"alias of {d.name}"
        rows.append(f"| `{name}`{extra} | {d.grad_doc} | {doc} |")
    return "\n".join(rows)


BEGIN, END = "<!-- generated tables: python -m tvmred.docs -->", "<!-- end of generated tables -->"


def tables() -> str:
    return (
        f"{BEGIN}\n### Operations\n\n{ops_table()}\n\n### Reductions\n\n{reductions_table()}\n{END}"
    )


if __name__ == "__main__":
    print(tables())
