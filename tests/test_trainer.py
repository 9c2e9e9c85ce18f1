"""The shared training loop: schedule, exact resume, NaN guard, atomic checkpoints."""
from __future__ import annotations

import pytest
import torch

from comalite.config import TrainConfig
from comalite.errors import NonFiniteLossError, RunConflictError
from comalite.trainer import CHECKPOINT, Trainer, cosine_schedule


def test_cosine_schedule_warms_up_then_decays_to_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_schedule(opt, steps=10, warmup_ratio=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:2] == [0.5, 1.0]              # 2 warmup steps: 1/2, 2/2
    assert lrs[2] == pytest.approx(1.0)       # cosine starts at the peak
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert sched.get_last_lr()[0] == pytest.approx(0.0)


def _toy(tmp_path, steps=6, save_every=2, bad_step=None, bad_loss=float("inf"), fingerprint="toy"):
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 3))
    data = torch.randn(32, 3)

    def step_fn(step):
        x = data[(step * 4) % 32:(step * 4) % 32 + 4]
        # dropout makes the loss depend on the RNG stream, so resume must restore it
        loss = torch.nn.functional.dropout(x @ weight.T, p=0.5).pow(2).mean()
        loss.backward()
        return bad_loss if step == bad_step else loss.item()

    cfg = TrainConfig(steps=steps, lr=0.05, warmup_ratio=0.0, save_every=save_every, log_every=1)
    return weight, Trainer({"w": weight}, cfg, tmp_path, step_fn, fingerprint=fingerprint)


def test_resume_equals_uninterrupted(tmp_path):
    weight_a, straight = _toy(tmp_path / "a")
    history_a = straight.run()
    weight_b, first = _toy(tmp_path / "b")
    first.run(stop_at=3)                     # interrupted after 3 steps (checkpoint written)
    weight_c, second = _toy(tmp_path / "b")  # a fresh process would rebuild everything like this
    history_c = second.run()
    assert [h["loss"] for h in history_c] == [h["loss"] for h in history_a]
    assert torch.equal(weight_c, weight_a)


def test_nan_guard_stops_and_keeps_the_checkpoint_before_the_bad_weights(tmp_path):
    # The weights after 3 updates give a NaN loss at step 3: the checkpoint of step 3 was never written
    # (a save waits for the next loss to be healthy), so the one on disk is step 2's.
    weight, trainer = _toy(tmp_path, steps=6, save_every=1, bad_step=3)
    with pytest.raises(NonFiniteLossError, match=r"step 3.*last good checkpoint.*step 2\)"):
        trainer.run()
    state = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert state["step"] == 2 and len(state["history"]) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_a_finite_divergence_stops_the_run_too(tmp_path):
    _, reference = _toy(tmp_path / "ok", steps=3)
    losses = [h["loss"] for h in reference.run()]
    jump = 10 * max(losses) + 2  # finite, far above the recent mean
    _, trainer = _toy(tmp_path / "bad", steps=6, save_every=1, bad_step=3, bad_loss=jump)
    with pytest.raises(NonFiniteLossError, match=r"jumped above 5x its recent mean.*step 3.*step 2\)"):
        trainer.run()
    assert torch.load(tmp_path / "bad" / CHECKPOINT, weights_only=False)["step"] == 2


def test_a_checkpoint_of_another_run_or_model_is_refused(tmp_path):
    _, trainer = _toy(tmp_path, steps=2)
    trainer.run()
    _, other_settings = _toy(tmp_path, steps=2, fingerprint="other settings")
    with pytest.raises(RunConflictError, match="fingerprint differs"):
        other_settings.run()
    other = Trainer({"v": torch.nn.Parameter(torch.zeros(2))}, TrainConfig(steps=2), tmp_path, lambda s: 0.0,
                    fingerprint="toy")
    with pytest.raises(RunConflictError, match="other parameters"):
        other.run()
