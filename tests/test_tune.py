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
    metas = [json.loads(p.read_text()) for p in tmp_path.glob("*.json") if p.name != "tuning.json"]
    assert any(json.loads(m["key"]).get("schedule") == rec["config"] for m in metas)
    tvmred.clear_cache()
    assert (tmp_path / "tuning.json").exists()  # clearing kernels keeps tuning records
    tvmred.clear_cache(disk=False)
