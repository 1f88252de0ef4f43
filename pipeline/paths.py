"""Every artifact path of the pipeline, named once: relative to the project root, where `dvc repro` runs the stages
(dvc.yaml lists the same paths as deps and outs)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the project folder (the installed checkout)

PASSAGES = Path("data/passages.jsonl")      # passages: the served cut of the knowledge base
PREPARED = Path("data/prepared")            # prepare: train.jsonl, val/, val_users/, test/, testsets/<name>/
DATA_STATS = Path("reports/data_stats.json")
FINETUNED = Path("models/finetuned")        # train: the chosen (merged) model
TRAIN_LOGS = Path("reports/train")          # train: dvclive logs and summary
BASELINES = Path("reports/baselines")       # baselines: base model and BM25 runs
METRICS = Path("reports/metrics.json")      # evaluate
PER_QUERY = Path("reports/per_query.csv")
PLOTS = Path("reports/plots")
REPORT = Path("reports/report.md")
SERVE = Path("reports/serve.json")          # evaluate: which model the index serves, and its no-match threshold
INDEX_DIRS = {"finetuned": Path("models/index"), "base": Path("models/index_base")}  # index, index_base
ONNX_DIR = Path("models/onnx")              # export
EXPORT_REPORT = Path("reports/export.json")
EMBEDDINGS = Path(".cache/embeddings")      # encode once: vectors by model and texts (pipeline/embeddings.py); no out
