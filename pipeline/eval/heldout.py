"""Held-out sets as they are scored: which sets there are, mapped onto the passages the index serves, and a run
over chunks read as a run over the judged sections.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.data.kb import topic_key
from pipeline.data.readers import beir_passage_texts, passage_text, read_beir, read_topics
from pipeline.params import InputError
from pipeline.retrieval import Run, ranked


def held_out_sets(prepared: Path) -> dict[str, Path]:
    """The held-out sets prepare wrote, by name: the main test set first, then each of data.testsets."""
    named = sorted(p for p in (prepared / "testsets").glob("*") if p.is_dir())
    return {"test": prepared / "test", **{p.name: p for p in named}}


def scored_set(folder: Path, served: list[dict]):
    """A held-out set as it is scored: corpus, queries, qrels, and `section_of` (chunk id -> section id).

    When every passage its qrels judge is a section or answer the index serves, the corpus is the served passages
    themselves (data/passages.jsonl, chunked as served, the same text encoded) and `section_of` maps each chunk to
    the section it was cut from; otherwise the set's own corpus.jsonl, and None. A judged passage is served when a
    served section has its id (`kb/<stem>#<n>`, `faq/<row>`; `kb/<_id>` for a BEIR knowledge base) and every
    chunk cut from that section is part of the judged text: the same passage, not just the same name. A judged
    id that the index serves with other text is an error naming both: scoring the set's stale copy instead would
    break "what is served is what was scored" without a word.
    """
    corpus, queries, qrels = read_beir(folder)
    chunks: dict[str, list[str]] = {}
    for p in served:
        chunks.setdefault(p["section"], []).append(p["text"])
    texts = beir_passage_texts(folder) if served else {}
    built = folder / "testset.json"  # a set pipeline.testset built against the served passages: every one must be
    rebuild = json.loads(built.read_text(encoding="utf-8"))["built_with"] if built.is_file() else None
    fix = (f"check the judgements of its questions, then rebuild the set: `{rebuild}`" if rebuild else
           f"copy the served text into {folder}/corpus.jsonl and check the judgements of")

    def served_id(doc: str) -> str | None:
        for s in (doc, f"kb/{doc}"):
            if s in chunks and all(c in texts[doc] for c in chunks[s]):
                return s
            if s == doc and s in chunks:  # the set names a served passage by its own id, and it is served changed
                change = changed(" ".join(chunks[s]), texts[doc])
                raise InputError(f"{folder}/qrels.tsv judges {doc}, which the index now serves with other text "
                                 f"({change}). The passage changed after the set was judged: "
                                 + (fix if rebuild else f"{fix} {doc}"))
        if rebuild and served:
            raise InputError(f"{folder}/qrels.tsv judges {doc}, which the index no longer serves (the section or FAQ "
                             f"answer was removed or renamed): {fix}")
        return None

    judged = {d for rel in qrels.values() for d in rel}
    mapping = {d: served_id(d) for d in judged}
    if served and all(mapping.values()):
        corpus = {p["id"]: passage_text(p["title"], p["heading"], p["text"]) for p in served}
        qrels = {q: {mapping[d]: g for d, g in rel.items()} for q, rel in qrels.items()}
        return corpus, queries, qrels, {p["id"]: p["section"] for p in served}
    return corpus, queries, qrels, None


def changed(served: str, judged: str) -> str:
    """Where two versions of a passage first differ, in a few words each side."""
    at = next((i for i, (a, b) in enumerate(zip(served, judged)) if a != b), min(len(served), len(judged)))
    start = max(0, at - 30)
    return (f"from character {at}: served {'…' if start else ''}{served[start:at + 50]!r}…, "
            f"judged {'…' if start else ''}{judged[start:at + 50]!r}…")


def found_sections(run: Run, qrels: dict[str, dict[str, int]], section_of: dict[str, str] | None) -> Run:
    """A run over chunks as a run over the judged sections: a chunk of a section relevant to the query stands for
    that section where it first appears (a relevant passage is found when a retrieved chunk overlaps it); every
    other chunk keeps its own id, so ranks never move up and several chunks of one section are not merged into one.
    """
    if section_of is None:
        return run
    out: Run = {}
    for qid, scores in run.items():
        relevant, seen, mapped = qrels.get(qid, {}), set(), {}
        for doc in ranked(scores):
            section = section_of.get(doc, doc)
            key = section if section in relevant and section not in seen else doc
            seen.add(section)
            mapped[key] = scores[doc]
        out[qid] = mapped
    return out


def set_topics(folder: Path, served: list[dict], section_of: dict | None) -> tuple[dict, dict]:
    """A scored set's topics: query id -> topic (queries.jsonl's `topic`), and passage id -> topic (the served
    passages' own, by chunk and by section, when the set is scored on them; else corpus.jsonl's). Missing: {}."""
    def as_dict(series) -> dict:
        return {} if series is None else {i: topic_key(t) for i, t in series.items() if topic_key(t)}

    queries = as_dict(read_topics(folder))
    if section_of is not None:
        return queries, {k: topic_key(p.get("topic")) for p in served for k in (p["id"], p["section"])}
    return queries, as_dict(read_topics(folder, "corpus.jsonl"))

