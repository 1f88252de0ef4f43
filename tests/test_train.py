"""train: each loss named in params gets the dataset layout it needs; bad names fail clearly."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml

from pipeline.data.readers import read_beir, write_beir
from pipeline.models import load_model
from pipeline.params import InputError, load_params, set_params
from pipeline.paths import ROOT
from pipeline.training.losses import build_loss

ROWS = [{"anchor": f"q{i}", "positive": f"p{i}", "negative_1": f"n{i}"} for i in range(4)]
CFG = {"mini_batch_size": 2, "matryoshka_dims": None, "scale": 20.0, "directions": ["query_to_doc"],
       "hardness_mode": None, "hardness_strength": 0.0, "length_buckets": 1}


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_model(tiny_model, device="cpu")


@pytest.mark.parametrize("name, columns, rows", [
    ("MultipleNegativesRankingLoss", ["anchor", "positive", "negative_1"], 4),
    ("CachedMultipleNegativesRankingLoss", ["anchor", "positive", "negative_1"], 4),
    ("TripletLoss", ["anchor", "positive", "negative_1"], 4),
    ("CosineSimilarityLoss", ["sentence1", "sentence2", "score"], 8),
])
def test_loss_and_dataset_layout(model, name, columns, rows):
    loss, data = build_loss(name, model, ROWS, CFG)
    assert type(loss).__name__ == name
    assert data.column_names == columns and len(data) == rows
    if name == "CosineSimilarityLoss":
        assert sorted(set(data["score"])) == [0.0, 1.0]


def test_matryoshka_wraps_the_loss(model):
    loss, _ = build_loss("MultipleNegativesRankingLoss", model, ROWS, dict(CFG, matryoshka_dims=[32, 16]))
    assert type(loss).__name__ == "MatryoshkaLoss"


def test_loss_options_change_the_loss_and_bad_ones_fail(model):
    """directions/scale/hardness from params reach the library loss: on the same batch they give another value."""
    from sentence_transformers.sentence_transformer import losses

    features = [model.tokenize([r[c] for r in ROWS]) for c in ("anchor", "positive")]
    gte = dict(CFG, directions=["query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"])
    hard = dict(CFG, hardness_mode="in_batch_negatives", hardness_strength=9)
    value = {}
    for name, cfg in [("default", CFG), ("gte", gte), ("hard", hard), ("scale", dict(CFG, scale=50.0))]:
        loss, _ = build_loss("MultipleNegativesRankingLoss", model, ROWS, cfg)
        value[name] = loss(features, labels=None).item()
    reference = losses.MultipleNegativesRankingLoss(model)(features, labels=None).item()
    assert value["default"] == pytest.approx(reference)
    assert all(abs(value[k] - value["default"]) > 1e-4 for k in ("gte", "hard", "scale"))
    cached, _ = build_loss("CachedMultipleNegativesRankingLoss", model, ROWS, gte)
    assert cached.directions == tuple(gte["directions"]) and cached.mini_batch_size == 2
    with pytest.raises(InputError, match="params.yaml: train: Invalid directions"):
        build_loss("MultipleNegativesRankingLoss", model, ROWS, dict(CFG, directions=["query_to_docs"]))


def test_length_buckets_give_the_library_loss_and_gradients_from_narrower_passes(model):
    """Each column embedded in groups of similar length: the same loss and gradients as one padded forward pass
    (fp32), alone and under MatryoshkaLoss, while the passes really are narrower than the padded batch."""
    from sentence_transformers.sentence_transformer import losses

    words = [2, 40, 3, 25, 1, 60, 4, 8]  # a few long messages among short questions, as with users' messages
    rows = [{"anchor": " ".join(f"w{i}x{j}" for j in range(n)), "positive": f"answer {i} " * (1 + i % 3)}
            for i, n in enumerate(words)]
    features = lambda: [model.tokenize([r[c] for r in rows]) for c in ("anchor", "positive")]  # noqa: E731
    widths = []
    hook = model[0].register_forward_pre_hook(lambda _, args: widths.append(args[0]["input_ids"].shape[1]))

    def value_and_grads(loss):
        model.zero_grad()
        value = loss(features(), labels=None)
        value.backward()
        return value.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    try:
        for dims in (None, [32, 16]):
            cfg = dict(CFG, matryoshka_dims=dims)
            plain, _ = build_loss("MultipleNegativesRankingLoss", model, rows, cfg)
            bucketed, _ = build_loss("MultipleNegativesRankingLoss", model, rows, dict(cfg, length_buckets=4))
            inner = bucketed.loss if dims else bucketed
            assert type(inner).__name__ == "LengthBucketedMNRL" and inner.buckets == 4
            widths.clear()
            expected, expected_grads = value_and_grads(plain)
            full = max(widths)
            widths.clear()
            got, grads = value_and_grads(bucketed)
            assert len(widths) == 8 and min(widths) < full / 3 and max(widths) == full
            assert got == pytest.approx(expected, abs=1e-6)
            assert len(grads) == len(expected_grads)
            # float noise of other matrix shapes only: 5e-6 against gradients up to 7
            assert all(torch.allclose(g, e, rtol=1e-4, atol=1e-5) for g, e in zip(grads, expected_grads))
        reference = losses.MultipleNegativesRankingLoss(model)(features(), labels=None).item()
        assert got != pytest.approx(reference, abs=1e-3)  # the Matryoshka loss above is another loss, seen
    finally:
        hook.remove()


def test_pairs_without_negatives_and_bad_names(model):
    pairs = [{"anchor": r["anchor"], "positive": r["positive"]} for r in ROWS]
    _, data = build_loss("MultipleNegativesRankingLoss", model, pairs, CFG)
    assert data.column_names == ["anchor", "positive"]
    with pytest.raises(InputError, match="TripletLoss needs prepare.negatives.num"):
        build_loss("TripletLoss", model, pairs, CFG)
    with pytest.raises(InputError, match="'ContrastiveLos' is not one of"):
        build_loss("ContrastiveLos", model, ROWS, CFG)


def grouped_batches(rows, groups, batch_size, epoch=0, drop_last=False):
    from datasets import Dataset

    from pipeline.training.sampler import GroupedNoDuplicatesBatchSampler

    data = Dataset.from_dict({c: [r[c] for r in rows] for c in rows[0]})
    sampler = GroupedNoDuplicatesBatchSampler(data, batch_size=batch_size, drop_last=drop_last, seed=7, groups=groups)
    sampler.set_epoch(epoch)
    return list(sampler), sampler


def test_grouped_batches_keep_groups_together_and_cover_every_row():
    # 6 groups of 4 rows, batches of 8: with groups kept whole, each batch is exactly 2 groups
    rows = [{"anchor": f"question {i} of topic {g}", "positive": f"answer {i} of topic {g}"}
            for g in range(6) for i in range(4)]
    groups = [g for g in range(6) for _ in range(4)]
    batches, sampler = grouped_batches(rows, groups, 8)
    assert sorted(i for b in batches for i in b) == list(range(24)) and len(sampler) == len(batches) == 3
    for batch in batches:
        assert all(isinstance(i, int) for i in batch)
        assert len({groups[i] for i in batch}) == 2
    # seeded per epoch: the same epoch repeats, the next one is shuffled differently
    assert grouped_batches(rows, groups, 8)[0] == batches
    assert grouped_batches(rows, groups, 8, epoch=1)[0] != batches


def test_grouped_batches_never_repeat_a_text_or_a_normalised_question():
    # one group whose rows repeat a passage and ask one question twice ("What is X?" / "what is x")
    rows = [{"anchor": "What is X?", "positive": "X is a virus."},
            {"anchor": "what is x", "positive": "X, a virus of dogs."},
            {"anchor": "How is X spread?", "positive": "X is a virus."},
            {"anchor": "How is X treated?", "positive": "Fluids and rest."}]
    batches, _ = grouped_batches(rows, [0, 0, 0, 0], 4)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3]
    for batch in batches:
        assert not ({0, 1} <= set(batch) or {0, 2} <= set(batch))
    batches, _ = grouped_batches(rows, [0, 0, 0, 0], 4, drop_last=True)
    assert all(len(b) == 4 for b in batches) and batches == []


def test_grouped_batches_never_put_a_mined_negative_twice_in_a_batch():
    # four questions whose mined negative is the same passage go in four batches (validation preferred it on
    # MedQuAD to letting them share one), a fifth row whose answer is that passage waits too, and so does a sixth
    # whose negative is another row's answer: no text is both an answer and a negative in a batch
    hub = "Kennel cough is a respiratory infection."
    rows = [{"anchor": f"question {i}", "positive": f"answer {i}", "negative_1": hub} for i in range(4)]
    rows += [{"anchor": "what is kennel cough", "positive": hub, "negative_1": "answer 9"},
             {"anchor": "question 5", "positive": "answer 5", "negative_1": "answer 0"}]
    batches, _ = grouped_batches(rows, [0] * 6, 6)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert max(len({0, 1, 2, 3, 4} & set(b)) for b in batches) == 1
    for batch in batches:
        texts = [t for i in batch for t in rows[i].values()]
        assert len(texts) == len(set(texts)), batch


def test_precision_setting():
    from pipeline.models import pick_precision

    assert pick_precision("fp32", "train.precision") == "fp32" and pick_precision("bf16", "index.precision") == "bf16"
    # auto: bf16 exactly where this CPU computes it natively (these tests run without a GPU)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    native = " avx512_bf16" in flags or " amx_bf16" in flags
    assert pick_precision("auto", "train.precision") == ("bf16" if native else "fp32")
    with pytest.raises(InputError, match="index.precision 'fp16' is not one of auto, fp32, bf16"):
        pick_precision("fp16", "index.precision")


def test_dropout_param_reaches_every_layer(tiny_model):
    """train.dropout 0 makes a training-mode forward pass deterministic; null keeps the model's own; bad values fail."""
    import torch

    from pipeline.training.args import set_dropout

    def two_passes(model):
        model.train()
        features = model.tokenize(["a question about a cat", "a second, longer question about a dog"])
        return [model(dict(features))["sentence_embedding"] for _ in range(2)]

    torch.manual_seed(0)
    kept = load_model(tiny_model, device="cpu")
    assert set_dropout(kept, None) == 0
    first, second = two_passes(kept)
    assert not torch.allclose(first, second)  # BERT's own 0.1 dropout is on in training mode
    model = load_model(tiny_model, device="cpu")
    assert set_dropout(model, 0.0) >= 5  # embeddings, and per layer attention and two hidden dropouts
    first, second = two_passes(model)
    assert torch.allclose(first, second)
    config = model[0].auto_model.config
    assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == 0.0
    for bad in (1.0, -0.1, "none"):
        with pytest.raises(InputError, match="train.dropout"):
            set_dropout(model, bad)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("case", ["repeated_passages", "repeated_questions", "one_big_group", "mixed"])
