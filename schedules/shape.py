"""What a schedule is allowed to know about a reduction: its shape, never its formula."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReductionShape:
    """A reduction ``out[i, u] = Red_j F_u(i, j)`` as lowered by ``tvmred.lower``.

    The lowered PrimFunc has one reduction block named ``red`` (loops ``i, u, j``: output row,
    state column, reduced index) writing ``outputs`` buffers and zero or more per-pair blocks (``stages``, in
    producer-before-consumer order), each computing shared sub-expressions of F over ``(i, j)``.
    Output rows are padded to a multiple of ``row_block`` (the PrimFunc takes ``Mb`` =
    rows / row_block), so splitting ``i`` by ``row_block`` never needs a tail.
    """

    kind: str  # reduction kind tag: "sum", "select", "kselect", "lse"
    cols: int  # columns of each state buffer
    outputs: int  # number of state buffers the reduction block writes
    dtype: str  # data dtype
    acc_dtype: str  # accumulator / output dtype
    row_block: int  # output-row padding multiple
    stages: tuple[str, ...]  # names of the per-pair blocks
    n_inputs: int  # number of tensor inputs
    row_inputs: tuple[tuple[str, int], ...] = ()  # (buffer name, dim) of the output-indexed inputs
