"""The training loop every stage shares: AdamW, warmup + cosine, clipping, checkpoints, exact resume.

A stage hands the loop its trainable parameters and a ``step_fn(step) -> loss`` that runs the forward
and backward passes of optimizer step ``step`` (accumulation or GradCache happen inside it). Because each
step's data depends only on the step number and the RNG state is checkpointed, a resumed run computes
exactly what an uninterrupted run would have.

Checkpoints (``checkpoint.pt``: trainable weights, optimizer, scheduler, RNG states, step, loss history,
and the run's fingerprint) are written to a temporary file and moved into place, so a crash mid-write never
destroys the last good one; each also stores a sha256 of everything else in it (``state_hash``: torch itself
does not notice a flipped byte in tensor data), and a checkpoint that no longer matches it is refused. A checkpoint is only written once the weights in it have produced a healthy
loss: the periodic save after step ``s`` happens during step ``s + 1``, after its loss is checked and
before its update. So when a loss is NaN/inf, the run stops and the checkpoint on disk predates the update that
caused it. A finite divergence (which a NaN check would miss) is a loss above ``divergence_factor`` times its
recent mean and a nat above its recent maximum for ``SPIKE_PATIENCE`` steps in a row: one such batch is a spike
(stage 2's batches each come from a few subsets, whose losses differ several-fold), and it trains on; while
spikes last no checkpoint is written, so the one on disk still predates them when the run stops.

Under ``torch.distributed`` (``torchrun``) every rank runs the same loop on its share of the batch; the
gradients of the trainable parameters are averaged across ranks once per optimizer step (one flat
all-reduce: adapters are small), so every rank applies the same update; rank 0 alone writes files.
"""
from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from .atomic import atomic_write, atomic_write_json
from .config import TrainConfig
from .distributed import barrier, distributed, is_writer
from .errors import CorruptFileError, NonFiniteLossError, RunConflictError
from .progress import progress_bar

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
RECENT = 20  # losses the divergence guard averages over
SPIKE_PATIENCE = 3  # losses in a row far above the recent ones that make a divergence (one alone is a spike)


