"""The typed model of params.yaml: one pydantic model per section, every key with its type, range and meaning, and
a default only where the pipeline has one (a key it reads with a fallback). pipeline.params checks a file against it
(load_params, for the sections a stage reads; python -m pipeline.check, for all of it), and the README's parameter
table is made from these descriptions (python -m pipeline.check --table), so the two never disagree.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Fraction = Annotated[float, Field(ge=0, le=1)]
Cosine = Annotated[float, Field(ge=-1, le=1)]
Positive = Annotated[int, Field(gt=0)]
Count = Annotated[int, Field(ge=0)]
Precision = Literal["auto", "fp32", "bf16"]


def must_exist(value: str | None, info: ValidationInfo) -> str | None:
    """A path in params is relative to the project root (the `root` of the validation context); no root: not
    checked (a tool reading the file to edit it)."""
    root = (info.context or {}).get("root")
    if root is not None and value:
        path = Path(value).expanduser()
        if not (path if path.is_absolute() else Path(root) / path).exists():
            raise ValueError(f"{value} does not exist")
    return value


DataPath = Annotated[str, AfterValidator(must_exist)]
SetName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
    one_row: ClassVar[bool] = False  # the README table shows the whole section as one row


class FaqColumns(Section):
    """your column names; `group` (optional, `null` for none) keeps rows of one topic in one split"""
    one_row: ClassVar[bool] = True
    question: str
    answer: str
    group: str | None = None


class GlossaryColumns(Section):
    """your column names; `group` (optional) joins a term to the FAQ rows with that group value, so it is held out
    with their topic"""
    one_row: ClassVar[bool] = True
    term: str
    definition: str
    group: str | None = None


class MessageColumns(Section):
    """role → your column name: `message` (required), `question` (the plain question it asks), `answer`, `faq_row`,
    `passage_id` (what resolved it: `kb/<stem>#<n>` or `faq/<row>`); a role a file lacks is absent there, a row with
    none is unlinked"""
    one_row: ClassVar[bool] = True
    message: str
    question: str | None = None
    answer: str | None = None
    faq_row: str | None = None
    passage_id: str | None = None


class Data(Section):
    faq: list[DataPath] = Field([], description="FAQ files: CSV, JSONL or Parquet, one question/answer pair a row")
    faq_columns: FaqColumns = Field(description=FaqColumns.__doc__)
    glossary: list[DataPath] = Field([], description="term/definition files (CSV, JSONL or Parquet); `[]` for none")
    glossary_columns: GlossaryColumns = Field(description=GlossaryColumns.__doc__)
    beir_train: list[DataPath] = Field([], description="BEIR folders (`corpus.jsonl`, `queries.jsonl`, `qrels.tsv`) "
                                       "whose query/relevant-passage pairs join the FAQ pairs")
    messages: list[DataPath] = Field([], description=(
        "users' messages (a deployment's logs: tickets, chats, searches), CSV/JSONL/Parquet, trained on beside the "
        "FAQ; `[]` for none. See \"Users' messages\" under [What the pipeline does](#what-the-pipeline-does)"))
    messages_columns: MessageColumns | None = Field(None, description=MessageColumns.__doc__)
    kb: DataPath = Field(description="the documents to index: a folder of `.md`/`.txt` (one passage per `##` section) "
                         "or a BEIR `corpus.jsonl`")
    testset: DataPath | None = Field(None, description=(
        "`null`: hold out part of the FAQ; or a BEIR folder (`corpus.jsonl`, `queries.jsonl`, `qrels.tsv`) to test on "
        "instead: the main test set, reported under today's keys"))
    testsets: dict[SetName, DataPath] = Field({}, description=(
        "more held-out sets, name → BEIR folder: real users' questions with judged answers (a `topic` field per query "
        "makes the bootstrap resample topics). Each is scored under `testsets.NAME` in `metrics.json`; every topic with "
        "a judged passage is kept out of training (FAQ group, glossary group, KB document)"))
    val_questions: DataPath | None = Field(None, description=(
        "a BEIR folder of real users' questions that, with the FAQ-style validation split, choose the checkpoint and "
        "the merge weight; `null`: messages made from the validation pairs (`prepare.user_questions`)"))

    @model_validator(mode="after")
    def _columns_for_messages(self):
        if self.messages and not self.messages_columns:
            raise ValueError("data.messages lists files: data.messages_columns must name their message column")
        return self


class Model(Section):
    base: str = Field(description="a local folder, an installed weights package (`gt-<name>`), or a model in the "
                      "Hugging Face cache; never downloaded")


class SyntheticQueries(Section):
    model: DataPath | None = Field(None, description=(
        "a local seq2seq query-generation model (doc2query-style T5): generates `per_passage` questions per "
        "knowledge-base section as training pairs; `null`: off"))
    per_passage: Positive = Field(description="questions generated per section")
    max_input_length: Positive = Field(description="tokens of the section the generator reads")
    max_new_tokens: Positive = Field(description="tokens per generated question")
    batch_size: Positive = Field(description="sections per generation batch")


class Negatives(Section):
    num: Count = Field(description="hard negatives per pair (0: pairs only, in-batch negatives; faster and as good: "
                       "bench/README.md)")
    miner: Literal["model", "bm25", "both"] = Field(description=(
        "`model`: the base model's neighbours (`mine_hard_negatives`); `bm25`: BM25's (`bm25s`); `both`: the two "
        "lists taking turns"))
    candidates: Positive = Field(description="ranked candidates taken from the miner, before the same-group filter")
    range_max: Positive = Field(description="the miner looks at the top `range_max` passages per question")
    relative_margin: Fraction | None = Field(None, description=(
        "skip candidates scoring within this share of the positive: likely correct answers, not negatives"))
    absolute_margin: float | None = Field(None, description="the same as an absolute cosine margin")
    batch_size: Positive = Field(description="encoding batch while mining")


class Messages(Section):
    question_pairs: bool = Field(description="train on (message, its question) where the file names the question")
    question_link_cosine: Cosine = Field(description=(
        "a message's question reaches an FAQ answer when it is the FAQ's question or the base model puts them this "
        "close"))
    label_questions: bool = Field(False, description=(
        "a message naming only its question gets the passage the base model and BM25 agree on for that question, "
        "when the check on the linked messages' questions is precise enough (off by default: on MedQuAD it encoded "
        "the 13,824 FAQ answers, 3.5 of prepare's 5.6 min, and its check, precision 0.50, kept no label)"))
    label_margin: Annotated[float, Field(ge=0)] = Field(description=(
        "unlinked messages: labelled when the base model and BM25 put the same passage first and the base model's "
        "first leads its second by this cosine (on the bundled linked messages, links hidden: 45 of 264 labelled, "
        "76% right)"))
    min_labels: Count = Field(description="fewer labelled unlinked messages than this: none used (a warning)")
    min_label_precision: Fraction = Field(description=(
        "the labeller's precision on the linked messages (links hidden) under this: the unlinked ones are not used "
        "(a warning)"))
    repeat_jaccard: Fraction = Field(description=(
        "a message whose words overlap a held-out question's this much repeats it: dropped with a warning, counted"))
    repeat: Positive = Field(description=(
        "each training pair made from a message is seen this many times an epoch, the FAQ's pairs once: messages are "
        "few beside an FAQ; validation chose 3 over 1 and 5 on the bundled data ([Results](#results))"))
    batch_size: Positive = Field(description="encoding batch while linking and labelling")


class UserQuestions(Section):
    """how validation messages are written the way users write when `data.val_questions` is `null`: probabilities
    of a subject line, a context sentence, a second question, a rephrased question frame (`rephrase`: regex →
    alternatives), lower case, typos; `per_topic` messages per validation topic. `train_fraction` (0) rewrites that
    share of the training questions too (measured: no gain on real questions, bench/README.md)"""
    one_row: ClassVar[bool] = True
    train_fraction: Fraction
    per_topic: Positive
    p_subject: Fraction
    p_context: Fraction
    p_second_question: Fraction
    p_rephrase: Fraction
    p_drop_question_words: Fraction
    p_lowercase: Fraction
    typo_rate: Fraction
    p_closing: Fraction
    contexts: list[str] = Field(min_length=1)
    connectors: list[str] = Field(min_length=1)
    closings: list[str] = Field(min_length=1)
    rephrase: list[tuple[str, list[str]]] = []

    @field_validator("rephrase")
    @classmethod
    def _regexes_compile(cls, rules: list) -> list:
        for pattern, _ in rules:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{pattern!r} is not a regular expression: {e}") from None
        return rules


class Prepare(Section):
    seed: int = Field(description="split, sampling and the users' validation messages")
    test_fraction: Fraction = Field(description="share of question/answer pairs held out for test, whole groups at a "
                                    "time (ignored with `data.testset`)")
    val_fraction: Fraction = Field(description="share held out for validation, whole groups at a time")
    max_val_queries: Positive = Field(description="validation size (it runs during training); groups beyond it go "
                                      "back to training")
    eval_corpus_size: Positive = Field(description="passages searched at test time: the split's answers plus "
                                       "distractors from other splits")
    val_corpus_size: Positive = Field(description="the same for validation, kept small: it is encoded at every check "
                                      "during training")
    max_train_pairs: Positive | None = Field(None, description="cap on training pairs (quick experiments, the "
                                             "half-data check); `null`: all")
    glossary_templates: list[str] = Field(description="one question per template per glossary row")
    kb_pairs: bool = Field(False, description="also train on (document title: section heading, section text)")
    synthetic_queries: SyntheticQueries | None = None
    max_seq_length: Positive = Field(description="base-model encoding length for mining and the leakage guard")
    precision: Precision = Field(description=(
        "the labeller's and the miner's encodes: `auto` (bf16 where the hardware has it), `fp32` or `bf16`; the "
        "leakage guard is always fp32"))
    leakage_cosine: Cosine | None = Field(description=(
        "training questions at least this close (base-model cosine) to a held-out one are dropped (`null`: exact "
        "matches only)"))
    negatives: Negatives
    messages: Messages
    user_questions: UserQuestions = Field(description=UserQuestions.__doc__)

    @model_validator(mode="after")
    def _something_left_to_train_on(self):
        if self.test_fraction + self.val_fraction >= 1:
            total = self.test_fraction + self.val_fraction
            raise ValueError(f"test_fraction + val_fraction is {total}: nothing is left to train on")
        return self


class Train(Section):
    seed: int = Field(description="training seed (data order, initialisation)")
    loss: Literal["MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss", "TripletLoss",
                  "CosineSimilarityLoss"] = Field(description=(
                      "or `CachedMultipleNegativesRankingLoss`, `TripletLoss`, `CosineSimilarityLoss`"))
    mini_batch_size: Positive = Field(description="Cached loss only: memory per forward pass, not the result")
    scale: Annotated[float, Field(gt=0)] = Field(description=(
        "in-batch-negative losses: cosine × scale inside the softmax (= 1 / temperature)"))
    directions: list[Literal["query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"]] = Field(
        min_length=1, description=(
            "which similarity terms the softmax holds: add `doc_to_query` (symmetric), `query_to_query` and "
            "`doc_to_doc` (all four: the GTE loss; better on half of MedQuAD, not on all of it: bench/README.md)"))
    hardness_mode: Literal["in_batch_negatives", "hard_negatives", "all_negatives"] | None = Field(description=(
        "weight harder negatives more (`in_batch_negatives`, `hard_negatives`, `all_negatives`); `null`: off"))
    hardness_strength: Annotated[float, Field(ge=0)] = Field(description=(
        "weight of a negative's own similarity in its logit (Lan et al. 2025 use 9)"))
    guide: Literal["base"] | None = Field(description=(
        "`base`: (Cached)GISTEmbedLoss with the frozen base model as guide, which drops in-batch negatives it scores "
        "above the positive (likely answers too); measured in bench/README.md; `null`: plain"))
    matryoshka_dims: list[Positive] | None = Field(None, description=(
        "e.g. `[384, 256, 128, 64]` wraps the loss in `MatryoshkaLoss`"))
    epochs: Annotated[float, Field(gt=0)] = Field(description=(
        "training length; a fraction stops mid-epoch. Validation keeps the best checkpoint; one epoch scored lower on "
        "the bundled data's validation. On MedQuAD with users' messages 2 epochs are 44 of the whole run's 64 minutes "
        "on 2 CPU cores (bench/README.md)"))
    max_steps: int = Field(description="> 0 stops after this many steps (smoke tests); -1: `epochs` decides")
    batch_size: Positive = Field(description="pairs per batch: with in-batch negatives, larger is harder")
    length_buckets: Positive = Field(description=(
        "MultipleNegativesRankingLoss: each column of a batch is encoded in this many groups of similar length, each "
        "padded to its own longest (the same loss and gradients; 1.24x the plain loop's steps a second on MedQuAD "
        "with users' messages, bench/README.md); 1: one forward pass a column, as sentence-transformers does"))
    group_batches: bool = Field(description=(
        "in-batch-negative losses: batches of whole groups (`data.faq_columns.group`), so each question's negatives "
        "include the other answers about its own subject; `false`: random no-duplicates batches"))
    precision: Precision = Field(description=(
        "`auto`: bf16 autocast where the hardware computes it (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), "
        "fp32 elsewhere; or `fp32`, `bf16`"))
    learning_rate: Annotated[float, Field(gt=0)] = Field(description="AdamW, with linear warm-up and decay")
    dropout: Fraction | None = Field(description=(
        "every dropout of the model while training (`null`: the base model's own, 0.1 for MiniLM); 0 makes a CPU step "
        "1.2x faster and needs a third less memory (bench/README.md)"))
    warmup_ratio: Fraction = Field(description="share of the steps spent warming up the learning rate")
    max_seq_length: Positive = Field(description="tokens per text while training")
    evaluations: Positive = Field(description=(
        "validation checks during training (mean NDCG@10 of the FAQ-style and the users' validation sets); the best "
        "checkpoint is kept"))
    merge_alphas: list[Fraction] = Field(min_length=1, description=(
        "the kept checkpoint is merged with the base model, `alpha` × fine-tuned + (1 − `alpha`) × base (WiSE-FT / "
        "LM-Cocktail), at each weight, and the one whose smaller gain over the two validation sets is largest (each "
        "gain as a share of that set's best) is saved; 0.0 is the base model itself, so a model validation rejects is "
        "never served; `[1.0]`: no merge"))


class Passages(Section):
    strategy: Literal["section", "paragraph", "window"] = Field(description=(
        "how the knowledge base is cut into served passages: `section` (one per `##` section; the encoder reads its "
        "first `encode.max_seq_length` tokens), `paragraph` (blank-line paragraphs, a long one cut at sentence ends "
        "into the fewest pieces that fit), `window` (token windows, consecutive ones sharing `overlap_tokens`). "
        "Measured in [Chunking](#chunking)"))
    window_tokens: Positive | None = Field(description=(
        "`paragraph`/`window`: tokens per chunk; `null`: what `encode.max_seq_length` leaves after the "
        "\"title: heading.\" each chunk carries"))
    overlap_tokens: Count = Field(description=(
        "`window`: tokens shared by consecutive windows (cuts fall between words)"))
    include_faq_answers: bool = Field(description="serve (and score) the FAQ answers beside the documents")
    warn_above_tokens: Positive = Field(description=(
        "a section or FAQ answer this long, far past what the encoder reads, gets a warning with the count and the "
        "parameter that handles it (`strategy` `section` serves it cut at `encode.max_seq_length`)"))


class Encode(Section):
    max_seq_length: Positive = Field(description=(
        "tokens per passage and query, for evaluation and the index alike (the same for both models)"))
    precision: Precision = Field(description=(
        "`fp32`, `bf16` or `auto` (bf16 where the hardware computes it natively, as `train.precision`): evaluation and "
        "the index encode the same way, so the index serves what was scored. On MedQuAD's 5,000 passages bf16 encodes "
        "1.9x faster on a CPU with AVX512-BF16, with the same MRR@10 / NDCG@10 to four decimals"))
    batch_size: Positive = Field(description="encoding batch (in fp32 on a CPU, 16 encodes 1.1x faster than 64, same "
                                 "scores)")


class Evaluate(Section):
    mrr_k: Positive = Field(description="MRR cut-off: the metric key `mrr@10` in `metrics.json` (stable across runs)")
    ndcg_k: Positive = Field(description="NDCG cut-off (`ndcg@10`)")
    map_k: Positive = Field(description="MAP cut-off (`map@100`)")
    recall_k: list[Positive] = Field(min_length=1, description="recall cut-offs (`recall@1` ...)")
    depth: Positive = Field(description=(
        "passages retrieved per query; the recall@k curve runs to it; the hybrid fuses this many from each retriever"))
    rrf_k: Count = Field(description=(
        "reciprocal rank fusion constant of the hybrid (BM25 + fine-tuned; evaluated, and served by `--mode hybrid`)"))
    no_match_precision: Fraction = Field(description=(
        "the \"no good match\" threshold is the highest that is right this share of the times it fires, on the "
        "users' validation questions with their answering documents taken out"))
    no_match_unanswerable_share: Fraction = Field(description=(
        "... when this share of the questions asked has no answer in the index (0.2: 1 in 5)"))
    thin_questions: Positive = Field(description=(
        "a held-out or validation set with fewer questions is thin evidence: the report and the log say so beside "
        "its interval, and the serving decision says when it rests on one (`metrics.json` \"evidence\")"))
    thin_topics: Positive = Field(description="the same for fewer topics (the interval resamples whole topics)")
    bootstrap_samples: Positive = Field(description="paired bootstrap and randomisation test samples")
    seed: int = Field(description="seed of the bootstrap and randomisation test")
    report_examples: Count = Field(description="biggest wins and losses shown in `reports/report.md`")
    guards: list[str] | None = Field(description=(
        "held-out sets (names in `data.testsets`, or `test`) the fine-tuned model must not lose: significantly worse "
        "on one (NDCG@10 interval below 0), and `reports/serve.json` makes the index serve the base model. A guard "
        "set that is thin evidence (`thin_questions`, `thin_topics`) gets a warning: a real loss there may not show"))


class Index(Section):
    approximate_above: Positive = Field(description=(
        "up to this many passages the index is exact; above, IVF (`ivf_nlist` cells, `nprobe` searched per query), "
        "its recall@10 against exact search in `info.json`. At 100,000 passages IVF answers in 3.6 ms against 20.7 ms "
        "exact, recall@10 0.994 (bench/README.md, \"Serving\")"))
    ivf_nlist: Positive | None = Field(description="IVF cells; `null`: 4·√passages")
    nprobe: Positive = Field(description="IVF cells searched per query: more, better recall and slower")


class Serve(Section):
    """The search service (python -m pipeline.serving.serve; its limits: pipeline/serving/limits.py, whose defaults
    are these). A request over a limit is answered 413 or 422 naming the field and the limit."""
    max_k: Positive = Field(100, description=(
        "passages per query: `evaluate.depth`, the most the hybrid fuses; a RAG prompt takes far fewer"))
    max_queries: Positive = Field(64, description=(
        "queries in one `POST /search`: a client with more sends several requests"))
    max_query_chars: Positive = Field(2000, description=(
        "characters per query: the model reads `encode.max_seq_length` tokens (128, about 500 characters of English); "
        "a longer query is cut there and its result says `\"truncated\": true`. 2000 admits a pasted message, not a "
        "document"))
    max_body_bytes: Positive = Field(262144, description=(
        "a POST body (256 KiB): `max_queries` full-length queries, refused before it is read"))
    batch_wait_ms: Annotated[float, Field(gt=0)] = Field(2.0, description=(
        "requests arriving within this many ms are encoded in one forward pass (micro-batching): the wait adds at "
        "most this to one client's latency and lets 16 share a pass"))
    max_batch_queries: Positive = Field(128, description=(
        "queries per micro-batch at most: a forward pass of 128 short queries takes tens of ms"))
    watch_seconds: Annotated[float, Field(gt=0)] = Field(2.0, description=(
        "how often the service checks the index's `info.json` for a new version to load"))


class Params(Section):
    data: Data
    model: Model
    prepare: Prepare
    train: Train
    passages: Passages
    encode: Encode
    evaluate: Evaluate
    index: Index
    serve: Serve | None = None

