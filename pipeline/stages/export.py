"""Stage 5, export: the served model as ONNX, in fp32 and dynamically quantised to int8, for fast CPU serving; each
backend scored as `search --backend` serves it: its query vectors against the passage vectors of the index PyTorch
built (models/index), with its agreement with those vectors and its encoding speed on a fixed sample of passages.

Why not sentence-transformers' export_optimized_onnx_model / export_dynamic_quantized_onnx_model: they go through
optimum-onnx, whose only release (0.1.0) requires transformers < 4.58, while sentence-transformers 6 requires
transformers >= 5 (pip resolves the two only by downgrading transformers, which breaks sentence-transformers).
So the graph is exported by torch.onnx.export and quantised by onnxruntime.quantization.quantize_dynamic, the two
calls those functions make underneath. The exported graph includes the model's pooling and normalisation.

Reads   params: model.base, encode.batch_size (the length and precision are the index's own, from its info.json),
                evaluate.depth, evaluate.mrr_k, evaluate.ndcg_k
        files:  models/finetuned/ and reports/serve.json (the served model), models/index/ (its passages and their
                vectors, as search reads them), data/prepared/{test,testsets/*}/
Writes  models/onnx/         model.onnx (fp32), model_int8.onnx, tokenizer.json, export.json (the sha256 of the
                             model it came from: search refuses an export of another model; each backend's
                             passages/s and NDCG@10 change, the CPU: what `--backend auto` chooses by)
        reports/export.json  per backend (torch, onnx, onnx_int8): mrr@10 and ndcg@10 per held-out set (torch equals
                             the served model's scores in reports/metrics.json), the change against torch, cosine
                             agreement with the index's vectors (min, mean) and passages/s on the sample; "setup":
                             the sample, the CPU and the threads the speeds were measured on, and the passages each
                             held-out set was scored on

    python -m pipeline.stages.export
"""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path

import faiss
import numpy as np
import torch

from pipeline.data.readers import passage_text
from pipeline.embeddings import encode_cached
from pipeline.eval.heldout import found_sections, held_out_sets, scored_set
from pipeline.eval.metrics import per_query_metrics, summary
from pipeline.files import atomic_outputs, read_jsonl, write_json
from pipeline.models import load_model, local_model_path, model_fingerprint, resolve_model
from pipeline.params import InputError, load_params, require_tracked, run_main
from pipeline.paths import EXPORT_REPORT, FINETUNED, INDEX_DIRS, ONNX_DIR, PREPARED, SERVE
from pipeline.retrieval import encode, top_k
from pipeline.serving.backend_choice import host_cpu  # the CPU `--backend auto` compares with the host's
from pipeline.serving.onnx_encoder import OnnxEncoder

log = logging.getLogger("pipeline.export")
ONNX_FILES = {"onnx": "model.onnx", "onnx_int8": "model_int8.onnx"}  # search --backend onnx, onnx-int8
SAMPLE = 256  # agreement and speed: the first SAMPLE passages in index order, the same texts on every run


class PooledEmbedding(torch.nn.Module):
    """The sentence-transformers model end to end (transformer, pooling) and unit length: one graph, one output."""

    def __init__(self, model, input_names: list[str]):
        super().__init__()
        self.model, self.input_names = model, input_names

    def forward(self, *inputs):
        features = dict(zip(self.input_names, inputs))
        return torch.nn.functional.normalize(self.model(features)["sentence_embedding"], dim=-1)


