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
        return bad_loss if step in (bad_step if isinstance(bad_step, tuple) else (bad_step,)) else loss.item()

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
    jump = 10 * max(losses) + 2  # finite, far above the recent mean, and it stays there
    _, trainer = _toy(tmp_path / "bad", steps=8, save_every=1, bad_step=(3, 4, 5), bad_loss=jump)
    with pytest.raises(NonFiniteLossError, match=r"stayed above 5x its recent mean .* for 3 steps at step 5.*step 2\)"):
        trainer.run()
    # The save due before step 3 waited for a healthy loss, which never came: the one on disk predates the jumps.
    assert torch.load(tmp_path / "bad" / CHECKPOINT, weights_only=False)["step"] == 2


def test_a_spike_trains_on_and_delays_the_save_until_a_healthy_loss(tmp_path):
    # Stage 2's batches each come from a few subsets, whose losses differ several-fold: a long run meets a
    # loss of 2 beside a recent mean of 0.35 now and then. Two such losses in a row are still spikes.
    script = iter([0.3] * 19 + [2.0, 2.1, 0.3, 0.3, 30.0, 31.0, 30.0, 0.3])
    weight = torch.nn.Parameter(torch.zeros(1))

    def step_fn(step):
        weight.sum().backward()
        return next(script)

    trainer = Trainer({"w": weight}, TrainConfig(steps=27, lr=0.01, save_every=20, log_every=1), tmp_path,
                      step_fn, fingerprint="spikes")
    with pytest.raises(NonFiniteLossError, match="loss 30 stayed above 5x its recent mean 0.475 for 3 steps"):
        trainer.run()
    assert [h["loss"] for h in trainer.history][19:] == [2.0, 2.1, 0.3, 0.3, 30.0, 31.0]
    assert trainer.saved_step == 21  # due after step 20, taken at step 22's healthy loss (after 21 updates)


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
