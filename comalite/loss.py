"""InfoNCE, the stage-2 contrastive loss (recipe section 3).

Every query ``i`` is scored against every target of the batch by cosine similarity divided by a
temperature; the loss is the cross-entropy of picking its own target ``i``. The other targets of the
batch are the negatives, so the bigger the batch, the harder (and more useful) the task: this is why
stage 2 wants batches of 1024 (see ``gradcache.py``) and gathers the batch across devices.

Inputs are L2-normalised embeddings: the model's pooling normalises them, so a dot product here is the
cosine similarity. Nothing is re-normalised in this module, to keep the loss a plain function of what
the model outputs.

Hard negatives (MMEB-train's ``neg_*`` columns; CoMa uses none, mmE5/MoCa do) are extra candidate
columns. By default they form one shared pool: every query is scored against every hard negative of
the batch, exactly as if they were targets with no query of their own. That is what VLM2Vec-style
trainers do, and it gives each query B*N more negatives at the cost of one more matmul. With
``share_hard_negatives=False`` each query only sees its own N hard negatives.

Stage 2 builds its loss by name (``stage2.loss``) from ``LOSSES``: a new loss is one ``register_loss`` here.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .errors import ConfigError


def similarity_logits(
    query: torch.Tensor,
    target: torch.Tensor,
    hard_negatives: torch.Tensor | None = None,
    *,
    temperature: float = 0.03,
    share_hard_negatives: bool = True,
) -> torch.Tensor:
    """Return the (B, C) matrix of ``cos(query_i, candidate_j) / temperature``.

    The first ``target.shape[0]`` columns are the targets, so the positive of row ``i`` is column ``i``.
    ``hard_negatives`` of shape (B, D) or (B, N, D) add columns: the whole flattened pool (C = B + B*N,
    or any (M, D) pool: C = B + M) when ``share_hard_negatives``; otherwise row ``i`` gets only its own
    N negatives (C = B + N). The notebook shows this matrix; ``InfoNCELoss`` is a cross-entropy on it.
    """
    logits = query @ target.T
    if hard_negatives is not None:
        dim = hard_negatives.shape[-1]
        if share_hard_negatives:
            extra = query @ hard_negatives.reshape(-1, dim).T
        else:
            own = hard_negatives if hard_negatives.dim() == 3 else hard_negatives.unsqueeze(1)  # (B, D): N = 1
            if own.shape[0] != query.shape[0]:
                raise ValueError(f"own hard negatives need one row per query, got {tuple(hard_negatives.shape)}")
            extra = torch.einsum("bd,bnd->bn", query, own)
        logits = torch.cat([logits, extra], dim=1)
    return logits / temperature


class _GatherToLocalGrad(torch.autograd.Function):
    """All-gather along dim 0; the backward hands back only this rank's slice, times the world size.

    Every rank computes the same global loss from the same gathered tensors, so the true backward of an
    all-gather (a reduce-scatter summing every rank's gradient) would add ``world`` identical copies of
    the local slice. Multiplying by ``world`` gives that result without the communication; after
    DistributedDataParallel averages parameter gradients over ranks, the update equals the one a single
    device would make on the whole global batch (VLM2Vec gets the same by scaling its loss by the world
    size; here the reported loss stays the true global value).
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        ctx.world, ctx.rank, ctx.rows = dist.get_world_size(), dist.get_rank(), local.shape[0]
        shards = [torch.empty_like(local) for _ in range(ctx.world)]
        dist.all_gather(shards, local.contiguous())
        return torch.cat(shards)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows] * ctx.world


class InfoNCELoss(torch.nn.Module):
    """Mean cross-entropy of each query picking its own target among all candidates.

    Args:
        temperature: divides the cosine similarities (CoMa: 0.03). Lower is sharper: a well-ranked batch
            costs less, a mis-ranked one more.
        symmetric: also add the target->query term (each target picks its query among all queries) and
            return the mean of both directions. CoMa trains query->target only.
        gather_across_devices: when ``torch.distributed`` is initialised with more than one rank, gather
            queries, targets and hard negatives from every rank so the negatives come from the global
            batch. Each rank then computes the same global loss, whose rows for rank ``r`` have labels
            offset by ``r * B``; gradients flow back to the local shard only (see
            ``_GatherToLocalGrad`` for why this matches DDP's averaging). Every rank must pass the same
            local batch size. Without a process group this flag does nothing.
        share_hard_negatives: hard negatives are one pool shared by all queries (default) rather than
            each query's own; see ``similarity_logits``.
    """

    def __init__(
        self,
        temperature: float = 0.03,
        symmetric: bool = False,
        gather_across_devices: bool = False,
        share_hard_negatives: bool = True,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.symmetric = symmetric
        self.gather_across_devices = gather_across_devices
        self.share_hard_negatives = share_hard_negatives

    def forward(
        self,
        query: torch.Tensor,
        target: torch.Tensor,
        hard_negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the scalar loss for (B, D) ``query`` and ``target``, row ``i`` of each a positive pair.

        ``hard_negatives``: (B, D) or (B, N, D); with the shared pool, any (M, D) also works.
        """
        if query.dim() != 2 or query.shape != target.shape:
            raise ValueError(f"query and target must both be (B, D), got {tuple(query.shape)}, {tuple(target.shape)}")
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if self.gather_across_devices and distributed:
            query, target = _GatherToLocalGrad.apply(query), _GatherToLocalGrad.apply(target)
            if hard_negatives is not None:
                hard_negatives = _GatherToLocalGrad.apply(hard_negatives)
        # After gathering, row i of the global batch is rank (i // B)'s row (i % B): the label is still i.
        labels = torch.arange(query.shape[0], device=query.device)
        logits = similarity_logits(
            query, target, hard_negatives,
            temperature=self.temperature, share_hard_negatives=self.share_hard_negatives,
        )
        loss = F.cross_entropy(logits, labels)
        if self.symmetric:
            # Hard negatives are candidate targets, not queries, so they play no part in this direction.
            backward_logits = similarity_logits(target, query, temperature=self.temperature)
            loss = (loss + F.cross_entropy(backward_logits, labels)) / 2
        return loss


LOSSES: dict[str, Callable] = {}
"""Stage-2 losses by name (``stage2.loss``): each builds its module from the ``Stage2Config``. Every loss takes
(query, target, hard_negatives) embeddings of this process's share and gathers across processes itself."""


def register_loss(name: str):
    def add(build: Callable) -> Callable:
        LOSSES[name] = build
        return build
    return add


def make_loss(stage2_cfg) -> torch.nn.Module:
    """The loss ``stage2_cfg.loss`` names, built from its settings; an unknown name is a ``ConfigError``."""
    if stage2_cfg.loss not in LOSSES:
        raise ConfigError(f"stage2.loss={stage2_cfg.loss!r}: choose one of {', '.join(LOSSES)}")
    return LOSSES[stage2_cfg.loss](stage2_cfg)


@register_loss("infonce")
def _infonce(s2) -> InfoNCELoss:
    return InfoNCELoss(temperature=s2.temperature, symmetric=s2.symmetric, gather_across_devices=True,
                       share_hard_negatives=s2.share_hard_negatives)
