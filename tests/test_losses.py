import math

import pytest
import torch
import torch.nn.functional as F

from siamsearch.training.losses import ArcFaceLoss, ContrastiveLoss, TripletLoss, make_loss
from siamsearch.core.errors import SiamsearchError


def unit(*xy):
    return torch.tensor([list(v) for v in xy], dtype=torch.float32)


def test_contrastive_by_hand():
    """Pairs formed inside the batch; genuine and impostor means weighted equally."""
    e = unit((1, 0), (0, 1), (0, 1))  # distances: d01 = sqrt2, d02 = sqrt2, d12 = 0
    ids = torch.tensor([5, 5, 7])
    loss = ContrastiveLoss(margin=1.5)(e, ids)
    # genuine: (0,1) at sqrt2 -> 2; impostor: (0,2) at sqrt2 -> (1.5-sqrt2)^2, (1,2) at 0 -> 1.5^2
    expected = 0.5 * 2.0 + 0.5 * ((1.5 - math.sqrt(2)) ** 2 + 1.5**2) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_contrastive_in_batch_against_loops():
    """Every i < j pair of a random batch, enumerated with plain loops."""
    torch.manual_seed(1)
    e = F.normalize(torch.randn(9, 4), dim=1)
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3])
    m = 0.8
    gen, imp = [], []
    for i in range(9):
        for j in range(i + 1, 9):
            d = float(torch.linalg.vector_norm(e[i] - e[j]))
            (gen if ids[i] == ids[j] else imp).append(d * d if ids[i] == ids[j] else max(0.0, m - d) ** 2)
    expected = 0.5 * sum(gen) / len(gen) + 0.5 * sum(imp) / len(imp)
    assert ContrastiveLoss(margin=m)(e, ids).item() == pytest.approx(expected, rel=1e-4)
    # one kind only: its own mean; a single sample: zero with the graph kept
    assert ContrastiveLoss(margin=m)(e[:3], ids[:3]).item() == pytest.approx(
        float(torch.pdist(e[:3]).pow(2).mean()), rel=1e-4)
    x = e[:1].clone().requires_grad_()
    z = ContrastiveLoss()(x, ids[:1])
    assert z.item() == 0.0
    z.backward()


def test_every_loss_takes_embeddings_and_identities():
    e = F.normalize(torch.randn(6, 4), dim=1)
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    for name in ("contrastive", "triplet", "arcface", "cosface"):
        loss_fn = make_loss(name, 3, 4)
        assert not hasattr(loss_fn, "pairwise")
        assert loss_fn(e, ids).ndim == 0
        with pytest.raises(ValueError):
            loss_fn(e, ids[:5])


def test_batch_hard_triplet_by_hand():
    e = unit((1, 0), (0.6, 0.8), (0, 1), (-1, 0))
    ids = torch.tensor([0, 0, 1, 1])
    d = torch.cdist(e, e)
    margin = 0.5
    # anchor 0: pos 1, neg min(d02, d03); anchor 1: pos 0, neg min(d12, d13); ...
    exp = []
    for i, (p, negs) in enumerate([(1, (2, 3)), (0, (2, 3)), (3, (0, 1)), (2, (0, 1))]):
        exp.append(max(0.0, d[i, p] - min(d[i, n] for n in negs) + margin))
    loss = TripletLoss(margin=margin, mining="hard")(e, ids)
    assert loss.item() == pytest.approx(float(sum(exp) / 4), rel=1e-4)


@pytest.mark.parametrize("mining", ["all", "hard"])
def test_triplet_without_triplets_is_zero_with_graph(mining):
    e = unit((1, 0), (0, 1)).requires_grad_()
    loss = TripletLoss(mining=mining)(e, torch.tensor([0, 1]))
    assert loss.item() == 0.0
    loss.backward()  # graph kept: an empty batch does not break the training step