def cosine_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup_ratio: float):
    """Linear warmup to the base lr, then cosine decay to zero."""
    warmup = max(1, round(steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def rng_state() -> dict:
    """Every random generator a step draws from (torch CPU and CUDA, NumPy, Python)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


STATE_HASH = "sha256"
"""The checkpoint entry holding ``state_hash`` of everything else in it."""


def _feed(h, value) -> None:
    """Feed ``value`` (nested dicts, lists, tensors, arrays, scalars) into the hash ``h``, exactly."""
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"tensor:{t.dtype}:{tuple(value.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy() if t.numel() else b"")  # the bytes themselves, no copy
    elif isinstance(value, np.ndarray):
        h.update(f"array:{value.dtype}:{value.shape}:".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        h.update(f"dict:{len(value)}:".encode())
        for key in sorted(value, key=repr):
            _feed(h, key)
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}:{len(value)}:".encode())
        for item in value:
            _feed(h, item)
    elif type(value).__repr__ is object.__repr__:  # an address would differ after a reload: the type only
        h.update(f"{type(value).__name__};".encode())
    else:
        h.update(f"{type(value).__name__}:{value!r};".encode())


def state_hash(state: dict) -> str:
    """sha256 of a checkpoint's state (all but its own hash entry): its tensors byte for byte, the rest by value."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != STATE_HASH})
    return h.hexdigest()


class Trainer:
    """Runs ``cfg.steps`` optimizer steps of ``step_fn`` over ``params``, checkpointing into ``out_dir``.

    ``fingerprint`` identifies what the run is made from (settings and inputs); a checkpoint written
    under another fingerprint is refused rather than resumed. ``progress`` shows a bar (unless
    ``TQDM_DISABLE`` is set).
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], cfg: TrainConfig, out_dir: str | Path,
                 step_fn: Callable[[int], float], *, desc: str = "train", fingerprint: str = "",
                 progress: bool = True):
        if not params:
            raise ValueError("nothing to train: no parameter requires a gradient")
        self.params, self.cfg, self.step_fn, self.desc = params, cfg, step_fn, desc
        self.fingerprint, self.progress = fingerprint, progress
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        decay = [p for p in params.values() if p.ndim >= 2]
        no_decay = [p for p in params.values() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        self.scheduler = cosine_schedule(self.optimizer, cfg.steps, cfg.warmup_ratio)
        self.step = 0
        self.saved_step: int | None = None  # the step of the checkpoint on disk, if any
        self.spikes = 0  # losses in a row far above the ones before them (``_check``)
        self.history: list[dict] = []

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    def save_checkpoint(self, rng: dict | None = None) -> None:
        """Write the state after ``self.step`` updates; ``rng`` is the RNG state the next step starts from."""
        if is_writer():
            state = {"step": self.step, "history": self.history, "rng": rng or rng_state(),
                     "fingerprint": self.fingerprint,
                     "params": {n: p.detach().cpu() for n, p in self.params.items()},
                     "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
            state[STATE_HASH] = state_hash(state)  # checked on resume: a flipped byte is an error, not a resume
            atomic_write(self.checkpoint_path, lambda tmp: torch.save(state, tmp))
        self.saved_step = self.step
        barrier()

    def load_checkpoint(self) -> bool:
        """Resume from ``checkpoint.pt`` if present; returns whether it did."""
        if not self.checkpoint_path.exists():
            return False
        path = self.checkpoint_path
        fix = "delete it and run the same command again: the stage then restarts from step 0"
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # truncated or corrupt: zip, pickle and tensor errors have no common type
            reason = " ".join(str(err).split())[:200] or type(err).__name__
            raise CorruptFileError(f"{path}: cannot read this checkpoint ({reason}): it is truncated or corrupt; "
                                   f"{fix}") from None
        if not isinstance(state, dict) or not {"params", "optimizer", "scheduler", "rng", "step"} <= set(state):
            raise CorruptFileError(f"{path}: not a comalite training checkpoint; {fix}")
        if STATE_HASH in state and state_hash(state) != state[STATE_HASH]:  # older checkpoints hold no hash
            raise CorruptFileError(f"{path} is corrupt: its contents no longer match the hash stored in it when it "
                                   f"was written; {fix}")
        if state.get("fingerprint", "") != self.fingerprint:
            raise RunConflictError(f"{self.checkpoint_path} was written by a run with other settings or inputs "
                                   "(fingerprint differs): use another out_dir, or --overwrite to start again")
        if set(self.params) != set(state["params"]):
            raise RunConflictError(f"{self.checkpoint_path} holds other parameters than this model: use another "
                                   "out_dir, or --overwrite to start again")
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(state["params"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step, self.history = state["step"], state["history"]
        self.saved_step = self.step
        log.info("resumed %s from %s at step %d", self.desc, self.checkpoint_path, self.step)
        return True

    def _sync(self, loss: float) -> float:
        """Average the trainable parameters' gradients, and the loss, over ranks (no-op in one process)."""
        if not distributed():
            return loss
        params = list(self.params.values())
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        mean = torch.tensor([loss], dtype=torch.float64, device=flat.device)
        dist.all_reduce(mean)
        return float(mean) / dist.get_world_size()

    def _check(self, step: int, loss: float, grad_norm: float) -> bool:
        """Stop on a NaN/inf loss or gradient, or on the ``SPIKE_PATIENCE``-th loss in a row far above the ones
        before the first of them; the checkpoint stays. Returns whether this loss is such a spike."""
        if self.cfg.divergence_factor > 0 and math.isfinite(loss):
            before = [h["loss"] for h in self.history[:len(self.history) - self.spikes][-RECENT:]]
            # A ratio to the mean, and a nat above the maximum: near-zero losses may double with nothing wrong.
            spike = bool(before) and loss > self.cfg.divergence_factor * np.mean(before) and loss > max(before) + 1
            self.spikes = self.spikes + 1 if spike else 0
            if self.spikes < SPIKE_PATIENCE and math.isfinite(grad_norm):
                return spike
        elif math.isfinite(loss) and math.isfinite(grad_norm):
            return False
        kept = (f"the last good checkpoint ({self.checkpoint_path}, step {self.saved_step}) is kept"
                if self.saved_step is not None else "no checkpoint had been written yet")
        what = (f"loss {loss:.4g} stayed above {self.cfg.divergence_factor:g}x its recent mean "
                f"{np.mean(before):.4g} for {self.spikes} steps" if self.spikes >= SPIKE_PATIENCE
                else f"loss {loss} / gradient norm {grad_norm}")
        raise NonFiniteLossError(
            f"{self.desc}: {what} at step {step}; {kept}. Lower the learning rate (--set ...train.lr=...) and start "
            "again with --overwrite (or into another out_dir); also check the data, or use fp32/bf16 instead of fp16.")

    def run(self, *, stop_at: int | None = None) -> list[dict]:
        """Train to ``cfg.steps`` (or ``stop_at``, to simulate an interruption); returns the loss history."""
        self.load_checkpoint()
        end = min(self.cfg.steps, stop_at) if stop_at is not None else self.cfg.steps
        steps = range(self.step, end)
        bar = progress_bar(steps, enabled=self.progress and bool(steps), initial=self.step, total=self.cfg.steps,
                           desc=self.desc)
        save_pending = False
        for step in bar:
            start = time.perf_counter()
            rng = rng_state()  # what this step starts from: a checkpoint taken below resumes exactly here
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._sync(float(self.step_fn(step)))
            grad_norm = float(torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.cfg.max_grad_norm))
            spike = self._check(step, loss, grad_norm)
            if save_pending and not spike:  # the weights of the last save point just gave a healthy loss: keep them
                self.save_checkpoint(rng)
                save_pending = False
            self.optimizer.step()
            self.scheduler.step()
            self.step = step + 1
            self.history.append({"step": self.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                                 "grad_norm": grad_norm, "seconds": time.perf_counter() - start})
            bar.set_postfix(loss=f"{loss:.4f}")
            if self.step % max(1, self.cfg.log_every) == 0:
                log.info("%s step %d loss %.4f", self.desc, self.step, loss)
            save_pending = save_pending or (bool(self.cfg.save_every) and self.step % self.cfg.save_every == 0)
        if steps and (self.step == self.cfg.steps or stop_at is not None):
            self.save_checkpoint()
        if is_writer():
            atomic_write_json(self.history, self.out_dir / "history.json")
        return self.history
