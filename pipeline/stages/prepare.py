"""Stage 1, prepare: domain sources -> validated, de-duplicated, leak-free (query, positive, negatives) data.

Reads   params: data.*, model.base, prepare.*; files: data.faq, data.glossary, data.kb, data.testset,
        data.testsets, data.val_questions
Writes  data/prepared/train.jsonl        anchor, positive, negative_1..N, group (training tuples; group: the
                                         split component, for train.group_batches)
        data/prepared/val/               BEIR folder (corpus.jsonl, queries.jsonl, qrels.tsv): FAQ-style validation
        data/prepared/val_users/         validation questions as users write them: data.val_questions, or messages
                                         made from the validation pairs (pipeline/data/user_questions.py)
        data/prepared/test/              BEIR folder: the held-out FAQ split (or a copy of data.testset)
        data/prepared/testsets/<name>/   each named test set of data.testsets, validated
        reports/data_stats.json          rows read, dropped and why, pairs per split, negatives found / missing

Every passage judged relevant in a test set or in data.val_questions is held out with its whole topic: the FAQ
group (and the glossary rows sharing its group value) goes to the test or validation split, and the knowledge-base
document that holds it is not trained on.

    python -m pipeline.stages.prepare
"""

from __future__ import annotations

import logging
import re
import shutil

import pandas as pd

from pipeline.data.kb import read_kb
from pipeline.data.messages import MESSAGE_KINDS, message_pairs, oversample, read_messages, repeats
from pipeline.data.negatives import add_hard_negatives
from pipeline.data.readers import read_beir, read_topics, write_beir
from pipeline.data.sources import expand_glossary, held_documents, kb_training_pairs, read_beir_pairs, read_faq
from pipeline.data.split import (
    beir_from_pairs,
    beir_topics,
    connected_groups,
    deduplicate,
    held_out_groups,
    judged_passages,
    leakage_guard,
    set_aside,
    split_topics,
)
from pipeline.data.user_questions import rewrite_anchors, user_style_validation
from pipeline.files import atomic_outputs, write_json
from pipeline.models import load_model, local_model_path, pick_precision
from pipeline.params import InputError, load_params, repo_path, require_tracked, run_main
from pipeline.paths import DATA_STATS, PREPARED

log = logging.getLogger("pipeline.prepare")
RESERVED = ("test", "val", "val_users")  # names of the prepared sets, not free for data.testsets
KB_KINDS = ("kb", "synthetic")  # pairs made from data.kb sections: training only, never test or validation passages
NOT_DISTRACTORS = (*KB_KINDS, *MESSAGE_KINDS)  # positives that are not FAQ answers: never a held-out corpus passage