def export_onnx(model, folder: Path) -> None:
    """model.onnx, model_int8.onnx and tokenizer.json in `folder`. The graph takes the inputs the model's tokenizer
    gives: BERT's token_type_ids too, MPNet's and RoBERTa's input_ids and attention_mask only."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from tokenizers import Tokenizer

    example = model.tokenizer(["an example", "a second, longer example"], padding=True, return_tensors="pt")
    names = [n for n in model.tokenizer.model_input_names if n in example]
    axes = {**{n: {0: "batch", 1: "tokens"} for n in names}, "embedding": {0: "batch"}}
    torch.onnx.export(PooledEmbedding(model.cpu().eval(), names), tuple(example[n] for n in names),
                      str(folder / "model.onnx"), input_names=names, output_names=["embedding"], opset_version=17,
                      dynamo=False, dynamic_axes=axes)
    # dynamic quantisation: int8 weights, activations quantised per batch at run time, no calibration data
    quantize_dynamic(str(folder / "model.onnx"), str(folder / "model_int8.onnx"), weight_type=QuantType.QInt8)
    # the model's own tokenizer with its own pad token (RoBERTa's and MPNet's is <pad>, not BERT's [PAD]);
    # OnnxEncoder sets the truncation to the served length
    tokenizer = Tokenizer.from_str(model.tokenizer.backend_tokenizer.to_str())
    tokenizer.no_truncation()
    tokenizer.enable_padding(pad_id=model.tokenizer.pad_token_id or 0, pad_token=model.tokenizer.pad_token or "[PAD]")
    tokenizer.save(str(folder / "tokenizer.json"))


def index_vectors(index: faiss.Index) -> np.ndarray:
    """The served passage vectors as the index stores them, in index order (= the index's passages.jsonl)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:  # an IVF index looks vectors up by id only through a direct map
        ivf.make_direct_map()
    return index.reconstruct_n(0, index.ntotal)


def measure(encoders: dict, sample: list[dict], served: np.ndarray) -> dict:
    """Per backend: passages/s encoding the sample, one backend at a time and nothing else running, after a warm-up
    batch (the first call pays for allocation and graph set-up); and the cosine of each of its passage vectors with
    the index's vector of the same passage (both unit length: the dot product)."""
    texts = [passage_text(p["title"], p["heading"], p["text"]) for p in sample]
    report: dict = {}
    for backend, fn in encoders.items():
        fn(texts[:8])
        start = time.perf_counter()
        vectors = np.asarray(fn(texts), dtype=np.float32)
        seconds = time.perf_counter() - start
        cosines = (vectors * served).sum(axis=1)
        report[backend] = {"passages_per_second": round(len(texts) / seconds, 1),
                           "agreement_with_index": {"min_cosine": round(float(cosines.min()), 6),
                                                    "mean_cosine": round(float(cosines.mean()), 6)}}
        log.info("%-9s %6.1f passages/s on %d passages, cosine with the index's vectors min %.6f mean %.6f", backend,
                 report[backend]["passages_per_second"], len(texts), cosines.min(), cosines.mean())
    for backend in ONNX_FILES:
        report[backend]["speedup_vs_torch"] = round(report[backend]["passages_per_second"]
                                                    / report["torch"]["passages_per_second"], 2)
    return report


def main() -> None:
    enc, ev = load_params("encode"), load_params("evaluate")
    base = load_params("model")["base"]
    require_tracked("export", {"model.base": local_model_path(base)})
    served = json.loads(SERVE.read_text(encoding="utf-8"))
    model_ref = str(FINETUNED) if served["model"] == "finetuned" else base
    index_dir = INDEX_DIRS["finetuned"]
    info = json.loads((index_dir / "info.json").read_text(encoding="utf-8"))
    if model_fingerprint(resolve_model(model_ref)) != info["model"]["sha256"]:
        raise InputError(f"{index_dir} was encoded by another model than the served {model_ref}; run `dvc repro`")
    # the index's own length and precision: what `search` encodes queries with
    max_len, precision, batch_size = int(info["max_seq_length"]), info["precision"], int(enc["batch_size"])
    # on the CPU, where the ONNX backends serve, so the speeds compare; on a GPU host the index's vectors came from
    # the GPU, and torch's agreement below shows how far that moves them
    model = load_model(model_ref, max_seq_length=max_len, device="cpu")
    cfg = {"mrr_k": int(ev["mrr_k"]), "ndcg_k": int(ev["ndcg_k"]), "map_k": int(ev["depth"]), "recall_k": [],
           "depth": int(ev["depth"])}
    passages = read_jsonl(index_dir / "passages.jsonl")
    served_vectors = index_vectors(faiss.read_index(str(index_dir / "dense.faiss")))
    if len(served_vectors) != len(passages):
        raise InputError(f"{index_dir}: {len(served_vectors)} vectors for {len(passages)} passages; run `dvc repro`")

    with atomic_outputs(ONNX_DIR, EXPORT_REPORT) as (out, report_tmp):  # swapped in together, or neither
        out.mkdir()
        export_onnx(model, out)
        onnx = {backend: OnnxEncoder(out / file, max_len) for backend, file in ONNX_FILES.items()}
        encoders = {"torch": lambda texts: encode(model, texts, batch_size, precision).cpu().numpy(),
                    **{backend: partial(e.encode, batch_size=batch_size) for backend, e in onnx.items()}}
        measured = measure(encoders, passages[:SAMPLE], served_vectors[:SAMPLE])
        scores, scored_on = {backend: {} for backend in encoders}, {}
        for name, folder in held_out_sets(PREPARED).items():
            corpus, queries, qrels, section_of = scored_set(folder, passages)
            # exact top-k over the vectors, as evaluate scores (an IVF index's own approximation is the index stage's
            # to measure: info.json recall@10_vs_exact), so torch equals the served model's score in metrics.json
            if section_of is not None:  # the set judges the served passages: the index's vectors, as served
                c_emb, scored_on[name] = torch.from_numpy(served_vectors), f"{index_dir} (the served passages)"
            else:
                # the set judges passages the index does not serve: its own corpus, encoded once by PyTorch as the
                # index stage encodes passages, so each backend is still scored as it would serve (its queries,
                # PyTorch's passages) rather than not at all; export.json says which sets were scored this way
                # through the embedding cache: evaluate encoded this very list with this model and settings
                c_emb = encode_cached(model, list(corpus.values()), batch_size, precision).cpu()
                scored_on[name] = "its own corpus, encoded by PyTorch (the index does not serve its passages)"
                log.info("%s: scored on %s", name, scored_on[name])
            for backend, fn in encoders.items():
                q_emb = torch.from_numpy(np.asarray(fn(list(queries.values())), dtype=np.float32))
                run = found_sections(top_k(q_emb, c_emb, list(queries), list(corpus), cfg["depth"]), qrels, section_of)
                block = summary(per_query_metrics(run, qrels, cfg), cfg)
                scores[backend][name] = {k: v for k, v in block.items() if not k.startswith("map")}
        ndcg = f"ndcg@{cfg['ndcg_k']}"
        report = {backend: {**scores[backend], **measured[backend]} for backend in encoders}
        for backend in ONNX_FILES:
            report[backend]["ndcg_change_vs_torch"] = {
                name: round(scores[backend][name][ndcg] - scores["torch"][name][ndcg], 4) for name in scored_on}
        # beside the graphs, for `serve --backend auto` (pipeline/serving/backend_choice.py): each backend's speed
        # and its NDCG@10 change on every held-out set, under the names `--backend` takes
        backends = {backend.replace("_", "-"): {"passages_per_second": report[backend]["passages_per_second"],
                                                 **({"ndcg_change_vs_torch": report[backend]["ndcg_change_vs_torch"]}
                                                    if backend in ONNX_FILES else {})} for backend in encoders}
        write_json(out / "export.json", {"model": model_ref, "sha256": info["model"]["sha256"],
                                         "max_seq_length": max_len, "cpu": host_cpu(),
                                         "threads": torch.get_num_threads(), "backends": backends})
        report["setup"] = {"scored": f"each backend's query vectors against the passage vectors in {index_dir}",
                           "sample": f"the first {min(SAMPLE, len(passages))} passages of {index_dir} in index order",
                           "cpu": host_cpu(), "torch_threads": torch.get_num_threads(), "scored_on": scored_on}
        write_json(report_tmp, report)
    for backend in encoders:
        log.info("%-9s %s", backend, "  ".join(f"{n} {ndcg} {scores[backend][n][ndcg]:.4f}" for n in scored_on))


if __name__ == "__main__":
    run_main(main)
