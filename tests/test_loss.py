"""InfoNCELoss against values worked out by hand.

The 2x2 case used throughout: q1 = (1, 0), q2 = (0, 1), t1 = (1, 0), t2 = (0.6, 0.8), so the
cosine matrix is S = q @ t.T = [[1, 0.6], [0, 0.8]] (positives on the diagonal).
At temperature 0.5 the logits are [[2, 1.2], [0, 1.6]]; the cross-entropy of row i is
logsumexp(row) - row[i]:
    row 1: log(e^2 + e^1.2) - 2     = log(1 + e^-0.8) = 0.3711006659477777
    row 2: log(e^0 + e^1.6) - 1.6   = log(1 + e^-1.6) = 0.1839007408883388
    mean                                              = 0.2775007034180582
"""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from comalite.loss import InfoNCELoss, similarity_logits

Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
T = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)


def test_similarity_logits_is_cosine_over_temperature():
    expected = torch.tensor([[2.0, 1.2], [0.0, 1.6]], dtype=torch.float64)
    torch.testing.assert_close(similarity_logits(Q, T, temperature=0.5), expected)


def test_two_by_two_value_by_hand():
    loss = InfoNCELoss(temperature=0.5)(Q, T)
    assert loss.item() == pytest.approx(0.2775007034180582, abs=1e-12)
    assert loss.item() == pytest.approx((math.log1p(math.exp(-0.8)) + math.log1p(math.exp(-1.6))) / 2, abs=1e-12)


def test_three_by_three_value_by_hand():
    # S = q @ t.T with q = I and t rows (0.8, 0.6, 0), (0, 1, 0), (0, 0.6, 0.8):
    #   S = [[0.8, 0, 0], [0.6, 1, 0.6], [0, 0, 0.8]], temperature 1:
    #   row 1: log(e^0.8 + 1 + 1) - 0.8      = log(1 + 2 e^-0.8)          = 0.6411472830263617
    #   row 2: log(e^0.6 + e^1 + e^0.6) - 1  = log(1 + 2 e^-0.4)          = 0.8504244355835799
    #   row 3: log(1 + 1 + e^0.8) - 0.8      = row 1                      = 0.6411472830263617
    #   mean = 0.7109063338787678
    q = torch.eye(3, dtype=torch.float64)
    t = torch.tensor([[0.8, 0.6, 0.0], [0.0, 1.0, 0.0], [0.0, 0.6, 0.8]], dtype=torch.float64)
    assert math.log1p(2 * math.exp(-0.8)) == pytest.approx(0.6411472830263617, abs=1e-15)
    assert math.log1p(2 * math.exp(-0.4)) == pytest.approx(0.8504244355835799, abs=1e-15)
    loss = InfoNCELoss(temperature=1.0)(q, t)
    assert loss.item() == pytest.approx(0.7109063338787678, abs=1e-12)


def test_symmetric_adds_the_target_to_query_term():
    # Target -> query logits are S.T / 0.5 = [[2, 0], [1.2, 1.6]]:
    #   row 1: log(1 + e^-2) = 0.1269280110429725,  row 2: log(1 + e^-0.4) = 0.5130152523999526
    #   mean 0.31997163172146253; symmetric loss = (0.2775007034180582 + 0.31997163172146253) / 2
    loss = InfoNCELoss(temperature=0.5, symmetric=True)(Q, T)
    assert loss.item() == pytest.approx(0.2987361675697604, abs=1e-12)


def test_shared_hard_negatives_are_extra_columns_for_every_query():
    # One hard negative h = (0, 1), shared: it adds the column q @ h / 0.5 = (0, 2).
    #   row 1: log(e^2 + e^1.2 + e^0) - 2   = 0.4603725535673182   (was 0.3711...)
    #   row 2: log(e^0 + e^1.6 + e^2) - 1.6 = 0.990923589202036    (h beats the positive: was 0.1839...)
    h = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    assert similarity_logits(Q, T, h, temperature=0.5).shape == (2, 3)
    loss = InfoNCELoss(temperature=0.5)(Q, T, h)
    assert loss.item() == pytest.approx(0.7256480713846771, abs=1e-12)
    assert loss > InfoNCELoss(temperature=0.5)(Q, T)
    # (B, N, D) input is flattened into one pool of B * N columns.
    pool = torch.stack([T, T])  # (2, 2, 2): 4 shared columns
    assert similarity_logits(Q, T, pool, temperature=0.5).shape == (2, 6)


