"""tvmred.jax: every reduction kind's values, gradients and forward-mode derivatives against
dense float64 references, under jit, grad, jvp (and their compositions: second order both
ways), vmap (of grad, under grad, nested), and a jitted training step calling tvmred twice;
skipped without jax."""

import numpy as np
import pytest
import torch
from test_reductions import ALL, DIFFERENTIABLE, dense
from test_reductions import routine as reductions_routine

jax = pytest.importorskip("jax", reason="jax is not installed (optional binding)")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy

from tvmred.jax import Genred  # noqa: E402


def routine(red, axis):
    return reductions_routine(red, axis, Genred)


def data(M=30, N=40, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((M, 3)), rng.random((N, 3)), rng.random((N, 2))]


def reference(red, arrays, axis):
    out = dense(red, *(torch.from_numpy(a) for a in arrays), axis)
    return tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy()


@pytest.mark.parametrize("axis", [1, 0])
@pytest.mark.parametrize("red", ALL)
def test_values(red, axis):
    arrays = data()
    got = routine(red, axis)(*map(jnp.asarray, arrays))
    want = reference(red, arrays, axis)
    for g, w in zip(got, want) if isinstance(want, tuple) else [(got, want)]:
        if w.dtype == np.int64:
            assert g.dtype == jnp.int64 and (np.asarray(g) == w).all()
        else:
            np.testing.assert_allclose(np.asarray(g), w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("red", DIFFERENTIABLE)
def test_gradients(red):
    arrays = data()
    r = routine(red, 1)
    w0 = reference(red, arrays, 1)
    e = np.random.default_rng(1).standard_normal((w0[0] if isinstance(w0, tuple) else w0).shape)

    def loss(*a):
        out = r(*a)
        out = out[0] if isinstance(out, tuple) else out
        return (out * e).sum()

    got = jax.grad(loss, argnums=(0, 1, 2))(*map(jnp.asarray, arrays))
    ts = [torch.from_numpy(a).requires_grad_() for a in arrays]
    want = dense(red, *ts, 1)
    want = want[0] if isinstance(want, tuple) else want
    ref = torch.autograd.grad((want * torch.from_numpy(e)).sum(), ts, allow_unused=True)
    for g, w, a in zip(got, ref, arrays):
        w = np.zeros_like(a) if w is None else w.numpy()
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-9, atol=1e-11)


def dense_jvp(red, arrays, tangents, axis):
    """torch's forward-mode derivative of the dense reference (first output)."""
    ts = tuple(torch.from_numpy(np.array(a)) for a in arrays)
    tt = tuple(torch.from_numpy(np.array(t)) for t in tangents)
    _, want = torch.func.jvp(lambda *a: dense(red, *a, axis), ts, tt)
    return (want[0] if isinstance(want, tuple) else want).numpy()


@pytest.mark.parametrize("axis", [1, 0])
@pytest.mark.parametrize("red", DIFFERENTIABLE + ["ArgKMin"])
def test_forward_mode(red, axis):
    arrays = data()
    rng = np.random.default_rng(2)
    tangents = [rng.standard_normal(a.shape) for a in arrays]
    r = routine(red, axis)
    _, got = jax.jvp(lambda *a: r(*a), tuple(map(jnp.asarray, arrays)),
                     tuple(map(jnp.asarray, tangents)))  # fmt: skip
    got = got[0] if isinstance(got, tuple) else got
    if red == "ArgKMin":  # index outputs carry no tangent (float0)
        assert got.dtype == jax.dtypes.float0
        return
    want = dense_jvp(red, arrays, tangents, axis)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-10)
    # the same through jit and along one argument only
    only_y = jax.jit(lambda y, t: jax.jvp(lambda y: r(arrays[0], y, arrays[2]), (y,), (t,))[1])
    got = only_y(jnp.asarray(arrays[1]), jnp.asarray(tangents[1]))
    got = got[0] if isinstance(got, tuple) else got
    zero = [np.zeros_like(tangents[0]), tangents[1], np.zeros_like(tangents[2])]
    np.testing.assert_allclose(np.asarray(got), dense_jvp(red, arrays, zero, axis), rtol=1e-10,
                               atol=1e-10)  # fmt: skip


