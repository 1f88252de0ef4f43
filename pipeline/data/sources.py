"""prepare, step 1: the domain's sources as (query, positive) pairs: FAQ files, glossaries through question templates,
BEIR folders, and knowledge-base sections (heading pairs, or questions from a local doc2query model)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from pipeline.data.readers import normalize, read_beir, read_records
from pipeline.params import InputError, repo_path

log = logging.getLogger("pipeline.prepare")


def read_faq(files: list[str], columns: dict) -> pd.DataFrame:
    frames = []
    for f in files:
        optional = {"group": columns["group"]} if columns.get("group") else {}
        df = read_records(f, {"query": columns["question"], "positive": columns["answer"]}, optional, key="data.faq")
        prefix = "faq/" if len(files) == 1 else f"faq/{Path(f).stem}/"  # the served ids (data/kb.faq_answers)
        df["kind"], df["faq_id"] = "faq", [f"{prefix}{row}" for row in range(1, len(df) + 1)]
        frames.append(df)
        log.info("read %d FAQ rows from %s", len(df), f)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_beir_pairs(folders: list[str]) -> pd.DataFrame:
    """Training pairs from BEIR folders (queries, qrels, corpus): one pair per relevant passage of each query.

    A query's relevant passages share a group, so a query never straddles the split.
    """
    rows = []
    for folder in folders:
        corpus, queries, qrels = read_beir(folder, key="data.beir_train")
        rows += [{"query": queries[q], "positive": corpus[d], "group": f"beir: {folder}#{q}", "where": f"{folder}#{q}"}
                 for q, docs in qrels.items() for d in docs]
        log.info("read %d pairs from BEIR folder %s", len(rows), folder)
    return pd.DataFrame(rows).assign(kind="beir") if rows else pd.DataFrame()


def expand_glossary(files: list[str], columns: dict, templates: list[str]) -> pd.DataFrame:
    """Each glossary row becomes one query per template ("What is {term}?") with the definition as positive."""
    for t in templates:
        if "{term}" not in t:
            raise InputError(f"params.yaml: prepare.glossary_templates entry {t!r} has no {{term}} placeholder")
    frames = []
    optional = {"group": columns["group"]} if columns.get("group") else {}
    for f in files:
        df = read_records(f, {"term": columns["term"], "positive": columns["definition"]}, optional, key="data.glossary")
        log.info("read %d glossary rows from %s", len(df), f)
        # a term with a group value joins the FAQ rows of that group (one topic); without, it is its own group
        group = df["group"].fillna("glossary: " + df["term"]) if "group" in df else "glossary: " + df["term"]
        for t in templates:
            frames.append(df.assign(query=[t.format(term=term) for term in df["term"]], group=group))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).drop(columns="term").assign(kind="glossary")


def kb_heading_pairs(passages: list[dict]) -> pd.DataFrame:
    """(title + heading, section) training pairs: documents without questions still teach the domain."""
    rows = [
        {"query": f"{p['title']}: {p['heading']}", "positive": p["text"], "group": kb_document(p),
         "where": p["source"], "kind": "kb"}
        for p in passages
        if p["heading"] and p["heading"] != p["title"]
    ]
    return pd.DataFrame(rows)


def synthetic_pairs(passages: list[dict], cfg: dict, seed: int) -> pd.DataFrame:
    """(generated question, section) pairs from a seq2seq query-generation model (doc2query style) at a local path.

    For documents that come without questions. Off unless prepare.synthetic_queries.model is set.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, set_seed

    path = repo_path(cfg["model"])
    if not path.is_dir():
        raise InputError(f"params.yaml: prepare.synthetic_queries.model {cfg['model']!r} is not a local folder")
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    n, size = int(cfg["per_passage"]), int(cfg["batch_size"])
    rows = []
    for start in tqdm(range(0, len(passages), size), desc="generating queries"):
        batch = passages[start:start + size]
        inputs = tokenizer([p["text"] for p in batch], truncation=True, max_length=int(cfg["max_input_length"]),
                           padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], do_sample=True, top_p=0.95, num_return_sequences=n,
                                 max_new_tokens=int(cfg["max_new_tokens"]))
        texts = tokenizer.batch_decode(out, skip_special_tokens=True)
        for i, p in enumerate(batch):
            for q in dict.fromkeys(t.strip() for t in texts[i * n:(i + 1) * n]):
                if q:
                    rows.append({"query": q, "positive": p["text"], "group": kb_document(p),
                                 "where": p["source"], "kind": "synthetic"})
    log.info("generated %d queries for %d passages with %s", len(rows), len(passages), path)
    return pd.DataFrame(rows)


def kb_document(section: dict) -> str:
    """The group of a knowledge-base section's training pairs: its document."""
    return "kb: " + section["source"].split("#")[0]


def held_documents(sections: list[dict], judged: tuple[set[str], set[str]], held_topics: set[str]) -> set[str]:
    """Knowledge-base documents that training must not see, as `kb_document` groups: those holding a passage a
    held-out set judges (by its text, or by its id `kb/<stem>#<n>`: an edited section is still the judged one),
    and those named like a held-out FAQ topic (`feline-leukemia-virus.md` is the FAQ group `feline-leukemia-virus`):
    a held-out topic stays out of every source."""
    texts, ids = judged
    documents = {i.split("#")[0] for i in ids if i.startswith("kb/")}
    names = {str(t).strip().lower() for t in held_topics}
    return {kb_document(s) for s in sections if normalize(s["text"]) in texts or s["id"].split("#")[0] in documents
            or s["source"].split("#")[0].rsplit(".", 1)[0].lower() in names}


def kb_training_pairs(passages: list[dict], cfg: dict, held_docs: set[str], last_group: int, seed: int,
                      stats: dict) -> pd.DataFrame:
    """Training pairs from the knowledge base's sections (heading pairs, and doc2query questions when a local model
    is set), training only; `held_docs` are left out whole. Their groups are numbered after `last_group`, one per
    document."""
    kb = kb_heading_pairs(passages) if cfg.get("kb_pairs") else pd.DataFrame()
    if (cfg.get("synthetic_queries") or {}).get("model"):
        kb = pd.concat([kb, synthetic_pairs(passages, cfg["synthetic_queries"], seed)], ignore_index=True)
    stats["rows_read"]["kb_sections"] = len(passages)
    if not kb.empty:
        stats["held_out"]["kb_documents"] = len(held_docs & set(kb["group"]))
        kb = kb[~kb["group"].isin(held_docs)]
    stats["rows_read"]["kb_training_pairs"] = len(kb)
    if kb.empty:
        return kb
    kb = kb.assign(q_norm=kb["query"].map(normalize), p_norm=kb["positive"].map(normalize), split="train")
    kb["group_id"] = last_group + 1 + pd.factorize(kb["group"])[0]
    return kb
