"""The index stage's encoding: bf16 autocast gives float32 unit vectors close to fp32's, searched by FAISS."""

from __future__ import annotations

import numpy as np

from pipeline.common import load_model
from pipeline.index import build_index

TEXTS = ["Parvovirus causes vomiting and bloody diarrhoea in puppies.", "Feline diabetes: thirst and weight loss.",
         "Heartworm is spread by mosquitoes.", "Kennel cough is a contagious respiratory infection."]


def test_bf16_index_holds_float32_unit_vectors_close_to_fp32(tiny_model):
    model = load_model(tiny_model, max_seq_length=32, device="cpu")
    fp32, bf16 = (build_index(model, TEXTS, 2, precision) for precision in ("fp32", "bf16"))
    a, b = (np.vstack([index.reconstruct(i) for i in range(index.ntotal)]) for index in (fp32, bf16))
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape == (4, model.get_embedding_dimension())
    assert np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-3)
    assert not np.array_equal(a, b)  # bf16 really ran: its products are rounded
    assert (np.sum(a * b, axis=1) > 0.99).all()
    scores, ids = bf16.search(a[:1], 4)  # each passage is its own nearest neighbour across precisions
    assert ids[0][0] == 0