def test_forward_mode_unsupported_reduction_says_so():
    arrays = list(map(jnp.asarray, data()))
    r = routine("Max_SumShiftExp", 1)
    with pytest.raises(NotImplementedError, match="Max_SumShiftExp has no forward-mode"):
        jax.jvp(lambda *a: r(*a), tuple(arrays), tuple(map(jnp.ones_like, arrays)))


def gauss_dense(x, y, b):
    return jnp.exp(-((x[:, None] - y[None]) ** 2).sum(-1)) @ b


G = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)


def test_jit_second_order_and_vmap():
    x, y, b = map(jnp.asarray, data())

    def loss(f):
        return lambda x, y, b: (f(x, y, b) ** 2).sum()

    np.testing.assert_allclose(jax.jit(G.__call__)(x, y, b), gauss_dense(x, y, b), rtol=1e-12)
    h = jax.grad(lambda x: jax.grad(loss(G))(x, y, b).sum())(x)
    hr = jax.grad(lambda x: jax.grad(loss(gauss_dense))(x, y, b).sum())(x)
    np.testing.assert_allclose(h, hr, rtol=1e-9, atol=1e-10)
    xs = jnp.stack([x, 0.5 * x, x + 1])
    np.testing.assert_allclose(
        jax.vmap(lambda x: G(x, y, b))(xs), jax.vmap(lambda x: gauss_dense(x, y, b))(xs),
        rtol=1e-12,
    )  # fmt: skip