def test_grouped_sampler_len_is_the_number_of_batches_it_yields(case, drop_last):
    """Clashing rows wait for a later batch, so there can be more batches than rows / batch_size: len() must count
    the batches __iter__ really yields (the trainer derives epochs, the LR schedule and eval_steps from it)."""
    if case == "repeated_passages":  # every group answers all its questions with one of two passages
        rows = [{"anchor": f"question {i} on {g}", "positive": f"passage {i % 2} on {g}"}
                for g in range(5) for i in range(6)]
        groups = [g for g in range(5) for _ in range(6)]
    elif case == "repeated_questions":  # one question asked again and again with different answers
        rows = [{"anchor": (f"What is {g}?" if i % 2 else f"what is {g}") if i < 5 else f"question {i} on {g}",
                 "positive": f"answer {i} on {g}"} for g in range(5) for i in range(7)]
        groups = [g for g in range(5) for _ in range(7)]
    elif case == "one_big_group":  # a single group where a third of the rows share a passage
        rows = [{"anchor": f"q{i}", "positive": "same" if i % 3 == 0 else f"p{i}"} for i in range(20)]
        groups = [0] * 20
    else:  # groups of unequal size, some clashing, some not
        rows, groups = [], []
        for g, size in enumerate([1, 9, 3, 12, 2, 5]):
            for i in range(size):
                rows.append({"anchor": f"q{i % 4} {g}", "positive": f"p{i % 3} {g}" if g % 2 else f"p{i} {g}"})
                groups.append(g)
    for epoch in range(3):
        batches, sampler = grouped_batches(rows, groups, 4, epoch=epoch, drop_last=drop_last)
        assert len(sampler) == len(batches), (case, epoch)
        assert len(sampler) == len(list(sampler))  # asked again: the same epoch, the same answer
        if drop_last:
            assert all(len(b) == 4 for b in batches)
        else:
            assert sorted(i for b in batches for i in b) == list(range(len(rows)))


