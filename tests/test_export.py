"""The ONNX export takes the inputs the model's tokenizer gives, and OnnxEncoder feeds the graph exactly the inputs it
declares: a BERT tokenizer gives token_type_ids, an MPNet (or RoBERTa) tokenizer does not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

TEXTS = ["my dog keeps vomiting", "What are the symptoms of parvovirus in young puppies, and how is it treated?", "a"]


@pytest.fixture(scope="module")
def tiny_mpnet(tmp_path_factory, tiny_model) -> str:
    """A randomly initialised 2-layer MPNet with the tiny BERT's tokenizer, told to give only input_ids and
    attention_mask, as MPNet's own tokenizer does."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import MPNetConfig, MPNetModel

    raw = tmp_path_factory.mktemp("tiny-mpnet")
    MPNetModel(MPNetConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64, pad_token_id=0)).save_pretrained(raw)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (Path(tiny_model) / name).exists():
            shutil.copy(Path(tiny_model) / name, raw / name)
    config = json.loads((raw / "tokenizer_config.json").read_text())
    config["model_input_names"] = ["input_ids", "attention_mask"]
    (raw / "tokenizer_config.json").write_text(json.dumps(config))
    transformer = Transformer(str(raw), max_seq_length=32)
    out = tmp_path_factory.mktemp("tiny-mpnet-st") / "model"
    SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")],
                        device="cpu").save_pretrained(str(out))
    return str(out)


@pytest.mark.parametrize("which, inputs", [
    ("tiny_model", ["input_ids", "token_type_ids", "attention_mask"]),
    ("tiny_mpnet", ["input_ids", "attention_mask"]),
])
def test_onnx_export_encodes_as_sentence_transformers(which, inputs, request, tmp_path):
    from sentence_transformers import SentenceTransformer

    from pipeline.serving.onnx_encoder import OnnxEncoder
    from pipeline.stages.export import export_onnx

    model = SentenceTransformer(request.getfixturevalue(which), device="cpu")
    model.max_seq_length = 16  # the long text is truncated: the encoder must cut where sentence-transformers cuts
    assert list(model.tokenizer(["x"]).keys()) == inputs  # the fixture is what it claims to be
    expected = model.encode(TEXTS, normalize_embeddings=True)
    export_onnx(model, tmp_path)
    encoder = OnnxEncoder(tmp_path / "model.onnx", 16)
    assert encoder.inputs == inputs
    np.testing.assert_allclose(encoder.encode(TEXTS, batch_size=2), expected, atol=1e-5)
    int8 = OnnxEncoder(tmp_path / "model_int8.onnx", 16).encode(TEXTS)
    assert int8.shape == expected.shape and np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