@pytest.mark.parametrize("red", ["Sum", "Min", "LogSumExp", "SumSoftMaxWeight"])
def test_mixed_orders(red):
    """Hessian-vector products both ways (forward over reverse, reverse over forward) and a
    second forward derivative, against the dense reference's."""
    arrays = [jnp.asarray(a) for a in data()]
    v = jnp.asarray(np.random.default_rng(3).standard_normal(arrays[0].shape))
    e = jnp.asarray(np.random.default_rng(4).standard_normal((30, 2)))

    def f(fn):
        def loss(x):
            out = fn(x, *arrays[1:])
            out = out[0] if isinstance(out, tuple) else out
            return (jnp.tanh(out) * e[:, : out.shape[1]]).sum()

        return loss

    r = routine(red, 1)
    T = lambda a: torch.from_numpy(np.array(a))  # noqa: E731

    def torch_loss(x):
        out = dense(red, x, *map(T, arrays[1:]), 1)
        out = out[0] if isinstance(out, tuple) else out
        return (torch.tanh(out) * T(e)[:, : out.shape[1]]).sum()

    x0, v0 = T(arrays[0]), T(v)
    hvp = torch.func.jvp(torch.func.grad(torch_loss), (x0,), (v0,))[1].numpy()
    fwd_rev = jax.jvp(jax.grad(f(r)), (arrays[0],), (v,))[1]
    rev_fwd = jax.grad(lambda x: jax.jvp(f(r), (x,), (v,))[1])(arrays[0])
    np.testing.assert_allclose(np.asarray(fwd_rev), hvp, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(np.asarray(rev_fwd), hvp, rtol=1e-9, atol=1e-10)
    second = jax.jvp(lambda x: jax.jvp(f(r), (x,), (v,))[1], (arrays[0],), (v,))[1]
    want = torch.func.jvp(lambda x: torch.func.jvp(torch_loss, (x,), (v0,))[1], (x0,), (v0,))[1]
    np.testing.assert_allclose(float(second), float(want), rtol=1e-9)


def test_vmap_with_derivatives():
    x, y, b = map(jnp.asarray, data())
    xs = jnp.stack([x, 0.5 * x, x + 1])
    ys = jnp.stack([y, y[::-1], 2 * y, y - 1], axis=2)  # batched along axis 2: (40, 3, 4)

    def loss(f):
        return lambda x, y: (f(x, y, b) ** 2).sum()

    # vmap of grad, with batch axes in different places
    got = jax.vmap(jax.grad(loss(G), argnums=(0, 1)), in_axes=(None, 2))(x, ys)
    want = jax.vmap(jax.grad(loss(gauss_dense), argnums=(0, 1)), in_axes=(None, 2))(x, ys)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11)
    # grad of vmap (a parameter-like unbatched argument gets its gradient summed)
    got = jax.grad(lambda y: jax.vmap(lambda x: loss(G)(x, y))(xs).sum())(y)
    want = jax.grad(lambda y: jax.vmap(lambda x: loss(gauss_dense)(x, y))(xs).sum())(y)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)
    # nested vmap, and jvp under vmap
    got = jax.vmap(jax.vmap(lambda x, y: G(x, y, b), in_axes=(None, 2)), in_axes=(0, None))(xs, ys)
    want = jax.vmap(jax.vmap(lambda x, y: gauss_dense(x, y, b), in_axes=(None, 2)),
                    in_axes=(0, None))(xs, ys)  # fmt: skip
    assert got.shape == (3, 4, 30, 2)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    t = jnp.ones_like(x)
    got = jax.vmap(lambda x: jax.jvp(lambda x: G(x, y, b), (x,), (t,))[1])(xs)
    want = jax.vmap(lambda x: jax.jvp(lambda x: gauss_dense(x, y, b), (x,), (t,))[1])(xs)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_a_jitted_training_step_calling_tvmred_twice():
    x, y, b = map(jnp.asarray, data())
    lse = Genred("-SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="LogSumExp", axis=1)

    def loss(x, y, b, gauss, soft):
        return (gauss(x, y, b) ** 2).sum() + soft(x, y).sum()

    def soft_dense(x, y):
        return jax.scipy.special.logsumexp(-((x[:, None] - y[None]) ** 2).sum(-1), 1)[:, None]

    @jax.jit
    def step(x):
        return x - 0.01 * jax.grad(loss)(x, y, b, G, lse)

    def step_dense(x):
        return x - 0.01 * jax.grad(loss)(x, y, b, gauss_dense, soft_dense)

    np.testing.assert_allclose(step(step(x)), step_dense(step_dense(x)), rtol=1e-10)


def test_errors():
    x, y, b = map(jnp.asarray, data())
    with pytest.raises(TypeError, match="dtype int32"):
        G(x.astype(jnp.int32), y, b)
    with pytest.raises(ValueError, match=r"argument 'y'.*shape \(40, 2\)"):
        G(x, y[:, :2], b)
    with pytest.raises(ValueError, match="ranges must be the 6-tuple"):
        G(x, y, b, ranges=(1, 2))
    with pytest.raises(NotImplementedError, match="out="):
        G(x, y, b, out=x)


def test_lazytensor_under_jit_and_grad():
    from tvmred.jax import LazyTensor

    x, y, b = map(jnp.asarray, data())

    def lazy(x, y, b):
        X, Y, B = LazyTensor(x[:, None]), LazyTensor(y[None]), LazyTensor(b[None])
        return ((-((X - Y) ** 2).sum(-1)).exp() * B).sum(1)

    def soft(x, y):
        return (-LazyTensor(x[:, None]).sqdist(LazyTensor(y[None])) / 0.1).logsumexp(1)

    def soft_dense(x, y):
        return jax.scipy.special.logsumexp(-((x[:, None] - y[None]) ** 2).sum(-1) / 0.1, 1)

    np.testing.assert_allclose(jax.jit(lazy)(x, y, b), gauss_dense(x, y, b), rtol=1e-12)
    np.testing.assert_allclose(jax.jit(soft)(x, y)[:, 0], soft_dense(x, y), rtol=1e-12)
    g = jax.grad(lambda x: (lazy(x, y, b) ** 2).sum() + soft(x, y).sum())(x)
    w = jax.grad(lambda x: (gauss_dense(x, y, b) ** 2).sum() + soft_dense(x, y).sum())(x)
    np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11)