@pytest.fixture
def train_project(tmp_path, monkeypatch, tiny_model):
    """A project folder as the train stage sees it: params.yaml (the tiny model, 2 steps) and data/prepared/."""
    params = set_params(load_params(path=ROOT / "params.yaml"), {
        "model.base": tiny_model, "train.max_steps": 2, "train.batch_size": 4, "train.max_seq_length": 16,
        "train.evaluations": 1, "train.precision": "fp32"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    prepared = tmp_path / "data/prepared"
    prepared.mkdir(parents=True)
    rows = [{"anchor": f"question {i}", "positive": f"answer {i}", "group": i} for i in range(8)]
    pd.DataFrame(rows).to_json(prepared / "train.jsonl", orient="records", lines=True)
    for name in ("val", "val_users"):
        write_beir(prepared / name, {f"d{i}": f"answer {i}" for i in range(4)},
                   {f"q{i}": f"question {i}" for i in range(4)}, {f"q{i}": {f"d{i}": 1} for i in range(4)})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # the checkpoints a failed run leaves behind
    return tmp_path


def evaluation(step, ndcg, mrr):
    return {"eval_val_cosine_ndcg@10": ndcg, "eval_val_cosine_mrr@10": mrr, "eval_val_users_cosine_ndcg@10": ndcg,
            "eval_val_users_cosine_mrr@10": mrr, "eval_sequential_score": ndcg, "step": step}


# the untrained model (eval_on_start, step 0) scores highest; load_best_model_at_end keeps the checkpoint of step 4
HISTORY = [evaluation(0, 0.9, 0.8), {"loss": 2.0, "step": 1}, evaluation(2, 0.5, 0.4), {"loss": 1.5, "step": 3},
           evaluation(4, 0.6, 0.55), evaluation(6, 0.58, 0.6)]


def test_kept_evaluation_is_the_kept_checkpoints_never_step_0():
    from pipeline.training.validation import kept_evaluation

    assert kept_evaluation(HISTORY, 4) == evaluation(4, 0.6, 0.55)
    assert kept_evaluation(HISTORY, 6) == evaluation(6, 0.58, 0.6)
    # no best checkpoint recorded: the final model is what is kept, so its (last) evaluation, never step 0's
    assert kept_evaluation(HISTORY, None) == evaluation(6, 0.58, 0.6)
    assert kept_evaluation(HISTORY[:2], None) is None


class FakeTrainer:
    """Stands in for SentenceTransformerTrainer: no training, the log HISTORY, step 4 kept."""

    def __init__(self, model, **kwargs):
        self.model, self.state = model, SimpleNamespace(log_history=[], best_global_step=None, global_step=0)

    def train(self):
        self.state.log_history, self.state.best_global_step, self.state.global_step = HISTORY, 4, 6


def test_train_summary_reports_the_kept_checkpoint_and_the_merge_weight(train_project, monkeypatch):
    """The summary's step is the checkpoint load_best_model_at_end kept (step 4), not the step-0 evaluation of the
    untrained model, which scored higher but has no checkpoint; its scores are those of the model saved, the kept
    checkpoint merged with the base model at the weight that validated best."""
    import sentence_transformers

    from pipeline.stages import train

    monkeypatch.setattr(sentence_transformers, "SentenceTransformerTrainer", FakeTrainer)
    train.main()
    summary = json.loads((train_project / "reports/train/metrics.json").read_text())
    assert summary["best_step"] == 4
    # "before" is the base model scored beside the merges, as evaluate scores it, not the step-0 training check
    # (0.9 in HISTORY)
    assert summary["val_ndcg@10_before"] == summary["merge_val_ndcg@10"]["0"] != 0.9
    alphas = load_params("train", path=train_project / "params.yaml")["merge_alphas"]
    for key in ("merge_val_ndcg@10", "merge_val_users_ndcg@10"):
        assert list(summary[key]) == [f"{a:g}" for a in sorted(alphas)] and len(alphas) > 1
    assert summary["merge_val_ndcg@10"][f"{summary['merge_alpha']:g}"] == summary["val_ndcg@10_best"]
    # the scores reported are the saved model's own
    saved = load_model(str(train_project / "models/finetuned"), device="cpu")
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    corpus, queries, qrels = read_beir(train_project / "data/prepared/val")
    scores = InformationRetrievalEvaluator(queries, corpus, {q: set(d) for q, d in qrels.items()}, name="val",
                                           show_progress_bar=False)(saved)
    assert summary["val_ndcg@10_best"] == round(scores["val_cosine_ndcg@10"], 4)


@pytest.mark.parametrize("shared_answer", [False, True])
def test_pairs_per_second_counts_the_rows_the_batches_hold(train_project, monkeypatch, shared_answer):
    """Rows that share an answer cannot share a batch (it would be scored as a wrong answer to itself), so grouped
    batches come short: pairs_per_second counts the rows trained, not steps x train.batch_size (batch_fill)."""
    import sentence_transformers

    from pipeline.stages import train

    if shared_answer:  # 4 of the 8 rows answered by one passage: 4 batches at least, at most 8 / 16 filled
        rows = [{"anchor": f"question {i}", "positive": "answer 0" if i < 4 else f"answer {i}", "group": i}
                for i in range(8)]
        pd.DataFrame(rows).to_json(train_project / "data/prepared/train.jsonl", orient="records", lines=True)
    monkeypatch.setattr(sentence_transformers, "SentenceTransformerTrainer", FakeTrainer)
    train.main()
    summary = json.loads((train_project / "reports/train/metrics.json").read_text())
    assert summary["batch_fill"] <= 0.5 if shared_answer else summary["batch_fill"] == 1.0
    assert summary["pairs_per_second"] > 0


def test_merge_interpolates_every_weight_between_base_and_fine_tuned():
    import torch

    from pipeline.training.merge import merged_state

    base = {"w": torch.zeros(3), "b": torch.ones(2), "position_ids": torch.arange(3)}
    tuned = {"w": torch.full((3,), 2.0), "b": torch.full((2,), 3.0), "position_ids": torch.arange(3)}
    assert torch.equal(merged_state(base, tuned, 1.0)["w"], tuned["w"])
    assert torch.equal(merged_state(base, tuned, 0.0)["b"], base["b"])
    half = merged_state(base, tuned, 0.5)
    assert torch.allclose(half["w"], torch.ones(3)) and torch.allclose(half["b"], torch.full((2,), 2.0))
    assert torch.equal(half["position_ids"], torch.arange(3))  # integer buffers are not averaged


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_needs_native_bf16_on_the_gpu(monkeypatch, capability, expected):
    """Before Ampere (compute capability 8.0) a GPU only emulates bf16 (torch.cuda.is_bf16_supported() still says
    True by default): slower than fp32, so `auto` must not pick it."""
    import torch

    from pipeline.models import pick_precision

    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(major=capability[0], minor=capability[1]))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True, raising=False)  # emulation works
    assert pick_precision("auto", "train.precision") == expected


