"""Ahead-of-time export of compiled reductions, and loading them with only the TVM runtime.

``export(spec, out_dir)`` compiles, for every routine x dtype x target of the spec, the forward
kernel and the kernels of the requested (first-order) gradients, and writes one directory:
``<hash>.so`` per kernel plus ``manifest.json`` (routines, kernels with their formula,
signature, target and SHA-256, versions).  CUDA kernels can be exported from a machine without
a GPU (their CUDA source is embedded; only the host C++ compiler is needed).

``load(dir)`` registers those kernels and returns the routines as ``Genred`` objects (torch,
with autograd through the exported gradients, and numpy).  It needs no compiler: with
``TVM_USE_RUNTIME_LIB=1`` only TVM's runtime library is loaded.  A call that needs a kernel
that was not exported (other dtype, target, formula or gradient) raises ``KernelNotExported``
naming it — when the TVM compiler is absent; with the compiler present it is JIT-compiled.

Spec (JSON, or YAML when PyYAML is installed)::

    {"targets": [{"kind": "llvm", "mcpu": "znver4"}, {"kind": "cuda", "arch": "sm_90"}],
     "routines": [{"name": "gauss", "formula": "Exp(-SqDist(x,y))*b",
                   "aliases": ["x = Vi(3)", "y = Vj(3)", "b = Vj(3)"],
                   "reduction_op": "Sum", "axis": 1, "dtypes": ["float32"],
                   "gradients": ["x"]}]}          # or "all", or [] (default)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Iterator, Optional, Union

from . import _tvm, build, hoist
from .cabi import cuda_runtime
from .cache import SUFFIX, clean_temporaries, temp_path
from .errors import KernelNotExported
from .frontend import reduction_from
from .launch import column_chunks
from .reductions import Reduction, Variant, plan_reductions
from .runtime import load_module
from .targets import cpu_target, device_type, tvm_version
from .tree import var, variables

GENRED_KEYS = (
    "formula",
    "aliases",
    "reduction_op",
    "axis",
    "opt_arg",
    "formula2",
    "dtype_acc",
    "sum_scheme",
)
__all__ = ["export", "load", "Library", "KernelNotExported"]


def read_spec(spec: Union[str, os.PathLike, dict]) -> dict:
    if isinstance(spec, dict):
        return spec
    text = Path(spec).read_text()
    if str(spec).endswith((".yaml", ".yml")):
        import yaml  # type: ignore

        return yaml.safe_load(text)
    return json.loads(text)


def routine_kwargs(routine: dict) -> dict:
    """The ``Genred`` keyword arguments of a routine of a spec or a manifest."""
    return {k: routine[k] for k in GENRED_KEYS if k in routine}


def kernels_of(
    r: Reduction, grads: list[int], dtype: str, device: str = "cpu"
) -> Iterator[Reduction]:
    """The kernels' reductions a forward call and the backward w.r.t. ``grads`` evaluate on
    a ``device`` type (a wide reduction is several kernels: ``launch.column_chunks``)."""
    todo = [r]
    if r.rdef.vjp is not None:
        for k in grads:
            todo += plan_reductions(r.vjp(k))
    for red in todo:
        h = hoist.plan(red, dtype)  # small calls: the pair kernel; large: the one reading
        for one in [red] if h is None else [red, h.main, *(s for s, _ in h.subs)]:  # subs
            yield from column_chunks(one, dtype, device)


@_tvm.lean()
def export(spec: Union[str, os.PathLike, dict], out_dir: Union[str, os.PathLike]) -> Path:
    """Compile everything ``spec`` asks for into ``out_dir``; returns the manifest path."""
    import tvm

    spec = read_spec(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean_temporaries(out)
    targets = [dict(t) for t in spec.get("targets", [cpu_target()])]
    for t in targets:
        if t["kind"] == "cuda":
            t.setdefault("arch", "sm_90")
            t.setdefault("host", cpu_target())
    kernels: dict[str, dict] = {}
    routines = []
    for rt in spec["routines"]:
        r = reduction_from(**routine_kwargs(rt))
        names = list(r.names)
        want = rt.get("gradients", [])
        grads = list(range(r.nargs)) if want == "all" else [names.index(n) for n in want]
        routines.append(
            {
                **routine_kwargs(rt),
                "name": rt["name"],
                "dtypes": rt.get("dtypes", ["float32"]),
                "gradients": grads,
            }
        )
        for dtype in rt.get("dtypes", ["float32"]):
            for target in targets:
                for kr in kernels_of(r, grads, dtype, device_type(target)):
                    spec = kr.spec(dtype)
                    key = build.key_text(spec, target)
                    h = hashlib.sha256(key.encode()).hexdigest()[:24]
                    if h in kernels:
                        continue
                    ex, meta = build.compile_reduction(spec, target)
                    path = out / f"{h}{SUFFIX}"
                    tmp = temp_path(out, h, SUFFIX)  # a killed export leaves no partial kernel
                    ex.export_library(str(tmp))
                    os.replace(tmp, path)
                    kernels[h] = {
                        "file": path.name,
                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                        "formula": str(spec.formula),
                        "red": spec.red,
                        "out_cat": spec.out_cat,
                        "dtype": dtype,
                        "acc": spec.acc,
                        "variant": spec.variant.key(),
                        "target": target,
                        "device": device_type(target),
                        "row_block": meta["row_block"],
                        "tile": meta["tile"],
                        "state": spec.state(),
                        "inputs": [list(v.params) for v in variables(spec.formula)],
                    }
    manifest = {
        "tvmred": build.__version__,
        "tvm": tvm.__version__,
        "created": time.time(),
        "targets": targets,
        "routines": routines,
        "kernels": kernels,
    }
    path = out / "manifest.json"
    tmp = temp_path(out, "manifest", ".json")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)
    return path


class Library:
    """Routines loaded by :func:`load`: ``lib["name"]`` (a ``Genred`` of the binding that
    loaded it), ``lib.numpy("name")``, ``lib.routine("name")`` (its keyword arguments)."""

    def __init__(self, path: Path, manifest: dict, bindings: Optional[dict] = None):
        self.path, self.manifest = path, manifest
        self.bindings = dict(bindings or {})  # binding name -> Genred class; the first is lib[]
        self._routines = {rt["name"]: rt for rt in manifest["routines"]}

    def __getitem__(self, name: str):
        return self._make(next(iter(self.bindings), None), name)

    def numpy(self, name: str):
        return self._make("numpy", name)

    def routine(self, name: str) -> dict:
        """The ``Genred`` keyword arguments of routine ``name``."""
        if name not in self._routines:
            raise KeyError(f"no routine {name!r} in {self.path} (have {sorted(self._routines)})")
        return routine_kwargs(self._routines[name])

    def _make(self, binding: Optional[str], name: str):
        kw = self.routine(name)
        if binding not in self.bindings:
            raise TypeError(
                f"this library was loaded without the {binding or 'any'} binding: load it "
                "with tvmred.load, tvmred.torch.load or tvmred.numpy.load"
            )
        return self.bindings[binding](**kw)

    def names(self) -> list[str]:
        return sorted(self._routines)

    def __repr__(self) -> str:
        return f"<tvmred library {self.path}: {', '.join(self.names())}>"


def load(path: Union[str, os.PathLike], bindings: Optional[dict] = None) -> Library:
    """Load an exported directory (see :func:`export`); checks every file's SHA-256.
    ``bindings``: binding name -> its ``Genred`` class (the bindings' ``load`` pass theirs).
    The kernels are loaded through TVM's runtime library alone (:mod:`tvmred.runtime`).

    An exported directory is code: its kernels are shared libraries run in this process, so
    load only directories you trust (as with ``torch.load`` of a pickle)."""
    path = Path(path)
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest.get("tvm") != tvm_version():
        raise RuntimeError(
            f"{path} was exported with TVM {manifest.get('tvm')}, this is "
            f"TVM {tvm_version()}; export it again"
        )
    cuda_ok = _cuda_available()
    if cuda_ok and any(k["device"] == "cuda" for k in manifest["kernels"].values()):
        try:
            cuda_runtime()
        except OSError:
            cuda_ok = False
            warnings.warn(
                f"{path}: this TVM runtime cannot load CUDA modules (no "
                "libtvm_runtime_cuda); only the CPU kernels are loaded",
                stacklevel=2,
            )
    for h, k in manifest["kernels"].items():
        if k["device"] == "cuda" and not cuda_ok:
            continue  # exported for a GPU this process cannot use
        f = path / k["file"]
        if not f.exists() or hashlib.sha256(f.read_bytes()).hexdigest() != k["sha256"]:
            raise RuntimeError(f"{f}: missing or corrupt (SHA-256 does not match the manifest)")
        mod = load_module(str(f), k["target"]["kind"])
        build.register_kernel(
            (
                k["formula"],
                k["red"],
                k["out_cat"],
                k["dtype"],
                k["acc"],
                Variant(**k["variant"]),
                k["device"],
            ),
            build.Kernel(
                mod["main"],
                tuple(var(*p) for p in k["inputs"]),
                k["row_block"],
                tuple(tuple(s) for s in k["state"]),
                tile=int(k.get("tile", 0)),
            ),
        )
    return Library(path, manifest, bindings)


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False
