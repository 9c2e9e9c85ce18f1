"""GradCache gives the full-batch gradients exactly, dropout included; plain accumulation does not."""
import pytest
import torch
import torch.nn.functional as F

from comalite.gradcache import full_batch_step, gradcache_step
from comalite.loss import InfoNCELoss


class NoisyEncoder(torch.nn.Module):
    """A two-layer encoder with dropout and additive noise in training mode, L2-normalised output."""

    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(8, 16, dtype=torch.float64)
        self.dropout = torch.nn.Dropout(0.3)
        self.outer = torch.nn.Linear(16, 6, dtype=torch.float64)

    def forward(self, x):
        h = F.gelu(self.inner(x))
        if self.training:
            h = h + 0.1 * torch.randn_like(h)
        return F.normalize(self.outer(self.dropout(h)), dim=-1)


def _setup():
    torch.manual_seed(0)
    model = NoisyEncoder()
    data = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    negatives = torch.randn(4, 8, dtype=torch.float64)
    return model, data, negatives


def _grads(model):
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def _run(step, model, queries, targets, q_size, t_size, loss_fn, negatives=None, n_size=None, seed=123):
    torch.manual_seed(seed)
    extra = None if negatives is None else list(negatives.split(n_size))
    loss = step(model, list(queries.split(q_size)), list(targets.split(t_size)), loss_fn, extra_chunks=extra)
    return loss, _grads(model)


def _assert_same(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("q_size,t_size", [(1, 1), (2, 2), (3, 3), (2, 3), (4, 1)])
def test_gradcache_equals_full_batch_with_dropout(q_size, t_size):
    model, (queries, targets), _ = _setup()
    loss_fn = InfoNCELoss(temperature=0.1)
    loss_gc, grads_gc = _run(gradcache_step, model, queries, targets, q_size, t_size, loss_fn)
    loss_full, grads_full = _run(full_batch_step, model, queries, targets, q_size, t_size, loss_fn)
    assert loss_gc.item() == pytest.approx(loss_full.item(), abs=1e-14)
    assert not loss_gc.requires_grad
    _assert_same(grads_gc, grads_full)
    # And the dropout really fired: a different seed gives other gradients.
    _, grads_other = _run(full_batch_step, model, queries, targets, q_size, t_size, loss_fn, seed=7)
    assert not torch.allclose(grads_other[0], grads_full[0])


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunking_does_not_change_a_deterministic_encoder(chunk):
    # Without randomness the chunk size is irrelevant: GradCache in chunks = the plain full batch.
    model, (queries, targets), _ = _setup()
    model.eval()
    loss_fn = InfoNCELoss(temperature=0.1)
    loss_gc, grads_gc = _run(gradcache_step, model, queries, targets, chunk, chunk, loss_fn)
    loss_full, grads_full = _run(full_batch_step, model, queries, targets, 6, 6, loss_fn)
    assert loss_gc.item() == pytest.approx(loss_full.item(), abs=1e-14)
    _assert_same(grads_gc, grads_full)


def test_hard_negatives_with_their_own_chunking():
    model, (queries, targets), negatives = _setup()
    loss_fn = InfoNCELoss(temperature=0.1)  # shared pool: 4 negatives for 6 queries is fine
    args = (model, queries, targets, 2, 3, loss_fn, negatives, 3)
    loss_gc, grads_gc = _run(gradcache_step, *args)
    loss_full, grads_full = _run(full_batch_step, *args)
    loss_plain, _ = _run(full_batch_step, model, queries, targets, 2, 3, loss_fn)
    assert loss_gc.item() == pytest.approx(loss_full.item(), abs=1e-14)
    assert loss_gc > loss_plain  # the negatives were used
    _assert_same(grads_gc, grads_full)


def test_parameters_of_the_loss_get_their_gradient_once():
    model, (queries, targets), _ = _setup()
    log_scale = torch.zeros((), dtype=torch.float64, requires_grad=True)

    def loss_fn(q, t):
        return F.cross_entropy(q @ t.T * log_scale.exp() * 10, torch.arange(q.shape[0]))

    _run(gradcache_step, model, queries, targets, 2, 3, loss_fn)
    grad_gc, log_scale.grad = log_scale.grad.clone(), None
    _run(full_batch_step, model, queries, targets, 2, 3, loss_fn)
    torch.testing.assert_close(grad_gc, log_scale.grad, atol=1e-12, rtol=1e-10)


def test_second_pass_replays_the_first_pass_randomness():
    model, (queries, targets), _ = _setup()
    outputs = []

    # Record pass 1 (no grad) and pass 2 (grad) embeddings of the 3 + 2 chunks; compare pairwise.
    def recording_encode(chunk):
        embedding = model(chunk)
        outputs.append(embedding.detach().clone())
        return embedding

    torch.manual_seed(5)
    gradcache_step(recording_encode, list(queries.split(2)), list(targets.split(3)), InfoNCELoss())
    assert len(outputs) == 10
    for first, second in zip(outputs[:5], outputs[5:]):
        torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert not torch.equal(outputs[0], model(queries[:2]))  # another draw differs: the replay mattered


def test_random_state_afterwards_is_that_of_one_ordinary_pass():
    model, (queries, targets), _ = _setup()
    loss_fn = InfoNCELoss(temperature=0.1)
    _run(gradcache_step, model, queries, targets, 2, 3, loss_fn)
    after_gc = torch.get_rng_state()
    _run(full_batch_step, model, queries, targets, 2, 3, loss_fn)
    assert torch.equal(after_gc, torch.get_rng_state())


def test_plain_accumulation_is_not_the_same():
    # Accumulating per-micro-batch losses only lets each query compete with its own micro-batch's targets.
    model, (queries, targets), _ = _setup()
    model.eval()  # no randomness, so any difference comes from the shrunken pool of negatives
    loss_fn = InfoNCELoss(temperature=0.1)
    loss_full, grads_full = _run(full_batch_step, model, queries, targets, 6, 6, loss_fn)
    accumulated = 0.0
    for q, t in zip(queries.split(2), targets.split(2)):
        loss = loss_fn(model(q), model(t)) / 3
        loss.backward()
        accumulated += loss.item()
    grads_accumulated = _grads(model)
    # Each row's log-sum-exp runs over 2 candidates instead of 6: strictly smaller.
    assert accumulated < loss_full.item()
    assert all(not torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_accumulated, grads_full))
    # While GradCache with the same chunks matches the full batch.
    _, grads_gc = _run(gradcache_step, model, queries, targets, 2, 2, loss_fn)
    _assert_same(grads_gc, grads_full)