def test_float16():
    x, y, b = (jnp.asarray(a, dtype=jnp.float16) for a in data())
    out = G(x, y, b)
    assert out.dtype == jnp.float16
    ref = np.asarray(gauss_dense(*(a.astype(jnp.float64) for a in (x, y, b))))
    err = np.abs(np.asarray(out, dtype=np.float64) - ref)
    assert (err <= 2.0**-11 * np.abs(ref) + 2e-5 * np.abs(ref).max()).all()


@pytest.mark.parametrize("bridge", ["ffi", "callback"])
def test_both_bridges_into_xla(bridge, monkeypatch):
    """The XLA FFI custom call (default) and jax.pure_callback give the same values,
    gradients and batched calls; the lowered module names the chosen one."""
    monkeypatch.setenv("TVMRED_JAX_BRIDGE", bridge)
    scale = {"ffi": 2, "callback": 3}[bridge]  # a reduction of its own: nothing cached
    g = Genred(
        f"Exp(-SqDist(x,y)*IntInv({scale}))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1
    )
    x, y, b = map(jnp.asarray, data())

    def dense(x, y, b):
        return jnp.exp(-((x[:, None] - y[None]) ** 2).sum(-1) / scale) @ b

    hlo = jax.jit(g.__call__).lower(x, y, b).as_text()
    assert ("tvmred_reduce" in hlo) == (bridge == "ffi")
    np.testing.assert_allclose(jax.jit(g.__call__)(x, y, b), dense(x, y, b), rtol=1e-12)
    got = jax.grad(lambda y: (g(x, y, b) ** 2).sum())(y)
    np.testing.assert_allclose(got, jax.grad(lambda y: (dense(x, y, b) ** 2).sum())(y),
                               rtol=1e-9)  # fmt: skip
    xs = jnp.stack([x, x + 1])
    np.testing.assert_allclose(jax.vmap(lambda x: g(x, y, b))(xs),
                               jax.vmap(lambda x: dense(x, y, b))(xs), rtol=1e-12)  # fmt: skip


def test_an_error_inside_the_custom_call_reaches_the_caller(monkeypatch):
    from tvmred.jax import ffi

    x, y, b = map(jnp.asarray, data())
    fn = jax.jit(G.__call__)
    fn(x, y, b).block_until_ready()  # compiled, the reduction known to the handler
    monkeypatch.setattr(ffi, "_REDUCTIONS", {})  # as if the reduction were gone
    with pytest.raises(Exception, match="tvmred: RuntimeError: the reduction .* no longer exists"):
        fn(x, y, b).block_until_ready()


def test_a_bad_bridge_setting_is_named(monkeypatch):
    monkeypatch.setenv("TVMRED_JAX_BRIDGE", "cffi")
    g = Genred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"])
    with pytest.raises(ValueError, match="TVMRED_JAX_BRIDGE='cffi'"):
        jax.jit(g.__call__)(*map(jnp.asarray, data()[:2]))


# ------------------------------------------------------------------ the CUDA handler, no GPU