def test_batch_all_triplet_by_hand():
    """Mean over the triplets with a loss above zero, enumerated with plain loops."""
    torch.manual_seed(0)
    e = F.normalize(torch.randn(7, 3), dim=1)
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    margin = 0.4
    d = torch.cdist(e, e)
    active = []
    for a in range(7):
        for p in range(7):
            for n in range(7):
                if a != p and ids[a] == ids[p] and ids[a] != ids[n]:
                    value = float(d[a, p] - d[a, n] + margin)
                    if value > 0:
                        active.append(value)
    assert active  # the case exercises the average
    loss = TripletLoss(margin=margin, mining="all")(e, ids)
    assert loss.item() == pytest.approx(sum(active) / len(active), rel=1e-4)
    # triplets already satisfied by more than the margin contribute nothing
    far = unit((1, 0), (1, 0), (-1, 0), (-1, 0))
    assert TripletLoss(margin=0.5, mining="all")(far, torch.tensor([0, 0, 1, 1])).item() == 0.0


def test_triplet_options_are_validated():
    with pytest.raises(SiamsearchError, match="mining"):
        TripletLoss(mining="semi")
    with pytest.raises(SiamsearchError, match="margin"):
        TripletLoss(margin=0.0)


def test_arcface_by_hand():
    loss_fn = ArcFaceLoss(num_classes=2, embedding_dim=2, scale=10.0, margin=0.5)
    with torch.no_grad():
        loss_fn.weight.copy_(unit((1, 0), (0, 1)))
    e = unit((0.8, 0.6))
    theta = math.acos(0.8)
    logits = torch.tensor([[10 * math.cos(theta + 0.5), 10 * 0.6]])
    expected = F.cross_entropy(logits, torch.tensor([0]))
    assert loss_fn(e, torch.tensor([0])).item() == pytest.approx(expected.item(), rel=1e-5)


def test_unknown_loss_is_user_error():
    with pytest.raises(SiamsearchError):
        make_loss("hinge", 3, 4)


@pytest.mark.parametrize("name,mining", [("contrastive", "all"), ("triplet", "all"), ("triplet", "hard"),
                                         ("arcface", "all"), ("cosface", "all")])
def test_learning_direction(name, mining):
    """A few optimiser steps on separable data shrink same-identity distances and grow different ones.

    This is the test that catches flipped pair labels."""
    torch.manual_seed(0)
    n_ids, per = 4, 6
    centers = torch.randn(n_ids, 16)
    ids = torch.arange(n_ids).repeat_interleave(per)
    x = centers[ids] + 1.0 * torch.randn(len(ids), 16)
    net = torch.nn.Linear(16, 8)
    loss_fn = make_loss(name, n_ids, 8, mining=mining)
    opt = torch.optim.SGD(list(net.parameters()) + list(loss_fn.parameters()), lr=0.1)
    same = ids[:, None] == ids[None, :]
    off = ~torch.eye(len(ids), dtype=torch.bool)

    def gap():
        with torch.no_grad():
            d = torch.cdist(F.normalize(net(x), dim=1), F.normalize(net(x), dim=1))
        return d[same & off].mean().item(), d[~same].mean().item()

    pos0, neg0 = gap()
    for _ in range(100):
        e = F.normalize(net(x), dim=1)
        loss = loss_fn(e, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pos1, neg1 = gap()
    assert pos1 < pos0 * 0.8, (pos0, pos1)
    assert neg1 > neg0, (neg0, neg1)
    assert neg1 - pos1 > neg0 - pos0 + 0.1


def test_cosface_by_hand():
    from siamsearch.training.losses import CosFaceLoss

    loss_fn = CosFaceLoss(num_classes=3, embedding_dim=2, scale=8.0, margin=0.25)
    with torch.no_grad():
        loss_fn.weight.copy_(unit((1, 0), (0, 1), (-1, 0)))
    e = unit((0.8, 0.6), (0.6, -0.8))
    ids = torch.tensor([1, 0])
    # cosines: row 0 = (0.8, 0.6, -0.8), true class 1; row 1 = (0.6, -0.8, -0.6), true class 0
    logits = 8.0 * torch.tensor([[0.8, 0.6 - 0.25, -0.8], [0.6 - 0.25, -0.8, -0.6]])
    expected = F.cross_entropy(logits, ids)
    assert loss_fn(e, ids).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(SiamsearchError, match="CosFace"):
        CosFaceLoss(num_classes=1, embedding_dim=2)