def main() -> None:
    data, cfg = load_params("data"), load_params("prepare")
    base = load_params("model")["base"]
    seed = int(cfg["seed"])
    stats: dict = {"rows_read": {}, "dropped": {}}
    synthetic_model = (cfg.get("synthetic_queries") or {}).get("model")
    require_tracked("prepare", {
        "data.faq": data.get("faq"), "data.glossary": data.get("glossary"), "data.beir_train": data.get("beir_train"),
        "data.kb": data["kb"] if cfg.get("kb_pairs") or synthetic_model else None, "data.testset": data.get("testset"),
        "data.testsets": data.get("testsets") or {}, "data.val_questions": data.get("val_questions"),
        "data.messages": data.get("messages"),
        "model.base": local_model_path(base), "prepare.synthetic_queries.model": synthetic_model})

    # 1. Read and validate every source (fails on the first bad file, naming file, line and field)
    faq = read_faq(data.get("faq") or [], data["faq_columns"])
    glossary = expand_glossary(data.get("glossary") or [], data["glossary_columns"], cfg["glossary_templates"])
    beir = read_beir_pairs(data.get("beir_train") or [])
    stats["rows_read"] = {"faq": len(faq), "glossary_queries": len(glossary), "beir_pairs": len(beir)}
    if faq.empty and glossary.empty and beir.empty:
        raise InputError("params.yaml: data.faq, data.glossary and data.beir_train give no question/answer pairs")
    external_test, val_questions = data.get("testset"), data.get("val_questions")
    kb_in_test = bool(external_test) and repo_path(data["kb"]).resolve().is_relative_to(repo_path(external_test).resolve())
    sections = [] if kb_in_test or not (cfg.get("kb_pairs") or synthetic_model or data.get("messages")) else read_kb(data["kb"])
    model = load_model(base, max_seq_length=cfg["max_seq_length"])
    # the labeller's and the miner's encodes (most of this stage's time on MedQuAD); the leakage guard stays fp32
    precision = pick_precision(cfg["precision"], "prepare.precision")
    stats["precision"] = precision

    # 1b. Users' messages: (message, what resolved it) and (message, its question); unlinked ones labelled where the
    #     base model and BM25 agree (pipeline/data/messages.py). They join the topic of what they are linked to.
    messages = pd.DataFrame()
    if data.get("messages"):
        messages = message_pairs(read_messages(data["messages"], data["messages_columns"]), sections, faq, model,
                                 cfg["messages"], data["messages_columns"], stats, precision)
    pairs = pd.concat([faq, glossary, beir] + ([messages] if not messages.empty else []), ignore_index=True)
    if "group" not in pairs:
        pairs["group"] = None
    testsets = data.get("testsets") or {}
    if not isinstance(testsets, dict) or any(not re.fullmatch(r"[A-Za-z0-9_-]+", str(n)) or n in RESERVED
                                             for n in testsets):
        raise InputError("params.yaml: data.testsets must map names (letters, digits, _ and -; not "
                         f"{', '.join(RESERVED)}) to BEIR folders")

    # 2. De-duplicate, group, and hold out every topic with a passage judged in a test set or the validation
    #    questions; then split the rest (the test split comes from data.testset when it is given)
    pairs = deduplicate(pairs, stats)
    pairs["group_id"] = connected_groups(pairs)
    held_keys = {**{f: f"data.testsets.{n}" for n, f in testsets.items()}, external_test: "data.testset",
                 val_questions: "data.val_questions"}
    held_sets = {folder: read_beir(folder, key=key) for folder, key in held_keys.items() if folder}
    judged = {"test": judged_passages({f: held_sets[f] for f in [*testsets.values(), external_test] if f}),
              "val": judged_passages({f: held_sets[f] for f in [val_questions] if f})}
    forced = held_out_groups(pairs, judged)
    if external_test:  # the test set is given: topics it judges are only kept out of training
        forced = {g: "heldout" if s == "test" else s for g, s in forced.items()}
    fractions = {"val": cfg["val_fraction"]} if external_test else {"test": cfg["test_fraction"], "val": cfg["val_fraction"]}
    pairs["split"] = split_topics(pairs, fractions, seed, forced, int(cfg["max_val_queries"]))
    # glossary templates ("What is X?") and messages of a held-out topic are set aside, not scored, and so are
    # messages linked to a held-out knowledge-base document
    judged_anywhere = tuple(test | val for test, val in zip(judged["test"], judged["val"]))  # (texts, ids)
    held_docs = held_documents(sections, judged_anywhere, set(pairs.loc[pairs["split"] != "train", "group"].dropna()))
    pairs["split"] = set_aside(pairs, held_docs)
    stats["held_out"] = {"topics_with_judged_passages": len(forced),
                         "rows_set_aside": int((pairs["split"] == "heldout").sum())}
    if cfg.get("kb_pairs") or synthetic_model:
        if kb_in_test:
            raise InputError(f"params.yaml: data.kb ({data['kb']}) is inside data.testset: training on its passages "
                             "would leak the test corpus; set prepare.kb_pairs false and synthetic_queries.model null")
        kb = kb_training_pairs(sections, cfg, held_docs, int(pairs["group_id"].max()), seed, stats)
        if not kb.empty:
            pairs = pd.concat([pairs, kb], ignore_index=True)
    train = pairs[pairs["split"] == "train"].reset_index(drop=True)
    val = pairs[pairs["split"] == "val"]
    if external_test:
        test_corpus, test_queries, test_qrels = held_sets[external_test]
        log.info("test set from %s: %d queries, %d passages", external_test, len(test_queries), len(test_corpus))
    else:
        test = pairs[pairs["split"] == "test"]
        if test.empty:
            raise InputError("prepare.test_fraction gives an empty test split: add data or raise the fraction")
        test_corpus, test_queries, test_qrels = beir_from_pairs(
            test, pairs.loc[~pairs["kind"].isin(NOT_DISTRACTORS), "positive"].tolist(), cfg["eval_corpus_size"], seed)
    if val.empty:
        raise InputError("prepare.val_fraction gives an empty validation split: add data or raise the fraction")
    val_corpus, val_queries, val_qrels = beir_from_pairs(
        val, train.loc[~train["kind"].isin(NOT_DISTRACTORS), "positive"].tolist(), cfg["val_corpus_size"], seed)
    held_out_queries = [q for _, queries, _ in held_sets.values() for q in queries.values()]  # incl. data.testset
    held_out_queries += list(val_queries.values()) + ([] if external_test else list(test_queries.values()))

    # 3. Leakage guard: no training question may be (nearly) a held-out one, and no message may repeat one
    repeat = train["kind"].isin(MESSAGE_KINDS).to_numpy() & repeats(train["query"].tolist(), held_out_queries,
                                                                    float(cfg["messages"]["repeat_jaccard"]))
    stats["dropped"]["message_repeats_held_out_question"] = int(repeat.sum())
    if repeat.any():
        log.warning("dropped %d training pairs of users' messages that repeat a held-out question, e.g. %s",
                    repeat.sum(), train.loc[repeat, "where"].iloc[0])
    train = train[~repeat].reset_index(drop=True)
    exact, near = leakage_guard(train, held_out_queries, model, cfg["leakage_cosine"], cfg["negatives"]["batch_size"])
    stats["dropped"]["leak_exact_question"] = int(exact.sum())
    stats["dropped"]["leak_near_duplicate_question"] = int(near.sum())
    if (exact | near).any():
        log.info("leakage guard dropped %d training pairs (%d exact, %d near-duplicate questions)",
                 (exact | near).sum(), exact.sum(), near.sum())
    train = train[~(exact | near)].reset_index(drop=True)
    train = oversample(train, int(cfg["messages"]["repeat"]))
    if cfg.get("max_train_pairs"):  # the cap bounds what is trained on, repeats included
        train = train.sample(min(len(train), int(cfg["max_train_pairs"])), random_state=seed).reset_index(drop=True)
    if train.empty:
        raise InputError("no training pairs left after splitting and the leakage guard")

    # 4. Hard negatives from the base model and/or BM25, never from the positive's own group; then a fraction of the
    #    training questions written as users write them (prepare.user_questions.train_fraction)
    tuples = add_hard_negatives(train, model, cfg["negatives"], seed, stats, precision)
    users_cfg = cfg["user_questions"]
    tuples["anchor"] = rewrite_anchors(tuples["anchor"].tolist(), train["group"].tolist(),
                                       float(users_cfg["train_fraction"]), users_cfg, seed)

    # 5. Validation questions as users write them: the user's own, or messages made from the validation pairs
    if val_questions:
        users, given = held_sets[val_questions], read_topics(val_questions)
        users_topics = None if given is None else given.to_dict()
    else:
        users = (val_corpus, *user_style_validation(val, val_queries, val_qrels, cfg["user_questions"], seed))
        users_topics = beir_topics(pairs, *users)

    stats["pairs"] = {"train": len(tuples), "train_from_kb_sections": int(train["kind"].isin(KB_KINDS).sum()),
                      "train_by_source": {k: int(v) for k, v in train["kind"].value_counts().items()},
                      "val_queries": len(val_queries), "val_corpus": len(val_corpus),
                      "val_users_queries": len(users[1]), "val_users_source": val_questions or "generated",
                      "test_queries": len(test_queries), "test_corpus": len(test_corpus)}
    stats["groups"] = {s: int(pairs.loc[pairs["split"] == s, "group_id"].nunique()) for s in ("train", "val", "test")}
    with atomic_outputs(PREPARED, DATA_STATS) as (tmp, stats_tmp):  # the stats describe this data/prepared
        tmp.mkdir()
        tuples.to_json(tmp / "train.jsonl", orient="records", lines=True, force_ascii=False)
        write_beir(tmp / "val", val_corpus, val_queries, val_qrels, beir_topics(pairs, val_corpus, val_queries, val_qrels))
        write_beir(tmp / "val_users", *users, users_topics)
        write_beir(tmp / "test", test_corpus, test_queries, test_qrels,
                   None if external_test else beir_topics(pairs, test_corpus, test_queries, test_qrels))
        (tmp / "testsets").mkdir()
        for name, folder in testsets.items():  # copied as they are: titles and query topics kept
            (tmp / "testsets" / name).mkdir()
            for file in ("corpus.jsonl", "queries.jsonl", "qrels.tsv", "testset.json"):  # testset.json: how
                if file != "testset.json" or (repo_path(folder) / file).is_file():   # pipeline.testset built it
                    shutil.copy(repo_path(folder) / file, tmp / "testsets" / name / file)
            stats["pairs"][f"testset_{name}_queries"] = len(held_sets[folder][1])
        write_json(stats_tmp, stats)
    log.info("wrote %s (train %d tuples, val %d queries, test %d queries, %d named test sets) and %s",
             PREPARED, len(tuples), len(val_queries), len(test_queries), len(testsets), DATA_STATS)


if __name__ == "__main__":
    run_main(main)
