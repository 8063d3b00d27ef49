"""Tuning with a tiny budget writes a record that later compiles use."""

import json

import torch

import tvmred
from tvmred import build, tune
from tvmred.torch import Genred

F, AL = "Exp(-SqDist(x,y)*IntCst(3))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"]


def test_tuning_record_is_used_by_later_compiles(tmp_path, monkeypatch):
    monkeypatch.setenv("TVMRED_CACHE_DIR", str(tmp_path))
    tvmred.clear_cache(disk=False)
    rec = tune.tune(F, AL, axis=1, sizes=(300, 400), trials=3, repeats=1, progress=False)
    assert len(rec["trials"]) == 3 and rec["default_time_s"] == rec["trials"][0]["time_s"]
    assert rec["time_s"] == min(t["time_s"] for t in rec["trials"])
    assert rec["config"] in [t["config"] for t in rec["trials"]]
    db = json.loads((tmp_path / "tuning.json").read_text())
    assert [r["config"] for r in db.values()] == [rec["config"]]
    g = Genred(F, AL, axis=1)
    x, y, b = torch.rand(70, 3), torch.rand(90, 3), torch.rand(90, 2)
    c = g(x, y, b)
    ref = torch.exp(-3 * ((x[:, None] - y[None]) ** 2).sum(-1)) @ b
    torch.testing.assert_close(c, ref, rtol=1e-5, atol=1e-5)
    kernel = next(k for k in build._KERNELS.values() if k.config == rec["config"])
    assert kernel.row_block == rec["config"]["row_block"]
    # the compiled kernel stored on disk records the tuned schedule in its key
    metas = [
        json.loads(p.read_text())
        for p in tmp_path.glob("*.json")
        if p.name not in ("tuning.json", "host.json")
    ]
    assert any(json.loads(m["key"]).get("schedule") == rec["config"] for m in metas)
    tvmred.clear_cache()
    assert (tmp_path / "tuning.json").exists()  # clearing kernels keeps tuning records
    tvmred.clear_cache(disk=False)


def test_a_schedule_with_a_wrong_answer_is_never_chosen(tmp_path, monkeypatch):
    """Each candidate's output is compared with the default schedule's: a (deliberately
    broken) fast candidate is reported as "wrong result" and not stored; the tiled CPU
    candidate, correct, is timed like the others."""
    import dataclasses

    from tvmred import schedules

    monkeypatch.setenv("TVMRED_CACHE_DIR", str(tmp_path))
    tvmred.clear_cache(disk=False)
    tpl = dataclasses.replace(
        schedules.TEMPLATES["llvm"],
        candidates=lambda t, d, rb: [
            {"row_block": rb},
            {"row_block": rb, "tile": 16},
            {"row_block": 8},
        ],
    )
    monkeypatch.setitem(schedules.TEMPLATES, "llvm", tpl)
    real = build.make_kernel

    def broken_when_8_rows(fn, spec, row_block, config=None, tile=0):
        k = real(fn, spec, row_block, config, tile)
        if config and config["row_block"] == 8:

            def wrong(*args):
                fn(*args)
                args[-2 - len(k.state)].add_(1.0)  # the first state buffer: off by one

            return dataclasses.replace(k, fn=wrong)
        return k

    monkeypatch.setattr(build, "make_kernel", broken_when_8_rows)
    rec = tune.tune(F, AL, axis=1, sizes=(300, 400), trials=3, repeats=1, progress=False)
    by = {json.dumps(t["config"], sort_keys=True): t for t in rec["trials"]}
    assert by['{"row_block": 8}'].get("error") == "wrong result"
    assert by['{"row_block": 8}']["time_s"] is None
    tiled = [t for t in rec["trials"] if t["config"].get("tile") == 16]
    assert tiled and tiled[0]["time_s"] > 0
    assert rec["config"] != {"row_block": 8}
    tvmred.clear_cache(disk=False)


def test_the_two_pass_knob(tmp_path, monkeypatch):
    """``two_pass`` in a tuned config sets a LogSumExp kernel's j per block (0: the online
    loop, 16: blocks; same answers, each kernel its own key); tune skips the knob for a
    reduction without a two-pass form (a Sum: it would compile the same kernel again), and
    the CUDA template offers it with tiles."""
    import dataclasses

    from tvmred import schedules
    from tvmred.lower import lower
    from tvmred.targets import cuda_target

    monkeypatch.setenv("TVMRED_CACHE_DIR", str(tmp_path))
    tvmred.clear_cache(disk=False)
    knobs = [{"row_block": 32}, {"row_block": 32, "two_pass": 0}, {"row_block": 32, "two_pass": 16}]
    tpl = dataclasses.replace(schedules.TEMPLATES["llvm"], candidates=lambda t, d, rb: knobs)
    monkeypatch.setitem(schedules.TEMPLATES, "llvm", tpl)
    lse = tune.tune("-SqDist(x,y)", AL[:2], "LogSumExp", axis=1, sizes=(300, 400), repeats=1,
                    progress=False)  # fmt: skip
    assert [t["config"] for t in lse["trials"]] == knobs
    assert all(t["time_s"] for t in lse["trials"])  # the three agree with each other
    s = tune.tune(F, AL, axis=1, sizes=(300, 400), repeats=1, progress=False)
    assert [t["config"] for t in s["trials"]] == knobs[:1]
    g = Genred("-SqDist(x,y)", AL[:2], reduction_op="LogSumExp", axis=1)
    spec = g.reduction.spec("float32")
    blocks = {}
    for c in knobs[1:]:  # what each config's kernel is lowered with
        b = schedules.two_pass({"kind": "llvm"}, "float32", c)
        blocks[c["two_pass"]] = lower(spec, 32, "poly", 0, b).shape.two_pass
    assert blocks == {0: 0, 16: 16}
    cands = schedules.template("cuda").candidates(cuda_target("sm_90"), "float32", 128)
    assert {"row_block": 128, "tile": 64, "two_pass": 16} in cands
    tvmred.clear_cache(disk=False)
