"""The package is a stack: every import of a tvmred module -- at the top of a file or inside a
function -- goes to the same layer or below, and the import graph has no cycle."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# bottom first; a module may import modules of its own layer or of layers below
LAYERS = [
    ["schedules"],  # the target templates: nothing of tvmred but their own shape.py
    [
        "errors",
        "settings",
        "tree",
        "mathfns",
        "_tvm",
        "arrays",
        "locality",
        "loops",
        "wide",
    ],  # loops: TIR
    ["targets"],  # target dicts, host CPU detection, device types
    ["ops", "complexops"],  # complexops: macros over ops, imported by it
    ["diff"],
    ["parse", "reductions"],
    [
        "cabi",
        "runtime",
        "cache",
        "tunedb",
        "lower",
        "compile_client",
        "cudatool",
        "normguard",
        "hoist",
    ],
    ["build"],
    ["frontend", "launch"],  # text + options -> Reduction; Reduction + tensors -> outputs
    [
        "genred",
        "dispatch",
        "ranged",
        "lazynodes",
        "lazyops",
        "lazyred",
        "lazymeta",
        "lazy",
        "lazycomplex",
        "solve",
        "generic",
        "export",
        "tune",
    ],
    ["torch", "numpy", "jax", "docs", "doctor", "compat", "compile_server", "__main__", "__init__"],
]
LAYER = {name: k for k, names in enumerate(LAYERS) for name in names}


def modules() -> dict[str, Path]:
    """Module name relative to tvmred ("ops", "torch", "torch.cluster", "schedules.cpu",
    "__init__" for tvmred itself) -> its file."""
    out = {}
    for base, prefix in ((ROOT / "tvmred", []), (ROOT / "schedules", ["schedules"])):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            parts = prefix + [p for p in parts if p != "__init__"]
            out[".".join(parts) or "__init__"] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The tvmred modules ``name`` imports, anywhere in the file (functions included)."""
    package = name if path.name == "__init__.py" and name != "__init__" else name.rpartition(".")[0]
    package = "" if name == "__init__" else package
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "tvmred":
                mod = node.module[len("tvmred") :].lstrip(".")
            else:
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}" if mod else a.name
                found.add(sub if sub in known else mod if mod in known else "__init__")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "tvmred":
                    found.add(a.name[len("tvmred") :].lstrip(".") or "__init__")
    return found - {name}


def layer(name: str) -> int:
    top = name.split(".")[0]
    if top in LAYER:
        return LAYER[top]
    raise AssertionError(f"module {name} is in no layer of tests/test_layering.py")


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_every_module_has_a_layer():
    for name in graph():
        layer(name)


def test_no_import_goes_up():
    bad = [
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
        for a, deps in graph().items()
        for b in deps
        if layer(b) > layer(a)
    ]
    assert not bad, "\n".join(bad)


def test_schedules_import_nothing_of_tvmred():
    for name, deps in graph().items():
        if name.startswith("schedules"):
            assert all(d.startswith("schedules") for d in deps), (name, deps)


def test_no_cycle():
    g = graph()
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        if state.get(n) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(n) :] + [n]))
        if state.get(n) == 2:
            return
        state[n] = 1
        for m in sorted(g[n]):
            visit(m, path + [n])
        state[n] = 2

    for n in sorted(g):
        visit(n, [])


@pytest.mark.parametrize("bad", ["upward", "cycle"])
def test_the_checks_fail_on_a_bad_graph(bad, monkeypatch):
    """The checks above catch what they are meant to (a fake edge added to the real graph)."""
    g = graph()
    if bad == "upward":
        g["ops"] = g["ops"] | {"build"}
        monkeypatch.setattr(__import__(__name__), "graph", lambda: g)
        with pytest.raises(AssertionError, match="ops .* imports build"):
            test_no_import_goes_up()
    else:
        g["tree"] = g["tree"] | {"mathfns"}
        g["mathfns"] = g["mathfns"] | {"tree"}
        monkeypatch.setattr(__import__(__name__), "graph", lambda: g)
        with pytest.raises(AssertionError, match="cycle"):
            test_no_cycle()


#: The most lines a module may have; the op registry (one record per op) is the exception.
LINE_BUDGET = 400
BUDGET_EXCEPTIONS = {"ops"}


def test_every_module_is_within_the_line_budget():
    over = [
        f"{name}: {n} lines"
        for name, path in modules().items()
        if name not in BUDGET_EXCEPTIONS and (n := len(path.read_text().splitlines())) > LINE_BUDGET
    ]
    assert not over, f"modules over {LINE_BUDGET} lines: " + ", ".join(over)


def test_no_symlink_in_the_tree():
    """schedules/ is installed as tvmred.schedules by pyproject.toml's package-dir; a link
    would break checkouts without symlink support and double every grep hit."""
    import subprocess

    files = subprocess.run(
        ["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True
    ).stdout.splitlines()
    if not files:
        pytest.skip("not a git checkout")
    links = [ln.split("\t", 1)[1] for ln in files if ln.startswith("120000")]
    assert not links, links
    assert not any(p.is_symlink() for p in (ROOT / "tvmred").rglob("*"))


def test_every_package_is_installed():
    """pyproject.toml lists each package explicitly (``tvmred.schedules`` lives in
    ``schedules/``): a package directory missing from the list would be left out of a wheel,
    and ``import tvmred`` would fail after ``pip install .`` (an editable install hides it)."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python >= 3.11")
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {"tvmred", "tvmred.schedules"} | {
        "tvmred." + p.parent.name for p in (ROOT / "tvmred").glob("*/__init__.py")
    }
    assert listed == found, (sorted(found - listed), sorted(listed - found))