def snapshot(*folders):
    """Every file under the folders, with its bytes; and what else lies beside them (temporaries left behind)."""
    files = {str(f): f.read_bytes() for folder in folders for f in sorted(folder.rglob("*")) if f.is_file()}
    return files, {folder.parent: sorted(p.name for p in folder.parent.iterdir()) for folder in folders}


def test_failed_training_leaves_the_previous_logs_and_model(train_project, monkeypatch):
    """dvclive used to clean and rewrite reports/train in place: a run that failed mid-training left the old model
    beside new, partial logs. Now both are written aside and moved into place together at the end."""
    import sentence_transformers

    from pipeline.stages import train

    live, model = train_project / "reports/train", train_project / "models/finetuned"
    (live / "plots/metrics").mkdir(parents=True)
    (live / "metrics.json").write_text('{"val_ndcg@10_best": 0.5}\n')
    (live / "params.yaml").write_text("epochs: 1\n")
    (live / "plots/metrics/loss.tsv").write_text("step\tloss\n0\t1.0\n")
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"previous model")
    before = snapshot(live, model)

    def fail(self, *args, **kwargs):
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(sentence_transformers.SentenceTransformerTrainer, "train", fail)
    with pytest.raises(RuntimeError, match="killed mid-training"):
        train.main()
    assert snapshot(live, model) == before

    monkeypatch.setattr(sentence_transformers, "SentenceTransformerTrainer", FakeTrainer)
    train.main()  # a run that succeeds replaces both
    assert json.loads((live / "metrics.json").read_text())["best_step"] == 4
    assert yaml.safe_load((live / "params.yaml").read_text())["max_steps"] == 2
    assert not (live / "plots/metrics/loss.tsv").exists()  # the old run's curve is not mixed into the new logs
    assert (model / "model.safetensors").read_bytes() != b"previous model"
    assert snapshot(live, model)[1] == before[1]  # no temporaries left beside them


