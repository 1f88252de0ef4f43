"""Stage 5, export: the served model as ONNX, in fp32 and dynamically quantised to int8, for fast CPU serving; each
scored beside PyTorch on the held-out sets, at the same length, with its encoding speed.

Why not sentence-transformers' export_optimized_onnx_model / export_dynamic_quantized_onnx_model: they go through
optimum-onnx, whose only release (0.1.0) requires transformers < 4.58, while sentence-transformers 6 requires
transformers >= 5 (pip resolves the two only by downgrading transformers, which breaks sentence-transformers).
So the graph is exported by torch.onnx.export and quantised by onnxruntime.quantization.quantize_dynamic, the two
calls those functions make underneath. The exported graph includes the model's pooling and normalisation.

Reads   params: model.base, encode.*, evaluate.depth, evaluate.mrr_k, evaluate.ndcg_k
        files:  models/finetuned/ and reports/serve.json (the served model, as the index), data/passages.jsonl,
                data/prepared/{test,testsets/*}/
Writes  models/onnx/         model.onnx (fp32), model_int8.onnx, tokenizer.json, export.json (the sha256 of the
                             model it came from: search refuses an export of another model)
        reports/export.json  per backend (torch, onnx, onnx_int8): mrr@10 and ndcg@10 per held-out set,
                             passages/s encoding the same texts, and the change against torch

    python -m pipeline.stages.export
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.eval.heldout import found_sections, held_out_sets, scored_set
from pipeline.eval.metrics import per_query_metrics, summary
from pipeline.files import atomic_dir, atomic_file, read_jsonl, write_json
from pipeline.models import load_model, local_model_path, model_fingerprint, pick_precision, resolve_model
from pipeline.params import load_params, require_tracked, run_main
from pipeline.paths import EXPORT_REPORT, FINETUNED, ONNX_DIR, PASSAGES, PREPARED, SERVE
from pipeline.retrieval import encode, top_k
from pipeline.serving.onnx_encoder import INPUTS, OnnxEncoder

log = logging.getLogger("pipeline.export")


class PooledEmbedding(torch.nn.Module):
    """The sentence-transformers model end to end (transformer, pooling) and unit length: one graph, one output."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        features = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return torch.nn.functional.normalize(self.model(features)["sentence_embedding"], dim=-1)


def export_onnx(model, folder: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    example = model.tokenizer(["an example", "a second, longer example"], padding=True, return_tensors="pt")
    torch.onnx.export(PooledEmbedding(model.cpu().eval()), tuple(example[n] for n in INPUTS), str(folder / "model.onnx"),
                      input_names=list(INPUTS), output_names=["embedding"], opset_version=17, dynamo=False,
                      dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in INPUTS}, "embedding": {0: "batch"}})
    # dynamic quantisation: int8 weights, activations quantised per batch at run time, no calibration data
    quantize_dynamic(str(folder / "model.onnx"), str(folder / "model_int8.onnx"), weight_type=QuantType.QInt8)


def main() -> None:
    enc, ev = load_params("encode"), load_params("evaluate")
    base = load_params("model")["base"]
    require_tracked("export", {"model.base": local_model_path(base)})
    served = json.loads(SERVE.read_text(encoding="utf-8"))
    model_ref = str(FINETUNED) if served["model"] == "finetuned" else base
    max_len, batch_size = int(enc["max_seq_length"]), int(enc["batch_size"])
    precision = pick_precision(enc["precision"], "encode.precision")
    model = load_model(model_ref, max_seq_length=max_len, device="cpu")
    cfg = {"mrr_k": int(ev["mrr_k"]), "ndcg_k": int(ev["ndcg_k"]), "map_k": int(ev["depth"]), "recall_k": [],
           "depth": int(ev["depth"])}
    passages = read_jsonl(PASSAGES)

    with atomic_dir(ONNX_DIR) as out:
        export_onnx(model, out)
        shutil.copy(Path(resolve_model(model_ref)) / "tokenizer.json", out / "tokenizer.json")
        write_json(out / "export.json", {"model": model_ref, "sha256": model_fingerprint(resolve_model(model_ref)),
                                         "max_seq_length": max_len})
        encoders = {"torch": lambda texts: encode(model, texts, batch_size, precision).cpu(),
                    "onnx": OnnxEncoder(out / "model.onnx", max_len).encode,
                    "onnx_int8": OnnxEncoder(out / "model_int8.onnx", max_len).encode}
        report: dict = {backend: {} for backend in encoders}
        seconds, encoded = dict.fromkeys(encoders, 0.0), 0
        for name, folder in held_out_sets(PREPARED).items():
            corpus, queries, qrels, section_of = scored_set(folder, passages)
            texts = list(corpus.values()) + list(queries.values())
            encoded += len(texts)
            for backend, fn in encoders.items():
                start = time.perf_counter()
                vectors = torch.as_tensor(np.asarray(fn(texts)))
                seconds[backend] += time.perf_counter() - start
                c_emb, q_emb = vectors[:len(corpus)], vectors[len(corpus):]
                run = found_sections(top_k(q_emb, c_emb, list(queries), list(corpus), cfg["depth"]), qrels, section_of)
                scores = summary(per_query_metrics(run, qrels, cfg), cfg)
                report[backend][name] = {k: v for k, v in scores.items() if not k.startswith("map")}
        for backend in encoders:
            report[backend]["passages_per_second"] = round(encoded / seconds[backend], 1)
        for backend in ("onnx", "onnx_int8"):
            report[backend]["speedup_vs_torch"] = round(report[backend]["passages_per_second"]
                                                        / report["torch"]["passages_per_second"], 2)
            report[backend]["ndcg_change_vs_torch"] = {
                name: round(report[backend][name][f"ndcg@{cfg['ndcg_k']}"] - report["torch"][name][f"ndcg@{cfg['ndcg_k']}"], 4)
                for name in held_out_sets(PREPARED)}
        with atomic_file(EXPORT_REPORT) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for backend, block in report.items():
        log.info("%-9s %6.1f passages/s  %s", backend, block["passages_per_second"],
                 "  ".join(f"{n} ndcg@10 {block[n]['ndcg@10']:.4f}" for n in held_out_sets(PREPARED)))


if __name__ == "__main__":
    run_main(main)
