"""train: each loss named in params gets the dataset layout it needs; bad names fail clearly."""

from __future__ import annotations

import pytest

from pipeline.common import InputError, load_model
from pipeline.train import build_loss

ROWS = [{"anchor": f"q{i}", "positive": f"p{i}", "negative_1": f"n{i}"} for i in range(4)]
CFG = {"mini_batch_size": 2, "matryoshka_dims": None}


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_model(tiny_model, device="cpu")


@pytest.mark.parametrize("name, columns, rows", [
    ("MultipleNegativesRankingLoss", ["anchor", "positive", "negative_1"], 4),
    ("CachedMultipleNegativesRankingLoss", ["anchor", "positive", "negative_1"], 4),
    ("TripletLoss", ["anchor", "positive", "negative_1"], 4),
    ("CosineSimilarityLoss", ["sentence1", "sentence2", "score"], 8),
])
def test_loss_and_dataset_layout(model, name, columns, rows):
    loss, data = build_loss(name, model, ROWS, CFG)
    assert type(loss).__name__ == name
    assert data.column_names == columns and len(data) == rows
    if name == "CosineSimilarityLoss":
        assert sorted(set(data["score"])) == [0.0, 1.0]


def test_matryoshka_wraps_the_loss(model):
    loss, _ = build_loss("MultipleNegativesRankingLoss", model, ROWS, dict(CFG, matryoshka_dims=[32, 16]))
    assert type(loss).__name__ == "MatryoshkaLoss"


def test_pairs_without_negatives_and_bad_names(model):
    pairs = [{"anchor": r["anchor"], "positive": r["positive"]} for r in ROWS]
    _, data = build_loss("MultipleNegativesRankingLoss", model, pairs, CFG)
    assert data.column_names == ["anchor", "positive"]
    with pytest.raises(InputError, match="TripletLoss needs prepare.negatives.num"):
        build_loss("TripletLoss", model, pairs, CFG)
    with pytest.raises(InputError, match="'ContrastiveLos' is not one of"):
        build_loss("ContrastiveLos", model, ROWS, CFG)