class _Frame:
    """An XLA_FFI_CallFrame built in memory as XLA lays it out (c_api.h, 64-bit), with an API
    table whose XLA_FFI_Stream_Get / XLA_FFI_DeviceOrdinal_Get / XLA_FFI_Error_Create are
    Python functions: what the CUDA platform's handler is given, without a GPU."""

    def __init__(self, rid, ins, outs, stream=0x5EED, ordinal=1, ordinal_error=False):
        import ctypes as C
        import struct

        from tvmred.jax import ffi

        self.keep, self.errors = [], []

        def mem(data: bytes) -> int:
            buf = C.create_string_buffer(data, len(data))
            self.keep.append(buf)
            return C.addressof(buf)

        def context_get(value, fail):
            def get(args):
                if fail:
                    return 0xE0
                C.c_void_p.from_address(C.addressof(args.contents) + 24).value = value
                return None

            fn = ffi._ContextGet(get)
            self.keep.append(fn)
            return C.cast(fn, C.c_void_p).value

        def error_create(args):
            self.errors.append(args.contents.message.decode())
            return 0xE1

        create = ffi._ErrorCreate(error_create)
        self.keep.append(create)
        api = bytearray(192)
        struct.pack_into("<Q", api, ffi._ERROR_CREATE, C.cast(create, C.c_void_p).value)
        struct.pack_into("<Q", api, ffi._STREAM_GET, context_get(stream, False))
        struct.pack_into("<Q", api, ffi._ORDINAL_GET, context_get(ordinal, ordinal_error))
        api_ptr = mem(bytes(api))
        code = {v: k for k, v in ffi._DTYPE_NAMES.items()}

        def buffers(arrays):
            ptrs = []
            for a in arrays:
                dims = mem(struct.pack(f"<{a.ndim}q", *a.shape)) if a.ndim else 0
                ptrs.append(mem(ffi._BUFFER.pack(ffi._BUFFER.size, 0, code[a.dtype.name],
                                                 a.ctypes.data, a.ndim, dims)))  # fmt: skip
            return mem(struct.pack(f"<{len(ptrs)}Q", *ptrs)), len(ptrs)

        (ia, ni), (oa, no) = buffers(ins), buffers(outs)
        name = b"reduction"
        value = C.c_int64(rid)
        self.keep.append(value)
        span = mem(ffi._SPAN.pack(mem(name), len(name)))
        scalar = mem(ffi._SCALAR.pack(5, C.addressof(value)))
        frame = ffi._FRAME.pack(ffi._FRAME.size, 0, api_ptr, 0xC7C7, ffi._STAGE_EXECUTE,
                                40, 0, ni, mem(bytes(4 * ni)), ia,
                                40, 0, no, mem(bytes(4 * no)), oa,
                                48, 0, 1, mem(struct.pack("<i", ffi._ATTR_SCALAR)),
                                mem(struct.pack("<Q", span)), mem(struct.pack("<Q", scalar)))  # fmt: skip
        self.address = mem(frame)


def _registered(g, *args):
    """The reduction id ``g``'s jitted call registers with the handler, and its reduction."""
    from tvmred.jax import ffi

    jax.jit(g.__call__).lower(*args)  # binds: the reduction gets its id
    rid = max(ffi._REDUCTIONS.keys())
    return rid, ffi._REDUCTIONS[rid]


