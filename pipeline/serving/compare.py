"""The seed's demo: base and fine-tuned model side by side on the indexed knowledge base, for any query.

    python -m pipeline.serving.compare "What are the symptoms of a dog sickness causing vomiting and diarrhea?" -k 3
"""

from __future__ import annotations

import argparse
import textwrap

from pipeline.params import run_main
from pipeline.serving.search import Searcher, default_index, hit_label


def side_by_side(left: list[dict], right: list[dict], width: int = 58) -> str:
    def cell(hit: dict) -> list[str]:
        text = f"{hit['rank']}. [{hit['score']:.3f}] {hit_label(hit)}: {textwrap.shorten(hit['text'], 160, placeholder=' …')}"
        return textwrap.wrap(text, width)

    header = f"{'BASE MODEL':<{width}} | FINE-TUNED MODEL"
    lines = [header, "-" * len(header) + "-" * width]
    for a, b in zip(left, right):
        ca, cb = cell(a), cell(b)
        for i in range(max(len(ca), len(cb))):
            lines.append(f"{(ca[i] if i < len(ca) else ''):<{width}} | {cb[i] if i < len(cb) else ''}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Compare base and fine-tuned retrieval for one query.")
    parser.add_argument("query")
    parser.add_argument("-k", type=int, default=3)
    parser.add_argument("--index", default=None, help="the served model's index folder (default models/index)")
    parser.add_argument("--base-index", default=None, help="the base model's index folder (default models/index_base)")
    args = parser.parse_args(argv)
    base = Searcher(args.base_index or default_index("base")).search(args.query, args.k)["hits"]
    tuned = Searcher(args.index or default_index("finetuned")).search(args.query, args.k)["hits"]
    print(f"query: {args.query}\n")
    print(side_by_side(base, tuned))


if __name__ == "__main__":
    run_main(main)