def test_own_hard_negatives_only_reach_their_query():
    # h1 = h2 = (0, 1), each for its own query: q1 scores it 0, q2 scores it 2 (/0.5), so the rows are
    # those of the shared test above: 0.4603725535673182 and 0.990923589202036.
    own = InfoNCELoss(temperature=0.5, share_hard_negatives=False)
    h = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    assert own(Q, T, h).item() == pytest.approx(0.7256480713846771, abs=1e-12)
    # Now h1 = (-1, 0) (q1 scores it -2), h2 = (0, 1): row 1 = log(e^2 + e^1.2 + e^-2) - 2 = 0.3836588048...,
    # row 2 unchanged. Shared, q1 would also meet (0, 1) and q2 (-1, 0): a higher loss.
    h = torch.tensor([[[-1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)  # (B, N=1, D)
    row1 = math.log(math.exp(2) + math.exp(1.2) + math.exp(-2)) - 2
    assert own(Q, T, h).item() == pytest.approx((row1 + 0.990923589202036) / 2, abs=1e-12)
    assert InfoNCELoss(temperature=0.5)(Q, T, h) > own(Q, T, h)
    assert similarity_logits(Q, T, h, temperature=0.5, share_hard_negatives=False).shape == (2, 3)
    with pytest.raises(ValueError):
        own(Q, T, torch.zeros(3, 2, dtype=torch.float64))


def test_temperature_sharpens_both_ways():
    # Temperature 1: logits = S; row 1: log(1 + e^-0.4), row 2: log(1 + e^-0.8); mean 0.44205795917386514.
    assert InfoNCELoss(temperature=1.0)(Q, T).item() == pytest.approx(0.44205795917386514, abs=1e-12)
    # Well ranked (positives on top): a lower temperature lowers the loss ...
    losses = [InfoNCELoss(temperature=tau)(Q, T).item() for tau in (1.0, 0.5, 0.1, 0.03)]
    assert losses == sorted(losses, reverse=True)
    # ... mis-ranked (targets swapped): it raises it; at 0.03 row 1 costs about 0.4 / 0.03.
    swapped = T.flip(0)
    losses = [InfoNCELoss(temperature=tau)(Q, swapped).item() for tau in (1.0, 0.5, 0.1, 0.03)]
    assert losses == sorted(losses)
    assert losses[-1] == pytest.approx((0.4 + 0.8) / 2 / 0.03, rel=1e-6)


def test_perfect_alignment_costs_nothing_at_low_temperature():
    # q = t, 8 random unit vectors in 64 dimensions: every other cosine is below 0.26 in size.
    x = F.normalize(torch.randn(8, 64, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert (x @ x.T - torch.eye(8)).abs().max() < 0.26
    # At 0.01 the positive leads each negative by > 0.74 / 0.01 = 74: loss < 7 e^-74, i.e. 0 in float32.
    assert InfoNCELoss(temperature=0.01)(x, x).item() < 1e-12
    # At temperature 1 the same batch costs at least log(1 + 7 e^-1.26): the lead is only 1.26 at most.
    assert InfoNCELoss(temperature=1.0)(x, x).item() > math.log1p(7 * math.exp(-1.26))


def test_gradient_flows_and_shapes_are_checked():
    q = Q.clone().requires_grad_()
    InfoNCELoss(temperature=0.5)(q, T).backward()
    # d/dq1 of row 1 / 2 = (softmax(row1) @ t - t1) / (0.5 * 2); softmax(row1) = (p, 1 - p), p = 1 / (1 + e^-0.8)
    p = 1 / (1 + math.exp(-0.8))
    expected_q1 = ((p * T[0] + (1 - p) * T[1]) - T[0]) / (0.5 * 2)
    torch.testing.assert_close(q.grad[0], expected_q1)
    with pytest.raises(ValueError):
        InfoNCELoss()(Q, T[:1])
    with pytest.raises(ValueError):
        InfoNCELoss(temperature=0.0)


def test_gather_flag_is_a_no_op_without_a_process_group():
    assert InfoNCELoss(temperature=0.5, gather_across_devices=True)(Q, T).item() == pytest.approx(0.2775007034180582)


def _rank_worker(rank, world, init_file, out_dir):
    """One process of a 2-rank gloo run: encode its half of the batch, gather, backward, average like DDP."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    encoder = torch.nn.Linear(5, 4, dtype=torch.float64)  # same weights on both ranks
    x, y, n = (torch.randn(rows, 5, dtype=torch.float64) for rows in (6, 6, 4))
    local = slice(rank * 3, rank * 3 + 3)
    local_negatives = slice(rank * 2, rank * 2 + 2)

    def encode(inputs):
        return F.normalize(encoder(inputs), dim=-1)

    loss = InfoNCELoss(temperature=0.1, gather_across_devices=True, symmetric=True)(
        encode(x[local]), encode(y[local]), encode(n[local_negatives])
    )
    loss.backward()
    grad = encoder.weight.grad.clone()
    dist.all_reduce(grad)  # what DistributedDataParallel does: the mean over ranks
    grad /= world
    torch.save({"loss": loss.detach(), "grad": grad}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_gather_across_two_processes_matches_one_full_batch(tmp_path):
    mp.spawn(_rank_worker, args=(2, tmp_path / "init", tmp_path), nprocs=2)
    torch.manual_seed(0)
    encoder = torch.nn.Linear(5, 4, dtype=torch.float64)
    x, y, n = (torch.randn(rows, 5, dtype=torch.float64) for rows in (6, 6, 4))

    def encode(inputs):
        return F.normalize(encoder(inputs), dim=-1)

    full = InfoNCELoss(temperature=0.1, symmetric=True)(encode(x), encode(y), encode(n))
    full.backward()
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(result["loss"], full.detach(), atol=1e-12, rtol=0)
        torch.testing.assert_close(result["grad"], encoder.weight.grad, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- the registry stage 2 builds from


def test_stage2_builds_its_loss_from_the_settings():
    from comalite.config import load_config
    from comalite.loss import make_loss

    s2 = load_config("tiny-smoke", ["stage2.temperature=0.5", "stage2.symmetric=true",
                                    "stage2.share_hard_negatives=false"]).stage2
    loss = make_loss(s2)
    assert isinstance(loss, InfoNCELoss)
    assert (loss.temperature, loss.symmetric, loss.share_hard_negatives, loss.gather_across_devices) == \
        (0.5, True, False, True)


def test_a_loss_registered_in_loss_py_is_reached_by_its_setting(monkeypatch):
    """The worked example of adding a loss: one ``register_loss`` in ``comalite/loss.py``, nothing else edited."""
    from comalite.config import load_config
    from comalite.loss import LOSSES, make_loss, register_loss

    monkeypatch.setitem(LOSSES, "margin", None)  # the registry forgets it again after the test

    @register_loss("margin")
    def _margin(s2):
        return lambda q, t, negatives=None: torch.relu(0.2 - (q * t).sum(-1) + (q @ t.T).fill_diagonal_(-1).amax(1)).mean()

    loss = make_loss(load_config("tiny-smoke", ["stage2.loss=margin"]).stage2)
    q = F.normalize(torch.randn(4, 8), dim=-1)
    assert float(loss(q, q)) == pytest.approx(0.0)  # each query's own target is its best by more than the margin


def test_an_unknown_loss_is_refused_before_stage1_trains(tiny_config, capsys, no_model_load):
    from cli_checks import cli_error

    cfg = tiny_config()
    message = cli_error(capsys, "stage2", "--preset", "tiny-smoke", "--set", f"out_dir={cfg.out_dir}",
                        "--set", "stage2.loss=nosuch")
    assert message.strip() == "stage2.loss='nosuch': choose one of infonce"