def test_the_cuda_handler_reads_xla_stream_device_and_buffers(monkeypatch):
    """The CUDA platform's handler takes XLA's stream and device ordinal from the execution
    context, hands the device path every buffer (address, dtype, shape) and the reduction;
    here the device path is replaced by one that computes on the host at those addresses."""
    from tvmred.jax import ffi
    from tvmred.jax.host import outputs

    x, y, b = data()
    g = Genred("Exp(-SqDist(x,y)*IntInv(7))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)
    rid, red = _registered(g, *map(jnp.asarray, (x, y, b)))
    out = np.zeros((x.shape[0], 2))
    seen = {}

    def device(r, ins, outs, ordinal, stream):
        seen.update(r=r, ins=ins, outs=outs, ordinal=ordinal, stream=stream)
        for (ptr, dt, shape), res in zip(outs, outputs(r, [x, y, b])):
            assert ptr == out.ctypes.data and dt == "float64" and shape == out.shape
            out[...] = res

    monkeypatch.setattr(ffi, "run_on_device", device)
    frame = _Frame(rid, [x, y, b], [out], stream=0x5EED, ordinal=1)
    assert ffi._handle_device(frame.address) is None, frame.errors
    assert seen["r"] is red and seen["stream"] == 0x5EED and seen["ordinal"] == 1
    assert seen["ins"] == [(a.ctypes.data, "float64", a.shape) for a in (x, y, b)]
    ref = np.exp(-((x[:, None] - y[None]) ** 2).sum(-1) / 7) @ b
    np.testing.assert_allclose(out, ref, rtol=1e-12)


def test_the_cuda_handler_returns_xla_errors():
    """A failing XLA_FFI_DeviceOrdinal_Get, and this CPU-only torch (no CUDA), come back as
    XLA errors naming the problem -- never an exception through XLA's C frames."""
    from tvmred.jax import ffi

    x, y, b = data()
    g = Genred("Exp(-SqDist(x,y)*IntInv(9))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)
    rid, _ = _registered(g, *map(jnp.asarray, (x, y, b)))
    out = np.zeros((x.shape[0], 2))
    frame = _Frame(rid, [x, y, b], [out], ordinal_error=True)
    assert ffi._handle_device(frame.address) == 0xE1
    assert "XLA_FFI_DeviceOrdinal_Get failed" in frame.errors[0]
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this torch has CUDA: the no-CUDA error cannot occur")
    frame = _Frame(rid, [x, y, b], [out])
    assert ffi._handle_device(frame.address) == 0xE1
    assert "this torch has no CUDA" in frame.errors[0]


def test_a_cuda_lowering_calls_the_custom_call():
    """Lowered for XLA's CUDA platform (jax.export's cross-platform lowering; no GPU needed),
    a jitted tvmred call is the same typed FFI custom call, which the CUDA handler serves."""
    from jax import export

    x, y, b = map(jnp.asarray, data())
    g = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)
    check = [export.DisabledSafetyCheck.custom_call("tvmred_reduce")]
    ex = export.export(jax.jit(g.__call__), platforms=("cuda",), disabled_checks=check)(x, y, b)
    assert ex.platforms == ("cuda",)
    calls = [ln for ln in ex.mlir_module().splitlines() if "custom_call @tvmred_reduce" in ln]
    assert len(calls) == 1 and "reduction =" in calls[0]


def test_vmap_is_one_launch(monkeypatch):
    """A vmapped call (the batch dims of one call) runs its problems in one ranged launch;
    positions stay local to each problem."""
    from tvmred import dispatch

    calls = []
    real = dispatch.batched_one_launch
    monkeypatch.setattr(dispatch, "batched_one_launch",
                        lambda *a: calls.append(1) or real(*a))  # fmt: skip
    rng = np.random.default_rng(4)
    x, y = jnp.asarray(rng.random((6, 30, 3))), jnp.asarray(rng.random((6, 40, 3)))
    g = Genred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="ArgKMin", axis=1,
               opt_arg=3)  # fmt: skip
    out = jax.jit(jax.vmap(g.__call__))(x, y)
    d2 = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)
    np.testing.assert_array_equal(out, np.argsort(np.asarray(d2), -1, kind="stable")[..., :3])
    assert calls


# ------------------------------------------------------------ ranges (block-sparse)


def block_sparse(M=60, N=80):
    """pykeops' ranges of 4 row clusters x 3 column clusters (the last row cluster keeps no
    block: its rows get 0) and the (M, N) mask of the pairs they keep."""
    from tvmred.numpy.cluster import from_matrix

    ri = np.array([[0, 15], [15, 30], [30, 50], [50, M]])
    rj = np.array([[0, 30], [30, 55], [55, N]])
    keep = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1], [0, 0, 0]], bool)
    mask = np.zeros((M, N), bool)
    for a, (i0, i1) in enumerate(ri):
        for c, (j0, j1) in enumerate(rj):
            mask[i0:i1, j0:j1] = keep[a, c]
    return from_matrix(ri, rj, keep), mask


def masked_gauss(x, y, b, mask):
    k = jnp.exp(-((x[:, None] - y[None]) ** 2).sum(-1)) * mask
    return k @ b


