"""The training loop every stage shares: AdamW, warmup + cosine, clipping, checkpoints, exact resume.

A stage hands the loop its trainable parameters and a ``step_fn(step) -> loss`` that runs the forward
and backward passes of optimizer step ``step`` (accumulation or GradCache happen inside it). Because each
step's data depends only on the step number and the RNG state is checkpointed, a resumed run computes
exactly what an uninterrupted run would have.

Checkpoints (``checkpoint.pt``: trainable weights, optimizer, scheduler, RNG states, step, loss history)
are written to a temporary file and moved into place, so a crash mid-write never destroys the last good
one. A non-finite loss or gradient stops the run before the optimizer step, keeping that checkpoint.
"""
from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .atomic import atomic_write, atomic_write_json
from .config import TrainConfig

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became NaN/inf; the last good checkpoint was kept."""


def cosine_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup_ratio: float):
    """Linear warmup to the base lr, then cosine decay to zero."""
    warmup = max(1, round(steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Runs ``cfg.steps`` optimizer steps of ``step_fn`` over ``params``, checkpointing into ``out_dir``."""

    def __init__(self, params: dict[str, torch.nn.Parameter], cfg: TrainConfig, out_dir: str | Path,
                 step_fn: Callable[[int], float], *, desc: str = "train"):
        if not params:
            raise ValueError("nothing to train: no parameter requires a gradient")
        self.params, self.cfg, self.step_fn, self.desc = params, cfg, step_fn, desc
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        decay = [p for p in params.values() if p.ndim >= 2]
        no_decay = [p for p in params.values() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        self.scheduler = cosine_schedule(self.optimizer, cfg.steps, cfg.warmup_ratio)
        self.step = 0
        self.history: list[dict] = []

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    def save_checkpoint(self) -> None:
        state = {"step": self.step, "history": self.history, "rng": _rng_state(),
                 "params": {n: p.detach().cpu() for n, p in self.params.items()},
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        atomic_write(self.checkpoint_path, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self) -> bool:
        """Resume from ``checkpoint.pt`` if present; returns whether it did."""
        if not self.checkpoint_path.exists():
            return False
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        missing = set(self.params) ^ set(state["params"])
        if missing:
            raise ValueError(f"{self.checkpoint_path} does not match this model (differs in "
                             f"{sorted(missing)[:3]}...): delete it or use another out_dir")
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(state["params"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.step, self.history = state["step"], state["history"]
        log.info("resumed %s from %s at step %d", self.desc, self.checkpoint_path, self.step)
        return True

    def run(self, *, stop_at: int | None = None) -> list[dict]:
        """Train to ``cfg.steps`` (or ``stop_at``, to simulate an interruption); returns the loss history."""
        self.load_checkpoint()
        end = min(self.cfg.steps, stop_at) if stop_at is not None else self.cfg.steps
        bar = tqdm(range(self.step, end), initial=self.step, total=self.cfg.steps, desc=self.desc,
                   disable=self.step >= end)
        for step in bar:
            self.optimizer.zero_grad(set_to_none=True)
            loss = float(self.step_fn(step))
            grad_norm = float(torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.cfg.max_grad_norm))
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                kept = f"the last good checkpoint ({self.checkpoint_path}, step {self.step}) is kept" \
                    if self.checkpoint_path.exists() else "no checkpoint had been written yet"
                raise NonFiniteLossError(
                    f"{self.desc}: loss {loss} / gradient norm {grad_norm} at step {step}; {kept}. "
                    "Lower the learning rate, check the data, or use fp32/bf16 instead of fp16.")
            self.optimizer.step()
            self.scheduler.step()
            self.step = step + 1
            self.history.append({"step": self.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                                 "grad_norm": grad_norm})
            bar.set_postfix(loss=f"{loss:.4f}")
            if self.step % max(1, self.cfg.log_every) == 0:
                log.info("%s step %d loss %.4f", self.desc, self.step, loss)
            if self.cfg.save_every and self.step % self.cfg.save_every == 0:
                self.save_checkpoint()
        if self.step == self.cfg.steps or stop_at is not None:
            self.save_checkpoint()
        atomic_write_json(self.history, self.out_dir / "history.json")
        return self.history