def test_eval_steps_count_the_grouped_batches(train_project, monkeypatch):
    """The checks are spread over the steps training really takes: with grouped batches a row whose passage is
    already in the batch waits, so 8 rows sharing one passage are 8 batches of 1, not 2 batches of 4."""
    import sentence_transformers

    from pipeline.stages import train

    params = yaml.safe_load((train_project / "params.yaml").read_text())
    params["train"].update(max_steps=-1, epochs=1, evaluations=2)
    (train_project / "params.yaml").write_text(yaml.safe_dump(params))
    rows = [{"anchor": f"question {i}", "positive": "the same answer", "group": 0} for i in range(8)]
    pd.DataFrame(rows).to_json(train_project / "data/prepared/train.jsonl", orient="records", lines=True)
    seen = {}

    class Stop(Exception):
        pass

    def capture(model, args, **kwargs):
        seen["args"] = args
        raise Stop

    monkeypatch.setattr(sentence_transformers, "SentenceTransformerTrainer", capture)
    with pytest.raises(Stop):
        train.main()
    assert seen["args"].eval_steps == seen["args"].save_steps == 4  # 8 steps, 2 checks


def test_the_merge_weight_is_the_one_whose_smaller_gain_is_largest():
    """Shaped like MedQuAD's full run (bench/README.md): the FAQ-style split gains most at 0.7, the users' questions
    at 0.5. A plain mean of the two chose 0.7, which lost on real users' questions; the shares of each set's best
    gain choose 0.5, which gained on both."""
    from pipeline.training.merge import choose_merge

    before = {"eval_val_cosine_ndcg@10": 0.8004, "eval_val_users_cosine_ndcg@10": 0.9265}
    scores = {0.5: (0.9495, 0.9398), 0.7: (0.9575, 0.9364), 1.0: (0.9560, 0.9290)}
    merges = {a: {"val_cosine_ndcg@10": v, "val_users_cosine_ndcg@10": u, "sequential_score": (v + u) / 2}
              for a, (v, u) in scores.items()}
    keys = ["val_cosine_ndcg@10", "val_users_cosine_ndcg@10"]
    assert max(merges, key=lambda a: merges[a]["sequential_score"]) == 0.7
    assert choose_merge(merges, before, keys) == 0.5
    # when the users' questions gain nothing at any weight, the weight that loses least on them wins
    flat = {a: {**m, "val_users_cosine_ndcg@10": 0.9265 - 0.01 * a} for a, m in merges.items()}
    assert choose_merge(flat, before, keys) == 0.5
    # one set only, or sets that agree: the best weight
    assert choose_merge(merges, before, keys[:1]) == 0.7