def test_ranges_values_gradients_and_forward_mode():
    """ranges= (pykeops' 6-tuple) under jit: a Gaussian Sum's values, its gradients w.r.t.
    every argument (the gradient w.r.t. y reads the transposed ranges) and its forward-mode
    derivative against the dense masked sum in float64; rows in no cluster get 0."""
    rg, mask = block_sparse()
    x, y = map(jnp.asarray, data(60, 80)[:2])
    b = jnp.asarray(np.random.default_rng(3).random((80, 2)))
    out = jax.jit(lambda x, y, b: G(x, y, b, ranges=rg))(x, y, b)
    want = masked_gauss(x, y, b, mask)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-14)
    assert (np.asarray(out[50:]) == 0).all() and (np.asarray(want[:50]) != 0).all()
    e = jnp.asarray(np.random.default_rng(4).standard_normal(want.shape))
    got = jax.jit(jax.grad(lambda *a: (G(*a, ranges=rg) * e).sum(), (0, 1, 2)))(x, y, b)
    ref = jax.grad(lambda *a: (masked_gauss(*a, mask) * e).sum(), (0, 1, 2))(x, y, b)
    for g, w in zip(got, ref):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
    ts = tuple(jnp.asarray(np.random.default_rng(5).standard_normal(a.shape)) for a in (x, y, b))
    _, tan = jax.jvp(lambda *a: G(*a, ranges=rg), (x, y, b), ts)
    _, tan_ref = jax.jvp(lambda *a: masked_gauss(*a, mask), (x, y, b), ts)
    np.testing.assert_allclose(tan, tan_ref, rtol=1e-10, atol=1e-12)


def test_ranges_selections_and_lazytensor():
    """ArgKMin and Min with ranges (global indices, the K nearest kept points; the
    gradient of Min through its selected pairs), LogSumExp through a LazyTensor's
    ``ranges`` attribute, against dense float64; ranges under vmap and bad ranges named."""
    from tvmred.jax import LazyTensor

    rg, mask = block_sparse()
    x, y = map(jnp.asarray, data(60, 80)[:2])
    d = ((np.asarray(x)[:, None] - np.asarray(y)[None]) ** 2).sum(-1)
    dm = np.where(mask, d, np.inf)[:50]
    knn = Genred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="ArgKMin", axis=1,
                 opt_arg=3)  # fmt: skip
    idx = np.asarray(jax.jit(lambda x, y: knn(x, y, ranges=rg))(x, y))
    assert idx.dtype == np.int64 and (idx[50:] == -1).all()
    np.testing.assert_array_equal(idx[:50], np.argsort(dm, 1, kind="stable")[:, :3])
    mn = Genred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="Min", axis=1)
    g = jax.grad(lambda x: mn(x, y, ranges=rg)[:50].sum())(x)
    j = dm.argmin(1)
    want = 2 * (np.asarray(x)[:50] - np.asarray(y)[j])
    np.testing.assert_allclose(np.asarray(g)[:50], want, rtol=1e-12)
    assert (np.asarray(g)[50:] == 0).all()

    def soft(x, y):
        D = LazyTensor(x[:, None]).sqdist(LazyTensor(y[None]))
        D.ranges = rg
        return (-D).logsumexp(1)[:50, 0]

    def soft_dense(x, y):
        dd = ((x[:, None] - y[None]) ** 2).sum(-1)
        return jax.scipy.special.logsumexp(jnp.where(mask, -dd, -jnp.inf), 1)[:50]

    np.testing.assert_allclose(jax.jit(soft)(x, y), soft_dense(x, y), rtol=1e-12)
    gs = jax.grad(lambda x, y: soft(x, y).sum(), (0, 1))(x, y)
    ws = jax.grad(lambda x, y: soft_dense(x, y).sum(), (0, 1))(x, y)
    for a, w in zip(gs, ws):
        np.testing.assert_allclose(a, w, rtol=1e-10, atol=1e-12)
    b = jnp.ones((80, 2))
    with pytest.raises(NotImplementedError, match="vmap"):
        jax.vmap(lambda x: G(x, y, b, ranges=rg))(x[None])
    with pytest.raises(ValueError, match="6-tuple"):
        G(x, y, b, ranges=rg[:3])
    with pytest.raises(ValueError, match="integers"):
        G(x, y, b, ranges=tuple(np.asarray(t, float) for t in rg))


