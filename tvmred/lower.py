"""Formula tree + reduction -> a TVM tensor-expression PrimFunc with symbolic sizes.

Kernel signature (every kernel, every target)::

    main(*inputs, *outs, Mb, N)            or, split-j:   main(*inputs, *outs, Mb, N, S, C)
                                           or, tiled:     main(*inputs, *outs, Mb, N, S, Ct)
                                       or, ranged: main(*inputs, tasks, *outs, Mb, N, S, C)

* ``inputs``: the variables the formula uses, by position. A variable of the *output*
  category is ``(Mb * row_block, dim)`` (rows padded by the caller), one of the *reduced*
  category is ``(N, dim)``, a parameter is ``(dim,)``.
* ``outs``: the reduction's state buffers, each ``(Mb * row_block, cols)`` (see
  :mod:`tvmred.reductions`; a Sum has one, in the accumulator dtype); split-j:
  ``(S, Mb * row_block, cols)``, the partial state of each chunk of C reduced rows.
* ``Mb``, ``N``, ``S``, ``C``: int32 scalars (the number of row blocks, of reduced rows, of
  chunks, the rows per chunk).  Tiled (``tile`` > 0): ``Ct`` tiles per chunk, and the
  reduced-index inputs are ``(S * Ct * tile, dim)``, zero-padded by the caller.

Inside, the formula is evaluated once per (i, j) pair: every sub-formula whose value would
otherwise be recomputed (used by several output components, or several times) becomes a
per-pair stage ``s<k>`` (one TE compute with one output per component) that the schedule
computes at the j loop; everything else is inlined into the reduction block ``red``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from . import loops, mathfns, ops
from ._tvm import te as _te
from ._tvm import tirx
from .arrays import compute_dtype
from .errors import FormulaError
from .ops import GUARD_OPS, REGISTRY, node_te, nonpositive_exps
from .reductions.core import KernelSpec, Space
from .schedules.shape import ReductionShape
from .tree import Node, postorder, var_cat, variables
from .wide import components, pair, unpair, wide_root


@dataclass(frozen=True)
class Lowered:
    func: object  # tvm.tirx.PrimFunc (unscheduled)
    shape: ReductionShape
    loops: int = 0  # its loop operations' blocks (loops.bind_lanes)


def slot_of(n: Node, arg: Node) -> int:
    """The first argument slot of ``n`` holding ``arg``."""
    return next(a for a, x in enumerate(n.args) if x is arg)


_NAME = re.compile(r"_a\d+_\d+_")  # the placeholder names _staged gives argument components
INLINE_CHARS = 4000  # see _staged
SELECT_CHARS = 400  # a Select's weight in those characters: TVM's buffer-region analysis
# enters each condition as a constraint scope, so nested selects cost it far more than their
# text (ClampInt(ArgMax(Round(ClampInt(x,-1,0),2)),0,2): 9 s in CompactBufferAllocation;
# with a weight of 200, ArgMin(LessThan(1.5,Round(ClampInt(y,1,2),0))): 27 s, now 0.16 s)
#: The largest kernel _staged lets through, in characters of per-pair expressions (on a
#: 2-vCPU Zen 5: SoftDTW of 8 x 8 cells, 1.5 million, its gradient compiles in 30 s; the Sum
#: of 990 exponentials of KeOps' test_LazyTensor_min_chunked, 12.7 million, in 78 s)
MAX_KERNEL_CHARS = 50_000_000


def _inlined(entry: tuple, size: dict, staged: set) -> int:
    """Characters of a node's expressions with its children inlined (a staged one: a read)."""
    chars, children = entry
    for child, reads, dim in children:
        chars += reads * (8 if child in staged else size.get(child, 0) // dim)
    return chars


def _staged(formula: Node, dtype: str, root_uses: list[int], folded=None) -> set[int]:
    """Ids of the nodes that get a per-pair stage: those one of whose components would be
    evaluated more than once per pair if inlined (counted in the scalar expression DAG, seen
    through inlined parents), unless the operation is pure data movement or ``folded``."""
    order = postorder(formula)
    occ: dict[int, list[list[int]]] = {}  # node -> per output comp -> per (arg, comp) count
    size: dict[int, int] = {}  # node -> characters of its components' inlined expressions
    own: dict[int, tuple] = {}  # node -> (its own characters, [(child, reads, child dim)])
    big: set[int] = set()  # large sub-expressions read several times: staged (see below)
    for n in order:
        if not n.args:
            continue
        # the same child in several argument slots (SqDist(x, y) = (x-y | x-y)) gets the same
        # names: one expression reading it twice is CSE'd by the compiler, not a reason to stage
        names = [[f"_a{slot_of(n, arg)}_{k}_" for k in range(arg.dim)] for arg in n.args]
        exprs = REGISTRY[n.op].te(
            [[tirx().Var(s, dtype) for s in row] for row in names], n.params, dtype
        )
        flat = [s for a, row in enumerate(names) for s in row if slot_of(n, n.args[a]) == a]
        # 1 if the expression reads that component at all: repeats inside one expression are
        # left to the compiler's CSE (staging them would only add register pressure)
        texts = [str(e) for e in exprs]
        read = [set(_NAME.findall(t)) for t in texts]  # one scan per expression
        occ[id(n)] = [[int(s in seen) for s in flat] for seen in read]
        # ... but inlining a large sub-expression read several times by one expression (Exp's
        # and Log's polynomials read their argument four times; ArgMax its components) copies
        # it each time, and nested, the copies multiply: TVM's passes then take minutes.  A
        # component whose inlined text is over INLINE_CHARS is staged when read more than once.
        reps = {s: sum(t.count(s) for t in texts) for s in flat}
        own[id(n)] = (sum(len(t) + SELECT_CHARS * t.count("Select(") for t in texts), [])
        for a, arg in enumerate(n.args):
            if slot_of(n, arg) != a or not arg.args:
                continue
            r = sum(reps[f"_a{a}_{k}_"] for k in range(arg.dim))
            own[id(n)][1].append((id(arg), r, arg.dim))
            if max(reps[f"_a{a}_{k}_"] for k in range(arg.dim)) > 1:
                if size[id(arg)] // arg.dim > INLINE_CHARS:
                    big.add(id(arg))
        size[id(n)] = _inlined(own[id(n)], size, big)
    # constants fold (never worth a stage) -- those TVM folds to literals; any other (an Exp,
    # Log, Asin of a constant: TVM folds no math function) is staged like a varying node
    folded = _folded(order, dtype) if folded is None else folded
    varying = {id(n) for n in order if n.is_var}
    for n in order:
        if any(id(a) in varying for a in n.args) or (n.args and id(n) not in folded):
            varying.add(id(n))
    uses: dict[int, list[int]] = {id(formula): list(root_uses)}
    staged: set[int] = set()
    wide = wide_root(formula, size.get(id(formula), 0))  # staged, through data movement
    for n in reversed(order):
        u = uses.get(id(n), [1] * n.dim)
        d = REGISTRY[n.op] if n.args else None
        stage = (
            id(n) in varying
            and d is not None
            and not d.cheap
            and (max(u) > 1 or d.own_stage or id(n) in big or id(n) in wide)
        )
        for through in (wide, big) if d is not None and d.cheap else ():
            if id(n) in through:  # data movement is never staged: its arguments are
                through.update(id(a) for a in n.args)
        if stage:
            staged.add(id(n))
        if not n.args:
            continue
        weight = u if not stage else [1] * n.dim
        col = 0
        for a in (arg for s, arg in enumerate(n.args) if slot_of(n, arg) == s):
            cnt = uses.setdefault(id(a), [0] * a.dim)
            for k in range(a.dim):
                cnt[k] += sum(w * row[col + k] for w, row in zip(weight, occ[id(n)]))
            col += a.dim
    final: dict[int, int] = {}  # the sizes again, every staged child now read from its stage
    for n in order:
        if id(n) in own:
            final[id(n)] = _inlined(own[id(n)], final, staged)
    text = sum(final.get(i, 0) for i in staged | {id(formula)})
    if text > MAX_KERNEL_CHARS:
        raise FormulaError(
            f"this formula's kernel would be about {text // 1000} thousand characters of "
            f"expressions per pair (the bound is {MAX_KERNEL_CHARS // 1000} thousand): its "
            "compile would take minutes; split it into several reductions"
        )
    return staged


def _folded(order: list, dtype: str) -> dict[int, list]:
    """Constant nodes (in ``order``, children first) TVM's simplifier folds to literals: id ->
    the literals, the kernel's values (TVM's passes left a floor of a literal: a K-min of
    ``Min(OneHot(LessThan(0.5,3),4))`` compiled for 2 minutes).  Not in it: a constant under
    a function TVM does not fold (an Exp's polynomial) -- inlined where read several times,
    copied each time, nested: copies multiply (``SqDist(x,y)*Exp(Exp(Asin(IntInv(2))))``,
    float64: over ten minutes)."""
    from tvm.sym.analyzer import Analyzer

    analyzer = Analyzer()
    literal = (tirx().FloatImm, tirx().IntImm)
    out: dict[int, list] = {}
    for n in order:
        if n.is_var or any(id(a) not in out for a in n.args):
            continue
        exprs = REGISTRY[n.op].te([out[id(a)] for a in n.args], n.params, dtype)
        values = [analyzer.simplify(e) for e in exprs]
        if all(isinstance(v, literal) for v in values):
            out[id(n)] = values
    return out


def _live(func) -> tuple[set[str], set[str]]:
    """(names of all blocks, names of the buffers read by the blocks the reduction block
    ``red`` depends on) of an unscheduled PrimFunc.  Read from the blocks themselves: TVM
    folds expressions (``Select`` with a constant condition, ``x - x``), so the TE graph can
    list inputs that no block reads."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    blocks = {
        sch.get(b).name_hint: sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))
    }
    writer = {w.source.name: name for name, b in blocks.items() for w in b.writes}
    reads: set[str] = set()
    todo = ["red"]
    while todo:
        for r in blocks[todo.pop()].reads:
            name = r.source.name
            if name not in reads:
                reads.add(name)
                if name in writer:
                    todo.append(writer[name])
    # a loop operation's block writes several buffers (loops.splice): live if one is read
    live = {writer[name] for name in reads if name in writer}
    return set(blocks), reads | live


def lower(spec: KernelSpec, row_block: int, math="poly", tile=0, two_pass=0, chains=4) -> Lowered:
    """Build the unscheduled PrimFunc of ``spec``: ``Red_{reduced index} formula``, output
    index of category ``out_cat`` (0: i, so reduce over j -- ``axis=1``; 1: j, so reduce over
    i), ``row_block`` output rows per block.  ``math`` is the target's way of evaluating
    ``exp`` (``TargetTemplate.math``); ``variant.split`` builds the split-j kernel (one
    partial state per chunk of the reduced index).  ``tile`` > 0 builds the tiled kernel:
    always split-j, arguments ``(Mb, N, S, Ct)`` with ``Ct * tile`` reduced rows per chunk,
    the reduced-index inputs padded by the caller to ``S * Ct * tile`` rows.  ``two_pass``:
    the template's j per block of a reduction's two-pass form (``RedDef.two_pass``), used
    by every kernel but the ranged ones (and tiled ones whose tile is not whole blocks);
    ``chains``: TargetTemplate.sum_chains."""
    with mathfns.mode(math), ops.sum_chains(chains):
        return _lower(spec.formula, spec.rdef, spec.out_cat, spec.dtype, spec.acc, row_block,
                      spec.variant, tile, two_pass)  # fmt: skip


def _loader(data_dtype: str, dtype: str) -> Callable:
    """An input value of ``data_dtype`` as ``dtype``.  bfloat16 inputs come as their bits
    (int16, :func:`storage_dtype`), and bfloat16 is float32's upper half: the bits shifted up,
    reinterpreted (TVM's own bfloat16 lowering miscompiles the conversion in a tuple
    reducer's let-bindings: LogSumExpWeight gave garbage)."""
    if data_dtype == dtype:
        return lambda e: e
    if data_dtype == "bfloat16":
        t = tirx()
        return lambda e: t.reinterpret("float32", t.Cast("int32", e) << t.const(16, "int32"))
    return lambda e: e.astype(dtype)


def storage_dtype(dtype: str) -> str:
    """The dtype a kernel declares its inputs of ``dtype`` with (bfloat16: its bits, int16)."""
    return "int16" if dtype == "bfloat16" else dtype


def _lower(formula, red, out_cat, dtype, acc_dtype, row_block, variant, tile=0, two_pass=0):
    """``dtype``: the inputs' dtype; the formula is evaluated in ``compute_dtype(dtype)``
    (float32 for half inputs, converted as they are loaded)."""
    te = _te()
    data_dtype, dtype = dtype, compute_dtype(dtype)
    Mb, N = te.var("Mb"), te.var("N")
    split = variant.split or tile > 0
    if tile:  # whole tiles: the schedule splits j by `tile` without a tail
        S, Ct = te.var("S"), te.var("Ct")
        sizes, chunks = [Mb, N, S, Ct], (S, Ct * tile)
    elif split:
        sizes = [Mb, N, te.var("S"), te.var("C")]
        chunks = tuple(sizes[2:])
    else:
        sizes, chunks = [Mb, N], None
    # ranged: chunk s is task s, the row block tasks[s, 0] of the output-indexed inputs, given
    # as (blocks, row_block, dim): a row is the pair (block, row in block), the index ``i``
    # below, so that each task's rows are one block (its copy compacts to the block)
    tasks = None
    if variant.ranged:
        tasks = (te.placeholder((sizes[2], 3), "int32", name="tasks"), te.var("B"))
    whole = tile % max(two_pass, 1) == 0  # a tiled kernel's tile is whole blocks
    two_pass *= not variant.ranged and whole and red.blocked(formula, data_dtype)
    two_pass *= not variant.sequential
    dup = split and not variant.ranged
    space = Space(N, chunks, tasks, duplicates=dup, two_pass=two_pass, padded=tile > 0)
    rows = row_block if variant.ranged else Mb * row_block  # ranged: Mb is unused
    in_rows = (tasks[1], row_block) if variant.ranged else (rows,)
    reduced_rows = chunks[0] * chunks[1] if tile else N
    inputs = tuple(variables(formula))
    holders = {}
    for v in inputs:
        pos, dim, cat = v.params
        shape = (dim,) if cat == 2 else ((*in_rows, dim) if cat == out_cat else (reduced_rows, dim))
        holders[id(v)] = te.placeholder(shape, storage_dtype(data_dtype), name=f"arg{pos}")
    load = _loader(data_dtype, dtype)

    def leaf(v: Node, cols: Optional[list] = None) -> Callable:
        """(i, j) -> the variable's components there (``cols``: these, by index expression)."""
        h, cat, ks = holders[id(v)], var_cat(v), range(v.dim) if cols is None else cols
        if cat == 2:
            return lambda i, j: [load(h[k]) for k in ks]
        if cat == out_cat:
            return lambda i, j: [load(h[(*pair(i), k)]) for k in ks]
        if (
            split and not tile and not variant.ranged
        ):  # the last chunk runs past N (S*C >= N): its reads stay in
            # bounds (and the reducer masks those elements); tiled: the caller pads
            return lambda i, j: [load(h[tirx().min(j, N - 1), k]) for k in ks]
        return lambda i, j: [load(h[j, k]) for k in ks]

    root_uses = red.root_uses(formula.dim) if red.root_uses and not two_pass else [1] * formula.dim
    if len(red.state(formula.dim, variant, dtype, acc_dtype)) > 1 and not two_pass:
        # a tuple reducer's combine reads the new element several times; staging it also
        # keeps extern calls (asinf, ...) out of the reducer's let-bindings, which TVM 0.27
        # miscompiles when they are vectorised
        root_uses = [2 * u for u in root_uses]
    folded = _folded(postorder(formula), dtype)
    staged = _staged(formula, dtype, root_uses, folded)
    # stages span every j a chunk reads: past N, the last chunk read stage values never
    # computed (Space.duplicates: unmasked reads) -- garbage in a LogSumExp's max (test_split)
    stage_rows = chunks[0] * chunks[1] if dup else reduced_rows
    while True:
        func, outs, blocks_of = _build(te, formula, red, holders, leaf, staged, (rows, in_rows, row_block),
                                       stage_rows, space, sizes, variant, dtype, acc_dtype, tasks,
                                       folded)  # fmt: skip
        emitted, live = _live(func)
        # a stage whose block no live block reads was folded away: inline its node instead
        dead = {
            nid
            for nid, names in blocks_of.items()
            if any(n in emitted and n not in live for n in names)
        }
        if not dead:
            break
        staged -= dead
    stages = [n for names in blocks_of.values() for n in names if n in live and n in emitted]
    live_in = [(holders[id(v)].name, v) for v in inputs if holders[id(v)].name in live]
    row_inputs = tuple((name, v.dim) for name, v in live_in if var_cat(v) == out_cat)
    reduced_inputs = tuple(name for name, v in live_in if var_cat(v) == 1 - out_cat)
    # NormGuard(f, n, y) (or Q: + yq, qc): buffers for the CPU K-min guard (f32/f64 data)
    guard = formula.op in GUARD_OPS and data_dtype == dtype
    guard_bufs = tuple(holders[id(a)].name for a in formula.args[1:]) if guard else ()
    partial = red.partial(variant)  # terms of a partial sum; two-pass: blocks of j
    partial = max(1, partial // two_pass) if partial and two_pass else partial
    shape = ReductionShape(red.kind, int(outs[0].shape[-1]), len(outs), dtype, acc_dtype, row_block,
                           tuple(stages), len(inputs), row_inputs, split, tile, reduced_inputs,
                           partial, variant.ranged, two_pass, guard_bufs)  # fmt: skip
    looped = {id(n) for n in postorder(formula) if REGISTRY[n.op].loop is not None}
    return Lowered(func, shape, sum(nid in looped and bool(set(names) & set(stages))
                                    for nid, names in blocks_of.items()))  # fmt: skip


def _build(te, formula, red, holders, leaf, staged, rows, N, space, sizes, variant, dtype,
           acc_dtype, tasks, folded):  # fmt: skip
    """(PrimFunc, reduction outputs, stage block names per staged node) with the nodes of
    ``staged`` computed in per-pair stages, the ``folded`` ones literals and the others
    inlined.  ``rows``: (state rows, rows of the output-indexed inputs, rows per row
    block)."""
    rows, in_rows, lanes = rows
    stage: dict[int, list] = {}  # staged node -> its per-component tensors
    blocks_of: dict[int, list[str]] = {}
    expneg = nonpositive_exps(formula, frozenset(variant.nonneg))  # e^-y: ops.node_te

    def exprs(root: Node, i, j, inside: bool = False) -> list:
        """The components of ``root`` at (i, j), reading the stages of staged nodes below it
        (iterative: formulas may be nested deeper than Python recurses)."""
        vals: dict[int, list] = {}
        for n in postorder(root, frozenset(stage)):
            if id(n) in stage and (n is not root or not inside):
                vals[id(n)] = [t[(*pair(i), j)] for t in stage[id(n)]]
            elif id(n) in folded:
                vals[id(n)] = folded[id(n)]
            elif n.is_var:
                vals[id(n)] = leaf(n)(i, j)
            else:
                vals[id(n)] = node_te(n, vals, dtype, expneg)
        return vals[id(root)]

    looped: dict[str, tuple] = {}  # the stage blocks of loop operations (tvmred.loops)
    for n in postorder(formula):
        if id(n) in staged and REGISTRY[n.op].loop is not None:
            # a tensor per component as any stage, all written by the first one's block,
            # which runs the operation's program (loops.splice)
            base, args = f"s{len(blocks_of)}", _args_of(n, exprs)
            stage[id(n)] = [
                te.compute((*in_rows, N), loops.component(n.op, k, dtype, args), name=f"{base}_{k}")
                for k in range(n.dim)
            ]
            blocks_of[id(n)] = [f"{base}_{k}" for k in range(n.dim)]
            # lanes: a row block's rows, the most a vectorised row loop has
            looped[base] = (REGISTRY[n.op].loop, [a.dim for a in n.args], n.params, dtype,
                            blocks_of[id(n)], lanes)  # fmt: skip
        elif id(n) in staged:
            base = f"s{len(blocks_of)}"
            comp = components(n.dim, len(in_rows), lambda i, j, n=n: exprs(n, i, j, inside=True))
            stage[id(n)] = [
                te.compute((*in_rows, N), comp(k), name=f"{base}_{k}") for k in range(n.dim)
            ]
            blocks_of[id(n)] = [f"{base}_{k}" for k in range(n.dim)]  # all computed at the same j
    root = lambda i, j: exprs(formula, i, j)  # noqa: E731
    # for reductions that evaluate parts of the formula apart (a two-pass Sum of a scalar
    # times columns): a sub-formula's components, (node) -> (i, j) -> components; a
    # variable's column u (an index expression), (variable, i, j, u) -> its value
    root.part = lambda n: lambda i, j: exprs(n, i, j)
    root.column = lambda v, i, j, u: leaf(v, [u])(i, j)[0]
    root.formula = formula
    outs = red.compute(te, root, rows, space, formula.dim, variant, dtype, acc_dtype)
    inputs = [holders[id(v)] for v in variables(formula)]
    extra = [tasks[0]] if tasks is not None else []
    func = te.create_prim_func([*inputs, *extra, *outs, *sizes])
    return loops.splice(func, looped), outs, blocks_of


def _args_of(n: Node, exprs: Callable) -> Callable:
    """(i, j) -> the components of ``n``'s arguments there, in order."""
    return lambda *ij: [e for a in n.args for e in exprs(a, unpair(ij[:-1]), ij[-1])]
