"""With the real base model (all-MiniLM-L6-v2 from its installed weights package, offline)."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.data.readers import normalize
from pipeline.data.split import leakage_guard
from pipeline.models import load_model


@pytest.fixture(scope="module")
def base_model():
    return load_model("all-MiniLM-L6-v2", max_seq_length=64, device="cpu")


def test_base_model_loads_offline_and_embeds(base_model):
    emb = base_model.encode(["What is canine parvovirus?"], normalize_embeddings=True)
    assert emb.shape == (1, 384)


def test_leakage_guard_catches_exact_and_reworded_test_questions(base_model):
    train = pd.DataFrame({"query": [
        "What are the symptoms of canine parvovirus ?",       # same text once normalised
        "What are the signs of canine parvovirus?",           # reworded
        "How is FIV spread between cats?",                    # unrelated
    ]})
    train["q_norm"] = train["query"].map(normalize)
    held_out = ["what are the symptoms of canine parvovirus", "Is laminitis in horses an emergency?"]
    exact, near = leakage_guard(train, held_out, base_model, threshold=0.9, batch_size=8)
    assert exact.tolist() == [True, False, False]
    assert near.tolist() == [False, True, False]