# ------------------------------------------------------------ KernelSolve


def test_kernel_solve_values_and_gradients():
    """KernelSolve and LazyTensor.solve: (alpha Id + K) a = b against numpy's dense solve in
    float64, under jit; gradients w.r.t. b, the points and the parameter (implicit
    differentiation through tvmred's reductions) against jax's dense solve."""
    from tvmred.jax import KernelSolve, LazyTensor

    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.random((50, 2)))
    b = jnp.asarray(rng.standard_normal((50, 3)))
    g = jnp.asarray([2.0])
    alpha = 0.5
    solver = KernelSolve("Exp(-g*SqDist(x,y))*a", ["x = Vi(2)", "y = Vj(2)", "a = Vj(3)",
                         "g = Pm(1)"], "a", axis=1)  # fmt: skip

    def dense(x, b, g):
        K = jnp.exp(-g[0] * ((x[:, None] - x[None]) ** 2).sum(-1))
        return jnp.linalg.solve(alpha * jnp.eye(len(x)) + K, b)

    def ours(x, b, g):
        return solver(x, x, b, g, alpha=alpha, eps=1e-12)

    np.testing.assert_allclose(jax.jit(ours)(x, b, g), dense(x, b, g), rtol=1e-9, atol=1e-10)
    e = jnp.asarray(rng.standard_normal((50, 3)))
    got = jax.grad(lambda *a: (ours(*a) * e).sum(), (0, 1, 2))(x, b, g)
    want = jax.grad(lambda *a: (dense(*a) * e).sum(), (0, 1, 2))(x, b, g)
    for a, w in zip(got, want):
        np.testing.assert_allclose(a, w, rtol=1e-7, atol=1e-9)

    def lazy(x, b):
        K = (-2.0 * LazyTensor(x[:, None]).sqdist(LazyTensor(x[None]))).exp()
        return K.solve(b, alpha=alpha, eps=1e-12)

    np.testing.assert_allclose(jax.jit(lazy)(x, b), dense(x, b, g), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(ours(x, jnp.zeros_like(b), g), 0.0)  # |b| below eps: 0


def test_a_jax_process_runs_kernels_on_every_cpu_it_may_use(tmp_path):
    """Without TVM_NUM_THREADS, ``import tvmred.jax`` sets it as the other bindings do (the
    CPUs of the process's affinity mask) before TVM's thread pool reads it -- else TVM takes
    half the hardware threads on x86: 1 of 2, a jax Sinkhorn at half speed.  Checked by what
    the threads did: the jitted calls' CPU time is spread over several threads."""
    import os
    import subprocess
    import sys

    code = r"""
import os, numpy as np, jax, jax.numpy as jnp
from tvmred.jax import LazyTensor
def ticks():
    out = {}
    for t in os.listdir("/proc/self/task"):
        s = open(f"/proc/self/task/{t}/stat").read()
        f = s[s.index(")") + 2:].split()
        out[t] = int(f[11]) + int(f[12])
    return out
x = jnp.asarray(np.random.default_rng(0).random((20000, 3)), jnp.float32)
fn = jax.jit(lambda x: LazyTensor(x[:, None]).sqdist(LazyTensor(x[None])).logsumexp(1))
fn(x).block_until_ready()
t0 = ticks()
for _ in range(3):
    fn(x).block_until_ready()
t1 = ticks()
busy = [t for t in t1 if t1[t] - t0.get(t, 0) >= 3]  # 30 ms of CPU time or more
print(os.environ["TVM_NUM_THREADS"], len(busy))
"""
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("no /proc/self/task to read the threads' CPU time from")
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    env["TVMRED_CACHE_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    setting, busy = map(int, out.stdout.split()[-2:])
    assert setting == len(os.sched_getaffinity(0))
    assert busy >= min(setting, 2)  # (on many cores each thread's share may be under 30 ms)
