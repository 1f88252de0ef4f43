"""Search the knowledge base index built by the index stage: a command, and a small API for a RAG application.

    python -m pipeline.search "What are the symptoms of a dog sickness causing vomiting and diarrhea?" -k 3

    from pipeline.search import Searcher
    hits = Searcher().search("my cat is drinking a lot", k=5)   # [{"rank", "score", "title", "text", "source"}, ...]
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import faiss
import pandas as pd

from pipeline.common import InputError, load_model, repo_path, run_main
from pipeline.index import INDEX_DIRS


class Searcher:
    """Loads the index, its passages and the model that encoded it; `search` returns the top-k passages.
    model: finetuned (models/index/) or base (models/index_base/); index_dir: another folder."""

    def __init__(self, index_dir: str | Path | None = None, model: str = "finetuned"):
        if model not in INDEX_DIRS:
            raise InputError(f"model {model!r}: one of {sorted(INDEX_DIRS)}")
        index_dir = repo_path(index_dir or INDEX_DIRS[model])
        info_file = index_dir / "info.json"
        if not info_file.is_file():
            raise InputError(f"{info_file}: no index here; run `dvc repro` (or `python -m pipeline.index {model}`) first")
        info = json.loads(info_file.read_text(encoding="utf-8"))
        if model not in info["models"]:
            raise InputError(f"model {model!r}: the index has {sorted(info['models'])}")
        self.passages = pd.read_json(index_dir / "passages.jsonl", lines=True, dtype=False).to_dict("records")
        self.index = faiss.read_index(str(index_dir / f"{model}.faiss"))
        self.model = load_model(info["models"][model], max_seq_length=info["max_seq_length"])

    def search(self, query: str, k: int = 5) -> list[dict]:
        vector = self.model.encode([query], normalize_embeddings=True).astype("float32")
        scores, ids = self.index.search(vector, min(k, self.index.ntotal))
        return [{"rank": rank, "score": round(float(s), 4), **self.passages[i]}
                for rank, (s, i) in enumerate(zip(scores[0], ids[0]), start=1)]


def hit_label(hit: dict) -> str:
    return f"{hit['title']} > {hit['heading']}" if hit.get("heading") else hit["title"]


def format_hit(hit: dict, width: int = 100) -> str:
    where = hit_label(hit)
    body = textwrap.shorten(hit["text"], width=300, placeholder=" …")
    return (f"{hit['rank']}. [{hit['score']:.3f}] {where}  ({hit['source']})\n"
            + textwrap.indent(textwrap.fill(body, width), "   "))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Search the knowledge base with the fine-tuned model.")
    parser.add_argument("query")
    parser.add_argument("-k", type=int, default=5, help="passages to return (default 5)")
    parser.add_argument("--model", default="finetuned", choices=sorted(INDEX_DIRS))
    parser.add_argument("--index", default=None, help="index folder (default models/index, or models/index_base)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    hits = Searcher(args.index, args.model).search(args.query, args.k)
    print(json.dumps(hits, indent=2, ensure_ascii=False) if args.json else "\n".join(map(format_hit, hits)))


if __name__ == "__main__":
    run_main(main)
