"""Loop operations: formula operations whose per-pair value is a small program with loops and
local arrays (a dynamic programme such as soft-DTW), not one expression per component.

Such an operation (``OpDef.loop``) is computed in a per-pair stage of its own, one block
writing all its components, like every staged node (computed at the reduced index j for a
whole row block, vectorised over the rows on CPUs).  The TE graph cannot say "a loop", so
:func:`placeholder` stands in for it -- one opaque call per component reading every argument
component, which gives the stage its reads and keeps the analysis of ``lower._staged``
generic -- and :func:`splice`, run on the PrimFunc before it is scheduled, replaces each such
stage's body by the operation's program (:class:`Program`) and its component loop by one block
writing the components together.  The program's arrays are the block's own, with a column
per SIMD lane where the row loop is vectorised (:func:`bind_lanes`, after scheduling): TVM's
workspace (L1/L2-resident) on CPUs, each thread's local memory on GPUs.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from ._tvm import tirx

PREFIX = "tvmred_loop_"  # the placeholder calls' names: PREFIX + the operation's name


def placeholder(name: str, dim: Callable[..., int]) -> Callable:
    """The ``te`` rule of a loop operation (``dim``: its dimension rule): component k is an
    opaque call of all argument components and k (TVM folds no such call: a loop operation
    of constants is staged like a varying one)."""

    def rule(args: list, params: tuple, dt: str) -> list:
        flat = [e for a in args for e in a]
        return [call(name, flat, k, dt) for k in range(dim(*[len(a) for a in args], *params))]

    return rule


def component(name: str, k: int, dt: str, args: Callable) -> Callable:
    """The TE body of component ``k`` of a loop operation's stage: its placeholder call of
    ``args(*indices)``, the components of its arguments."""
    return lambda *ij: call(name, args(*ij), k, dt)


def call(name: str, flat: list, k: Any, dt: str) -> Any:
    t = tirx()
    return t.call_pure_extern(dt, PREFIX + name, *flat, k)


class Array:
    """A program's array: ``a[k]`` reads value k of the current row's copy."""

    def __init__(self, buffer: Any, row: list) -> None:
        self.buffer, self.row = buffer, row

    def __getitem__(self, k: Any) -> Any:
        return tirx().BufferLoad(self.buffer, [_index(k), *self.row])


def _index(k: Any) -> Any:
    return tirx().const(k, "int32") if isinstance(k, int) else k


class Program:
    """The statements of a loop operation's block, built in order: arrays (:meth:`array`),
    stores (:meth:`set`), bindings (:meth:`let`) and counted loops (:meth:`loop`).

    An array is ``(size, lanes)``, indexed ``[k, lane]``: ``lane`` is a variable that
    :func:`bind_lanes` makes, after scheduling, the block's position in a vectorised row loop
    (one column per SIMD lane, so the lanes read and write whole vectors: TVM 0.27 widens no
    allocation inside a vectorised loop), or 0 where the rows run one at a time."""

    def __init__(self, dt: str, lane: Any, lanes: int) -> None:
        self.dt = dt
        self.lane, self.lanes = lane, lanes
        self.stmts: list = []
        self.buffers: list = []

    def const(self, v: float) -> Any:
        return tirx().const(v, self.dt)

    def array(self, name: str, size: int, fill: Any = None) -> Array:
        """An array of ``size`` values per row (``fill``: their first value)."""
        t = tirx()
        buf = t.decl_buffer((size, self.lanes), self.dt, name=f"{name}_loop", scope="local")
        self.buffers.append(buf)
        arr = Array(buf, [self.lane])
        if fill is not None:
            if size == 1:
                self.set(arr, 0, fill)
            else:
                with self.loop(f"{name}_k", size) as k:
                    self.set(arr, k, fill)
        return arr

    def set(self, arr: Array, index: Any, value: Any) -> None:
        t = tirx()
        self.stmts.append(t.BufferStore(arr.buffer, value, [_index(index), *arr.row]))

    def let(self, name: str, value: Any) -> Any:
        """``value`` (of the program's dtype) computed once here, a variable for the
        statements that follow."""
        t = tirx()
        v = t.Var(name, self.dt)
        self.stmts.append(t.Bind(v, value))
        return v

    @contextlib.contextmanager
    def loop(self, name: str, count: int, reverse: bool = False) -> Iterator[Any]:
        """for i in range(count) (``reverse``: count - 1 down to 0): the statements built
        inside the ``with`` form its body; yields i."""
        t = tirx()
        outer, self.stmts = self.stmts, []
        k = t.Var(name, "int32")
        yield (t.const(count - 1, "int32") - k) if reverse else k
        body, self.stmts = self.stmts, outer
        if count > 0 and body:
            self.stmts.append(t.For(k, 0, count, t.ForKind.SERIAL, _seq(body)))

    def body(self) -> Any:
        return _seq(self.stmts)


def _seq(stmts: list) -> Any:
    t = tirx()
    return stmts[0] if len(stmts) == 1 else t.SeqStmt(stmts)


def splice(func: Any, loops: dict[str, tuple]) -> Any:
    """``func`` with the stage blocks of each loop operation (its name -> (the operation's
    ``loop`` rule, its argument dims, params, dtype, its components' block names, lanes)) made
    one: the first of them create_prim_func kept (it leaves out the computes no block reads)
    runs the operation's program and writes every component read; the others are removed."""
    if not loops:
        return func
    from tvm import s_tir

    t = tirx()
    root = func.body.block
    buffers = {b.name: b for b in root.alloc_buffers}
    program: dict[str, tuple] = {}  # the block running each operation's program
    dropped: set[str] = set()
    for entry in loops.values():
        names = [name for name in entry[4] if name in buffers]
        if names:
            program[names[0]] = entry
            dropped.update(names[1:])

    def visit(realize: Any, loop: Any) -> Any:
        name = realize.block.name_hint
        if name in dropped:
            return None
        if name in program:
            return _spliced(realize, program[name], buffers, s_tir, t)
        return realize

    return func.with_body(_rebuild(func.body, visit))


def _rebuild(stmt: Any, visit: Callable, loop: Any = None) -> Any:
    """``stmt`` with each block realisation r replaced by ``visit(r, loop)`` (``loop``: the
    For right above it): r itself -- its block is then rebuilt the same way --, another
    statement, or None (removed, and a loop or sequence left empty with it)."""
    from tvm import s_tir

    t = tirx()
    if isinstance(stmt, s_tir.SBlockRealize):
        out = visit(stmt, loop)
        if out is not stmt:
            return out
        b = stmt.block
        init = None if b.init is None else _rebuild(b.init, visit)
        new = s_tir.SBlock(b.iter_vars, b.reads, b.writes, b.name_hint, _rebuild(b.body, visit),
                           init, b.alloc_buffers, b.match_buffers, b.annotations)  # fmt: skip
        return s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, new)
    if isinstance(stmt, t.SeqStmt):
        seq = [x for x in (_rebuild(s, visit) for s in stmt.seq) if x is not None]
        return _seq(seq) if seq else None
    if isinstance(stmt, t.For):
        body = _rebuild(stmt.body, visit, stmt)
        if body is None:
            return None
        return t.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body,
                     stmt.thread_binding, stmt.annotations, stmt.step)  # fmt: skip
    if isinstance(stmt, t.IfThenElse):
        other = None if stmt.else_case is None else _rebuild(stmt.else_case, visit)
        return t.IfThenElse(stmt.condition, _rebuild(stmt.then_case, visit), other)
    return stmt


LANE = "tvmred_lane"  # the annotation of a loop operation's block: its lane variable


def _spliced(realize: Any, entry: tuple, buffers: dict, s_tir: Any, t: Any) -> Any:
    """The SBlockRealize of one block computing every component of a loop operation."""
    rule, argdims, params, dt, names, lanes = entry
    block = realize.block
    store = block.body
    flat = list(store.value.args)[1:-1]  # the call's arguments: its name, the components..., k
    args, pos = [], 0
    for d in argdims:
        args.append(flat[pos : pos + d])
        pos += d
    # a component no block reads has no buffer (create_prim_func leaves its compute out)
    outs = [buffers.get(name) for name in names]
    lane = t.Var(LANE, "int32")
    prog = Program(dt, lane, lanes)

    def emit(k: int, v: Any) -> None:
        if outs[k] is not None:
            prog.stmts.append(t.BufferStore(outs[k], v, list(store.indices)))

    rule(prog, args, params, emit)
    # the lane is 0 until bind_lanes makes it an iteration variable (a block uses no variable
    # it does not define)
    prog.stmts.insert(0, t.Bind(lane, t.const(0, "int32")))
    (w,) = block.writes
    new = s_tir.SBlock(
        block.iter_vars,
        block.reads,
        [t.BufferRegion(b, w.region) for b in outs if b is not None],
        block.name_hint,
        prog.body(),
        None,
        [*block.alloc_buffers, *prog.buffers],
        annotations={LANE: lane},
    )
    return s_tir.SBlockRealize(realize.iter_values, realize.predicate, new)


def bind_lanes(mod: Any, count: int) -> Any:
    """A scheduled module with the lane variable of each of its ``count`` loop operations'
    blocks made an opaque iteration variable of the block: bound to the row loop right above
    the block where that loop is vectorised (its arrays then get a column per lane, allocated
    above the loop: TVM puts a buffer an opaque variable indexes above the loops its binding
    uses), else to 0."""
    if not count:
        return mod
    from tvm import ir, s_tir

    t = tirx()
    func = mod["main"]
    found = [0]

    def block_of(realize: Any, loop: Any) -> Any:
        b = realize.block
        lane = b.annotations[LANE]
        vector = loop is not None and loop.kind == t.ForKind.VECTORIZED
        extent = int(loop.extent) if vector else 1
        value = loop.loop_var if vector else t.const(0, "int32")
        iv = t.IterVar(ir.Range.from_min_extent(0, extent), lane, 4)  # kOpaque
        arrays = [
            t.BufferRegion(
                a, [ir.Range.from_min_extent(0, a.shape[0]), ir.Range.from_min_extent(lane, 1)]
            )
            for a in b.alloc_buffers
            if a.name.endswith("_loop")
        ]
        annotations = {k: v for k, v in b.annotations.items() if k != LANE}
        first, *rest = b.body.seq  # Bind(lane, 0): see _spliced
        assert isinstance(first, t.Bind) and first.var.same_as(lane)
        new = s_tir.SBlock([*b.iter_vars, iv], [*b.reads, *arrays], [*b.writes, *arrays],
                           b.name_hint, _seq(rest), b.init, b.alloc_buffers, b.match_buffers,
                           annotations)  # fmt: skip
        found[0] += 1
        return s_tir.SBlockRealize([*realize.iter_values, value], realize.predicate, new)

    def visit(realize: Any, loop: Any) -> Any:
        return block_of(realize, loop) if LANE in realize.block.annotations else realize

    body = _rebuild(func.body, visit)
    if found[0] != count:  # one left bound to lane 0 under a vectorised loop: wrong values
        raise AssertionError(f"bind_lanes found {found[0]} of {count} loop operations")
    mod = mod.__class__(mod.functions)  # a copy: the scheduled module is the schedule's
    mod["main"] = func.with_body(body)
    return mod
