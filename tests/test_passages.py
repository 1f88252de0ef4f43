"""How the knowledge base is cut into served passages, and how a run over chunks is scored per judged section."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.data.chunking import chunk_section, cut, sentence_pieces, token_windows
from pipeline.data.kb import markdown_sections
from pipeline.data.readers import passage_text, write_beir
from pipeline.eval.heldout import found_sections, scored_set
from pipeline.eval.metrics import per_query_metrics
from pipeline.eval.no_match import flag_rates, no_match_samples, no_match_threshold
from pipeline.params import InputError

CFG = {"mrr_k": 10, "ndcg_k": 10, "map_k": 10, "recall_k": [1, 5], "depth": 10}


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def long_section(sentences: int = 40) -> dict:
    paras = [" ".join(f"Sentence {i} of part {p} tells the owner something about parvovirus." for i in range(sentences))
             for p in range(2)]
    return {"id": "kb/parvo#2", "title": "Parvo", "heading": "Signs", "text": " ".join(paras), "paragraphs": paras,
            "source": "parvo.md"}


def test_sections_keep_their_judged_ids_and_paragraphs(tmp_path):
    doc = tmp_path / "canine-parvovirus.md"
    doc.write_text("# Canine Parvovirus\n\nIntro line one\nline two.\n\n## Signs\n\nFirst para.\n\nSecond para.\n")
    intro, signs = markdown_sections(doc)
    assert (intro["id"], signs["id"]) == ("kb/canine-parvovirus#1", "kb/canine-parvovirus#2")
    assert intro["text"] == "Intro line one line two." and signs["paragraphs"] == ["First para.", "Second para."]
    assert signs["text"] == "First para. Second para."
    # the one text encoded, by the index and by evaluation: an introduction's heading is its title
    assert passage_text(signs["title"], signs["heading"], signs["text"]) == "Canine Parvovirus: Signs. First para. Second para."
    assert passage_text(intro["title"], intro["heading"], "x") == "Canine Parvovirus. x"
    assert passage_text("", "", "just text") == "just text"


def test_token_windows_fit_the_encoder_and_overlap_by_the_setting(tokenizer):
    text = long_section()["text"]
    spans = token_windows(text, tokenizer, window=50, overlap=10)
    count = lambda a, b: len(tokenizer(text[a:b], add_special_tokens=False)["input_ids"])  # noqa: E731
    assert len(spans) > 5 and all(count(a, b) <= 50 for a, b in spans)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)  # nothing lost at either end
    for (a1, b1), (a2, b2) in zip(spans, spans[1:]):
        assert a1 < a2 < b1 < b2 and 10 <= count(a2, b1) <= 14  # shared: the overlap, up to a whole word more
        assert text[a2 - 1] == " " and (b1 == len(text) or text[b1] in " .")  # cut between words


def test_inputs_far_past_the_window_are_counted_with_the_parameter_that_handles_them(tokenizer, caplog):
    from pipeline.stages.passages import warn_long_inputs

    short = {"id": "kb/short#1", "text": "A short section."}
    answer = {"id": "faq/3", "text": "word " * 3000}
    with caplog.at_level("WARNING", logger="pipeline.passages"):
        warn_long_inputs([long_section(), short], [answer], tokenizer, 500, 128, "section")
    sections, answers = [r.getMessage() for r in caplog.records]
    assert sections.startswith("1 knowledge-base sections are longer than 500 tokens (kb/parvo#2)")
    assert "passages.strategy paragraph or window" in sections
    assert answers.startswith("1 FAQ answers are longer than 500 tokens (faq/3)")
    caplog.clear()
    with caplog.at_level("WARNING", logger="pipeline.passages"):  # a strategy that cuts them: only the answer left
        warn_long_inputs([long_section()], [], tokenizer, 500, 128, "window")
    assert caplog.records == []


def test_paragraph_pieces_fit_and_lose_no_text(tokenizer):
    section = long_section()
    count = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    pieces = sentence_pieces(section["paragraphs"][0], count, 60)
    assert len(pieces) > 3 and all(count(p) <= 60 for p in pieces)
    assert " ".join(pieces) == section["paragraphs"][0]


def test_every_chunk_names_the_section_it_was_cut_from(tokenizer):
    section = long_section()
    for strategy in ("section", "paragraph", "window"):
        cfg = {"strategy": strategy, "window_tokens": None, "overlap_tokens": 16}
        passages = cut([section], cfg, tokenizer, max_seq_length=64)
        assert {p["section"] for p in passages} == {"kb/parvo#2"}
        if strategy == "section":
            assert [p["id"] for p in passages] == ["kb/parvo#2"]
        else:  # sized to the encoder: 64 tokens less [CLS], [SEP] and "Parvo: Signs."
            assert len(passages) > 2 and passages[1]["id"] == "kb/parvo#2/2"
            prefix = len(tokenizer(passage_text("Parvo", "Signs", ""), add_special_tokens=False)["input_ids"])
            assert all(len(tokenizer(p["text"], add_special_tokens=False)["input_ids"]) <= 62 - prefix for p in passages)
    with pytest.raises(InputError, match="passages.overlap_tokens 80"):
        chunk_section(section, {"strategy": "window", "window_tokens": 40, "overlap_tokens": 80}, tokenizer, 64)
    with pytest.raises(InputError, match="what encode.max_seq_length 20 leaves after .* raise encode.max_seq_length"):
        chunk_section(section, {"strategy": "paragraph", "window_tokens": None, "overlap_tokens": 0}, tokenizer, 20)


def test_a_run_over_chunks_is_scored_per_section_without_moving_ranks():
    qrels = {"q": {"kb/a#1": 1, "kb/b#1": 1}}
    section_of = {"kb/a#1/1": "kb/a#1", "kb/a#1/2": "kb/a#1", "kb/c#1/1": "kb/c#1", "kb/c#1/2": "kb/c#1",
                  "kb/b#1": "kb/b#1"}
    run = {"q": {"kb/a#1/2": 0.9, "kb/c#1/1": 0.8, "kb/a#1/1": 0.7, "kb/c#1/2": 0.6, "kb/b#1": 0.5}}
    mapped = found_sections(run, qrels, section_of)["q"]
    # kb/a#1 found at rank 1; its second chunk is not found twice; kb/c's two chunks stay two non-relevant ranks
    assert sorted(mapped, key=lambda d: -mapped[d]) == ["kb/a#1", "kb/c#1/1", "kb/a#1/1", "kb/c#1/2", "kb/b#1"]
    scores = per_query_metrics({"q": mapped}, qrels, CFG).loc["q"]
    assert scores["recall@1"] == 0.5 and scores["recall@5"] == 1.0 and scores["mrr@10"] == 1.0


def test_a_set_judging_served_sections_is_scored_on_the_served_passages(tmp_path):
    served = [{"id": "kb/a#1/1", "section": "kb/a#1", "title": "A", "heading": "One", "text": "first half"},
              {"id": "kb/a#1/2", "section": "kb/a#1", "title": "A", "heading": "One", "text": "second half"},
              {"id": "faq/1", "section": "faq/1", "title": "", "heading": "", "text": "an answer"}]
    write_beir(tmp_path / "judged", {"kb/a#1": "first half second half", "faq/1": "an answer"}, {"q": "question"},
               {"q": {"kb/a#1": 1}})
    corpus, _, qrels, section_of = scored_set(tmp_path / "judged", served)
    assert corpus == {"kb/a#1/1": "A: One. first half", "kb/a#1/2": "A: One. second half", "faq/1": "an answer"}
    assert section_of["kb/a#1/2"] == "kb/a#1" and qrels == {"q": {"kb/a#1": 1}}
    # a BEIR knowledge base's passages are served as kb/<_id>
    kb = [{"id": "kb/d7/1", "section": "kb/d7", "title": "", "heading": "", "text": "long answer"}]
    write_beir(tmp_path / "beir", {"d7": "long answer"}, {"q": "question"}, {"q": {"d7": 1}})
    assert scored_set(tmp_path / "beir", kb)[2] == {"q": {"kb/d7": 1}}
    # a set judging passages the index does not serve is scored on its own corpus
    write_beir(tmp_path / "other", {"d1": "elsewhere"}, {"q": "question"}, {"q": {"d1": 1}})
    assert scored_set(tmp_path / "other", served)[0] == {"d1": "elsewhere"} and scored_set(tmp_path / "other", served)[3] is None
    # a judged id the index serves with other text (edited since the judging) is an error naming both, not a silent
    # fall back to the set's stale copy
    write_beir(tmp_path / "edited", {"faq/1": "a different answer"}, {"q": "question"}, {"q": {"faq/1": 1}})
    with pytest.raises(InputError, match=r"edited/qrels.tsv judges faq/1, which the index now serves with other text "
                                         r"\(from character 1: served 'an answer'…, judged 'a different answer'…\)"):
        scored_set(tmp_path / "edited", served)


def test_no_match_threshold_meets_its_precision_at_the_stated_share_on_known_scores():
    answered = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    unanswered = np.array([0.55, 0.45, 0.4, 0.3, 0.2])
    # one unanswerable question per answerable one: below t in (0.55, 0.6) flags all 5 unanswerable and 1 answerable
    # (0.5): 5 of 6 right (0.83); a cut above 0.6 drops to 5/7
    t = no_match_threshold(answered, unanswered, precision=0.8, share=0.5)
    assert 0.55 < t < 0.6
    assert flag_rates(answered, unanswered, t, 0.5) == {"precision": 0.8333, "recall": 1.0, "false_flags": 0.2}
    # one in five unanswerable: that cut is right 0.2 * 1.0 / (0.2 * 1.0 + 0.8 * 0.2) = 56% of the time; the highest
    # cut reaching 80% flags no answerable question: under 0.5, 4 of 5 unanswerable ones
    t = no_match_threshold(answered, unanswered, precision=0.8, share=0.2)
    assert 0.45 < t < 0.5 and flag_rates(answered, unanswered, t, 0.2)["precision"] == 1.0
    # never reached: never flag, said as None (0.0 would read as a threshold no cosine is under)
    assert no_match_threshold(answered, np.array([0.95]), precision=0.9, share=0.5) is None
    assert flag_rates(answered, unanswered, None, 0.2) == {"precision": None, "recall": 0.0, "false_flags": 0.0}
    assert json.dumps(float(t))


def test_no_match_takes_the_whole_topic_out_not_only_the_judged_documents():
    run = {"q1": {"kb/a#1": 0.9, "kb/a#2": 0.8, "faq/7": 0.7, "faq/9": 0.6, "kb/c#1": 0.5, "kb/b#1": 0.4},
           "q2": {"kb/a#2": 0.85, "faq/8": 0.5, "kb/b#1": 0.3}}
    qrels = {"q1": {"kb/a#1": 1}, "q2": {"faq/8": 1}}
    got = no_match_samples(run, qrels)  # no topics known: the judged documents only (q2 keeps kb/a, same topic)
    assert list(got[0]) == [0.9, 0.85] and list(got[1]) == [0.7, 0.85]
    # q1 and q2 share topic "a"; faq/8 (judged for q2) is in FAQ group "g", as faq/7 is: for either question the
    # documents kb/a and faq/8 go, and so do topics a and g (faq/7); faq/9 (topic h) and kb/b stay
    topics = {"kb/a#1": "a", "kb/a#2": "a", "faq/7": "g", "faq/8": "g", "faq/9": "h", "kb/c#1": "c", "kb/b#1": "b"}
    got = no_match_samples(run, qrels, None, {"q1": "a", "q2": "a"}, topics)
    assert list(got[0]) == [0.9, 0.85] and list(got[1]) == [0.6, 0.3]
