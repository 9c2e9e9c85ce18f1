"""GradCache (Gao et al., 2021): a contrastive batch far bigger than memory, with exact gradients.

The InfoNCE loss of a batch couples every query with every target, so it cannot be split into
independent micro-batch losses. GradCache splits the *encoder* work instead, in two passes:

1. Encode every chunk under ``torch.no_grad()`` (cheap: no activations kept) and remember the random
   state before each chunk. Compute the loss on the concatenated embeddings, as detached leaves that
   require grad, and backpropagate: this yields d loss / d embedding for every row of the full batch
   (small: B x D numbers) and the gradients of any parameters of the loss itself.
2. Re-encode each chunk WITH grad, after restoring its random state so that dropout (e.g. LoRA dropout)
   draws the very same masks, and call ``embedding.backward(cached_grad)``. By the chain rule, the
   parameter gradients accumulated over the chunks equal those of one backward through the full batch.

Memory is that of one chunk plus B x D embeddings; the price is a second forward per chunk. When one chunk
holds each group whole there is nothing to split, and the step is the plain full-batch step.

Why plain gradient accumulation is NOT the same thing: it computes a separate loss per micro-batch, so
each query only competes with the targets of its own micro-batch. The pool of negatives shrinks from B to
the micro-batch size, the loss is a different (easier) function and its gradients differ - lower even in
value, since a log-sum-exp over fewer terms is smaller. Accumulation buys a bigger batch for losses that
are sums over examples; InfoNCE is not one. ``tests/test_gradcache.py`` pins both claims.

Randomness: only torch's CPU generator and the CUDA generator of the current device are replayed, so
``encode`` must draw its randomness from those (dropout does; Python's ``random`` and NumPy are not
replayed). After the step both generators are left where one ordinary pass (``full_batch_step`` with the
same chunks) would leave them, so the rest of training sees the same random stream either way.

Two things run twice and must not matter: module state updated by a forward (BatchNorm running
statistics: none in a transformer) and, under DistributedDataParallel, the gradient all-reduce that each
pass-2 backward would trigger - wrap all but the last chunk's backward in ``model.no_sync()``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

Encode = Callable[[Any], torch.Tensor]
"""Maps one chunk of inputs (anything: a tensor, a list of records, a processor output) to (n, D)."""


def _get_rng_state() -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state() if torch.cuda.is_available() else None


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda)


def _groups(query_chunks, target_chunks, extra_chunks) -> list[list[Any]]:
    groups = [list(query_chunks), list(target_chunks)]
    if extra_chunks is not None:
        groups.append(list(extra_chunks))
    return groups


def gradcache_step(
    encode: Encode,
    query_chunks: Sequence[Any],
    target_chunks: Sequence[Any],
    loss_fn: Callable[..., torch.Tensor],
    *,
    extra_chunks: Sequence[Any] | None = None,
) -> torch.Tensor:
    """Accumulate into ``.grad`` the parameter gradients of ``loss_fn`` on the whole batch; return the loss.

    ``query_chunks`` and ``target_chunks`` split the batch's queries and targets (their chunkings may
    differ; their concatenations must align row by row). ``extra_chunks``, if given, are hard negatives:
    their embeddings are concatenated to one (M, D) tensor passed as ``loss_fn``'s third argument.
    ``loss_fn(query, target[, hard_negatives])`` must return a scalar; with ``InfoNCELoss`` and its
    default shared pool any M works. Gradients add to existing ``.grad`` (zero them before, step after).
    The returned loss is detached, and equal to the one-pass loss.
    """
    groups = _groups(query_chunks, target_chunks, extra_chunks)
    if all(len(group) == 1 for group in groups):
        # One chunk holds each group whole: pass 1 would only repeat pass 2's forward. Same result, one pass.
        return full_batch_step(encode, query_chunks, target_chunks, loss_fn, extra_chunks=extra_chunks)

    # Pass 1: embeddings only, remembering the random state each chunk started from.
    states: list[list[tuple]] = []
    embeddings: list[torch.Tensor] = []
    with torch.no_grad():
        for group in groups:
            group_states, group_embeddings = [], []
            for chunk in group:
                group_states.append(_get_rng_state())
                group_embeddings.append(encode(chunk))
            states.append(group_states)
            embeddings.append(torch.cat(group_embeddings).requires_grad_())
    loss = loss_fn(*embeddings)
    loss.backward()
    # Where an ordinary pass would have left the generators (pass 2 below rewinds them).
    state_after = _get_rng_state()

    # Pass 2: the same forward, chunk by chunk, now with grad, fed the cached embedding gradients.
    for group, group_states, leaf in zip(groups, states, embeddings):
        row = 0
        for chunk, state in zip(group, group_states):
            _set_rng_state(state)
            chunk_embedding = encode(chunk)
            chunk_embedding.backward(leaf.grad[row : row + chunk_embedding.shape[0]])
            row += chunk_embedding.shape[0]
    _set_rng_state(state_after)
    return loss.detach()


def full_batch_step(
    encode: Encode,
    query_chunks: Sequence[Any],
    target_chunks: Sequence[Any],
    loss_fn: Callable[..., torch.Tensor],
    *,
    extra_chunks: Sequence[Any] | None = None,
) -> torch.Tensor:
    """The reference GradCache must equal: one forward with grad, every activation kept, one backward.

    Same arguments and result as ``gradcache_step``. The chunks are encoded one after the other with
    grad, so random draws (dropout masks) split the same way as in GradCache; pass one chunk each for the
    plain full batch. Memory grows with the whole batch: for tests and benchmarks.
    """
    groups = _groups(query_chunks, target_chunks, extra_chunks)
    embeddings = [torch.cat([encode(chunk) for chunk in group]) for group in groups]
    loss = loss_fn(*embeddings)
    loss.backward()
    return loss.detach()


def accumulation_step(
    encode: Encode,
    query_chunks: Sequence[Any],
    target_chunks: Sequence[Any],
    loss_fn: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """What GradCache is NOT: plain gradient accumulation, one InfoNCE per chunk, their mean backpropagated.

    Each query meets only its own chunk's targets as negatives: another, easier loss with other gradients
    (see the module docstring). Kept as the foil the lessons and tests compare against; comalite never
    trains with it.
    """
    queries = [encode(chunk) for chunk in query_chunks]
    targets = [encode(chunk) for chunk in target_chunks]
    loss = sum(loss_fn(q, t) for q, t in zip(queries, targets)) / len(queries)
    loss.backward()
    return loss.detach()
