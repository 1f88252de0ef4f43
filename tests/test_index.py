"""The index stage's encoding and search structures: bf16 gives float32 unit vectors close to fp32's; above
index.approximate_above the index is approximate (IVF) and says how well it matches exact search."""

from __future__ import annotations

import numpy as np

from pipeline.models import load_model
from pipeline.retrieval import encode
from pipeline.serving.index_files import build_index

TEXTS = ["Parvovirus causes vomiting and bloody diarrhoea in puppies.", "Feline diabetes: thirst and weight loss.",
         "Heartworm is spread by mosquitoes.", "Kennel cough is a contagious respiratory infection."]


def test_bf16_encoding_gives_float32_unit_vectors_close_to_fp32(tiny_model):
    model = load_model(tiny_model, max_seq_length=32, device="cpu")
    a, b = (encode(model, TEXTS, 2, precision).numpy() for precision in ("fp32", "bf16"))
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape == (4, model.get_embedding_dimension())
    assert np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-3)
    assert not np.array_equal(a, b)  # bf16 really ran: its products are rounded
    assert (np.sum(a * b, axis=1) > 0.99).all()
    index, kind = build_index(b, {"approximate_above": 1000})
    assert kind == {"kind": "exact"} and index.search(a[:1], 4)[1][0][0] == 0  # its own nearest across precisions


def random_unit_vectors(n: int, dim: int = 32) -> np.ndarray:
    v = np.random.default_rng(1).standard_normal((n, dim)).astype("float32")
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_above_the_threshold_the_index_is_ivf_with_its_recall_measured():
    vectors = random_unit_vectors(3000)
    full, kind = build_index(vectors, {"approximate_above": 1000, "ivf_nlist": 16, "nprobe": 16})
    assert kind["kind"] == "ivf" and kind["nlist"] == 16 and kind["recall@10_vs_exact"] == 1.0  # every cell searched
    few, kind = build_index(vectors, {"approximate_above": 1000, "ivf_nlist": 16, "nprobe": 1})
    assert 0.0 < kind["recall@10_vs_exact"] < 1.0  # one cell of 16: neighbours in other cells are missed
    assert few.ntotal == full.ntotal == 3000


def test_several_gpus_encode_a_large_set_at_the_precision_asked(monkeypatch):
    """Above MULTI_GPU_MIN_TEXTS with several GPUs, fp32 goes to sentence-transformers' one-process-per-GPU pool;
    bf16 must not (those processes run outside this process's autocast, in fp32, while info.json would say bf16)."""
    import torch

    from pipeline import retrieval

    class Recorder:
        device = torch.device("cpu")

        def encode(self, texts, device=None, **kwargs):
            self.seen = {"devices": device, "autocast": torch.is_autocast_enabled("cpu")}
            return torch.ones(len(texts), 2)

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    texts = ["a passage"] * retrieval.MULTI_GPU_MIN_TEXTS
    model = Recorder()
    encode(model, texts, 16, "bf16")
    assert model.seen == {"devices": None, "autocast": True}
    encode(model, texts, 16, "fp32")
    assert model.seen == {"devices": ["cuda:0", "cuda:1"], "autocast": False}
    encode(model, texts[:10], 16, "bf16")  # a small set: one device, autocast, as ever
    assert model.seen == {"devices": None, "autocast": True}


def test_ivf_recall_is_measured_on_the_questions_given():
    """Passages as their own queries sit at the centre of their cell and flatter IVF; the recall recorded is measured
    on validation questions when the index stage has them (faiss' knn_intersection_measure)."""
    vectors = random_unit_vectors(3000)
    questions = random_unit_vectors(200 + 3000)[3000:]  # other points than the passages
    _, on_passages = build_index(vectors, {"approximate_above": 1000, "ivf_nlist": 16, "nprobe": 2})
    _, on_questions = build_index(vectors, {"approximate_above": 1000, "ivf_nlist": 16, "nprobe": 2}, questions)
    assert on_questions["recall_measured_on"] == "200 validation questions"
    assert on_passages["recall_measured_on"] == "1000 passages as queries"
    assert 0.0 < on_questions["recall@10_vs_exact"] < 1.0
