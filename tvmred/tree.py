"""Formula trees: immutable, hash-consed nodes.

Every node is interned, so two structurally equal sub-formulas are the *same* Python object.
That makes equality and hashing O(1), lets the lowering share work between equal sub-formulas,
and gives a canonical text form (``str(node)``) that the cache uses as a key: the tree written
out, or -- when that would be huge, for a DAG whose nodes are shared many times over -- a
``Let($0=...;$1=...;root)`` naming the shared nodes.
"""

from __future__ import annotations

#: The deepest formula tree tvmred builds (TVM's C++ passes recurse over expressions: a few
#: thousand levels overflow its stack).
MAX_DEPTH = 1000
#: Above this many nodes written out as a tree, a formula's text names its shared nodes.
TEXT_NODES = 20000


class Node:
    """One operation applied to child nodes, with static integer/float parameters.

    ``op`` names an entry of :mod:`tvmred.ops`; ``params`` are compile-time constants
    (e.g. the exponent of ``Pow``, the position of ``Elem``); ``dim`` is the output dimension.
    Variables are ``Node("Var", (), (pos, dim, cat))``.
    """

    __slots__ = ("op", "args", "params", "dim", "depth", "__weakref__")
    _table: dict[tuple, "Node"] = {}

    op: str
    args: tuple["Node", ...]
    params: tuple
    dim: int
    depth: int  # 1 for a leaf, else 1 + the deepest argument

    def __new__(cls, op: str, args: tuple["Node", ...], params: tuple, dim: int) -> "Node":
        key = (op, tuple(id(a) for a in args), params)
        node = cls._table.get(key)
        if node is None:
            node = object.__new__(cls)
            object.__setattr__(node, "op", op)
            object.__setattr__(node, "args", tuple(args))
            object.__setattr__(node, "params", tuple(params))
            object.__setattr__(node, "dim", int(dim))
            object.__setattr__(node, "depth", 1 + max((a.depth for a in args), default=0))
            cls._table[key] = node
        return node

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Node is immutable")

    def __reduce__(self):  # pickling re-interns
        return (Node, (self.op, self.args, self.params, self.dim))

    def __repr__(self) -> str:  # iterative: formulas may be nested deeper than Python recurses
        order = postorder(self)
        size: dict[int, int] = {}
        uses: dict[int, int] = {}
        for n in order:
            size[id(n)] = 1 + sum(size[id(a)] for a in n.args)
            for a in n.args:
                uses[id(a)] = uses.get(id(a), 0) + 1
        # a DAG whose tree is too big to write out (soft-DTW's cells are each used three
        # times): name the shared nodes, $k = ..., in postorder -- canonical, linear in size
        shared = size[id(self)] > TEXT_NODES
        text: dict[int, str] = {}
        lets: list[str] = []
        for n in order:
            parts = [text[id(a)] for a in n.args] + [_fmt(p) for p in n.params]
            t = f"{n.op}({','.join(parts)})"
            if shared and n.args and uses.get(id(n), 0) > 1:
                lets.append(f"${len(lets)}={t}")
                t = f"${len(lets) - 1}"
            text[id(n)] = t
        return f"Let({';'.join(lets)};{text[id(self)]})" if lets else text[id(self)]

    __str__ = __repr__

    @property
    def is_var(self) -> bool:
        return self.op == "Var"

    @property
    def is_zero(self) -> bool:
        return self.op == "Zero"


def _fmt(p: object) -> str:
    if isinstance(p, float):
        return repr(float(p))
    if isinstance(p, tuple):  # a list parameter (TensorDot's shapes): the formula syntax
        return "[" + ",".join(_fmt(x) for x in p) + "]"
    return str(p)


def var(pos: int, dim: int, cat: int) -> Node:
    """The ``pos``-th input, of dimension ``dim``, category 0 (i), 1 (j) or 2 (parameter)."""
    return Node("Var", (), (int(pos), int(dim), int(cat)), dim)


def var_pos(v: Node) -> int:
    return v.params[0]


def var_cat(v: Node) -> int:
    return v.params[2]


def postorder(root: Node, leaves: frozenset[int] = frozenset()) -> list[Node]:
    """Distinct nodes of the DAG below ``root``, children before parents; the arguments of
    nodes whose id is in ``leaves`` (other than ``root``) are not visited."""
    seen: set[int] = set()
    order: list[Node] = []
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        if id(node) in leaves and node is not root:
            continue
        for a in reversed(node.args):
            if id(a) not in seen:
                stack.append((a, False))
    return order


def variables(root: Node) -> list[Node]:
    """The variables used by ``root``, sorted by position."""
    return sorted((n for n in postorder(root) if n.is_var), key=var_pos)


def map_vars(root: Node, fn) -> Node:
    """``root`` with every variable v replaced by ``fn(v)`` (a node of the same dim)."""
    new: dict[int, Node] = {}
    for n in postorder(root):
        if n.is_var:
            new[id(n)] = fn(n)
        else:
            new[id(n)] = Node(n.op, tuple(new[id(a)] for a in n.args), n.params, n.dim)
    return new[id(root)]


def map_cats(root: Node, frm: int, to: int) -> Node:
    """``root`` with every variable of category ``frm`` turned into one of category ``to``."""
    return map_vars(
        root, lambda v: var(v.params[0], v.params[1], to if v.params[2] == frm else v.params[2])
    )
