"""Encode with an ONNX export of the served model (pipeline/stages/export.py): ONNX Runtime and the model's own tokenizer,
no PyTorch. The graph already ends in the model's pooling and unit-length normalisation, so this is the whole
encoder; loading it takes a fraction of a second where importing PyTorch and sentence-transformers takes seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# each input a graph may declare, and the field of a tokenizers Encoding that holds it: a graph declares the inputs
# its model's tokenizer gives (BERT: all three; MPNet, RoBERTa: no token_type_ids), and is fed exactly those
FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


class OnnxEncoder:
    def __init__(self, model_file: str | Path, max_seq_length: int, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_file = Path(model_file)
        self.tokenizer = Tokenizer.from_file(str(model_file.parent / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_seq_length)
        if self.tokenizer.padding is None:  # an export that copied the model's file as it came: BERT's pad token
            self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id("[PAD]") or 0)
        # errors only: at INFO/WARNING onnxruntime prints its graph optimiser's and device discovery's notes on every
        # start (harmless, and alarming in a service's log)
        ort.set_default_logger_severity(3)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:  # the service gives the cores it may use (pipeline/serving/cpu.py); else onnxruntime's default
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        unknown = [name for name in self.inputs if name not in FIELDS]
        if unknown:
            raise ValueError(f"{model_file} declares inputs {unknown} that a tokenizer does not give "
                             f"(it gives {', '.join(FIELDS)})")

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer.encode_batch(list(texts[i:i + batch_size]))
            feed = {name: np.asarray([getattr(e, FIELDS[name]) for e in batch], dtype=np.int64) for name in self.inputs}
            out.append(self.session.run(None, feed)[0])
        return np.vstack(out).astype("float32") if out else np.zeros((0, 0), dtype="float32")