def test_the_base_model_is_a_candidate_and_wins_when_every_trained_weight_loses():
    """Weight 0 is the base model itself: when every trained weight loses on a validation set (the bundled run of
    the previous release: all four lost on the users' questions), the base model is chosen, not the least bad."""
    from pipeline.training.merge import choose_merge

    before = {"eval_val_cosine_ndcg@10": 0.9506, "eval_val_users_cosine_ndcg@10": 0.7928}
    scores = {0.0: (0.9506, 0.7928), 0.3: (0.9597, 0.7824), 0.5: (0.953, 0.7771), 0.7: (0.9732, 0.7614),
              1.0: (0.9664, 0.7307)}
    merges = {a: {"val_cosine_ndcg@10": v, "val_users_cosine_ndcg@10": u, "sequential_score": (v + u) / 2}
              for a, (v, u) in scores.items()}
    keys = ["val_cosine_ndcg@10", "val_users_cosine_ndcg@10"]
    assert choose_merge(merges, before, keys) == 0.0
    # one weight that gains on both sets beats the base model
    merges[0.3]["val_users_cosine_ndcg@10"] = 0.7950
    assert choose_merge(merges, before, keys) == 0.3


def test_the_merge_weight_is_chosen_at_the_precision_evaluation_reports(train_project, monkeypatch):
    """Training in bf16 leaves accelerate's autocast wrapper on model.forward; the merge candidates must be scored
    as evaluate scores them (encode.precision, fp32 here), or the weight is chosen on bf16 scores and reported in
    fp32. Each candidate's vectors during the choice equal those of a fresh fp32 model with the same weights."""
    from pipeline.models import pick_precision
    from pipeline.stages import train
    from pipeline.training import distributed

    if pick_precision("auto", "train.precision") != "bf16":
        pytest.skip("no native bf16 on this CPU")
    params = load_params(path=train_project / "params.yaml")
    params = set_params(params, {"train.precision": "bf16", "encode.precision": "fp32", "train.merge_alphas": [0.5, 1.0]})
    (train_project / "params.yaml").write_text(yaml.safe_dump(params))
    seen, validate = [], distributed.validate

    def recording(evaluator, model):
        seen.append((model.encode(["a question about fleas"], convert_to_tensor=True).cpu(),
                     {k: v.detach().clone() for k, v in model.state_dict().items()}))
        return validate(evaluator, model)

    monkeypatch.setattr(distributed, "validate", recording)
    train.main()
    assert len(seen) == 3  # the base model (0.0), 0.5 and 1.0
    fresh = load_model(params["model"]["base"], max_seq_length=16, device="cpu")
    for vector, state in seen:
        fresh.load_state_dict(state)
        expected = fresh.encode(["a question about fleas"], convert_to_tensor=True).cpu()
        assert torch.allclose(vector, expected, atol=1e-6), (vector - expected).abs().max()
