"""``benchmarks/bench_stage2_recipe.py`` trains and scores one row per arm, each changing only what it names."""
from __future__ import annotations

import json

import pytest

from repo_scripts import load_script


def _bench():
    return load_script("benchmarks/bench_stage2_recipe.py")


def test_each_arm_is_one_row_that_changes_only_its_named_settings(tiny_home, tmp_path):
    bench = _bench()
    out = tmp_path / "recipe.json"
    arms = ["baseline", "lr5e-3", "lora_r4", "temp0.1+k4"]
    report = bench.main(["--preset", "tiny-smoke", "--steps", "2", "--queries", "3", "--arms", ",".join(arms),
                         "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    rows = report["runs"]
    assert [r["arm"] for r in rows] == arms and all(r["seed"] == 0 for r in rows)
    base = rows[0]["settings"]
    assert base["stage2.init"] == "backbone" and base["stage2.train.steps"] == 2 and base["eval.max_queries"] == 3
    for row in rows:
        differs = {k for k in set(base) | set(row["settings"]) if base.get(k) != row["settings"].get(k)}
        assert differs == set(bench.arm_changes(row["arm"])) == set(row["changes"])
        assert set(bench.GROUPS) <= set(row["aggregates"]) and all(0 <= v <= 1 for v in row["aggregates"].values())
        assert all(n == 3 for n in row["n_queries"].values()) and row["train_seconds"] > 0
    assert rows[2]["settings"]["model.lora_alpha"] / rows[2]["settings"]["model.lora_r"] == \
        base["model.lora_alpha"] / base["model.lora_r"]
    assert [s["arm"] for s in report["summary"]] == arms and "minus_baseline" in report["summary"][1]

    # Rerun with a second seed: seed 0 is reused from the file, only seed 1 trains; the summary has a spread.
    again = bench.main(["--preset", "tiny-smoke", "--steps", "2", "--queries", "3", "--arms", "baseline,lr5e-3",
                        "--seeds", "0,1", "--out", str(tmp_path / "two.json"), "--reuse", str(out)])
    reused = [(r["arm"], r["seed"]) for r in again["runs"] if r.get("reused_from") == out.name]
    assert reused == [("baseline", 0), ("lr5e-3", 0)]
    lr = next(s for s in again["summary"] if s["arm"] == "lr5e-3")
    assert lr["seeds"] == [0, 1] and lr["std"]["overall"] is not None and lr["minus_baseline"]["overall"]["seeds"] == 2


def test_unknown_or_clashing_arms_are_refused():
    bench = _bench()
    with pytest.raises(SystemExit):
        bench.arm_changes("lr5e-3+nonsense")
    with pytest.raises(SystemExit):
        bench.arm_changes("lr1e-3+lr5e-3")
    assert bench.arm_changes("lr5e-3+temp0.1") == {"stage2.train.lr": 5e-3, "stage2.temperature": 0.1}
