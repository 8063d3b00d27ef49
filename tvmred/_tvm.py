"""TVM's expression modules, imported on first use: parsing, differentiating and calling
cached kernels never import TVM (``import tvm`` costs about a second)."""

from __future__ import annotations

from typing import Any


def te() -> Any:
    from tvm import te as module

    return module


def tirx() -> Any:
    from tvm import tirx as module

    return module
