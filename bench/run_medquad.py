"""Benchmark: the whole pipeline on real data no one on this team wrote (MedQuAD, ../shared/bench/medquad).

    python bench/run_medquad.py                     # pipeline defaults, all of faq_train.jsonl + users' messages
    python bench/run_medquad.py --messages none     # FAQ only: no users' messages
    python bench/run_medquad.py --messages unlinked # the messages as a bare query log (their questions hidden)
    python bench/run_medquad.py --half              # the same defaults on half of faq_train.jsonl
    python bench/run_medquad.py -S train.epochs=2   # any params.yaml override, as with `dvc exp run -S`
    python bench/run_medquad.py --half --grid       # the ablation grid, queued with `dvc exp run --queue`
    python bench/run_medquad.py --pace 0            # skip timing the plain sentence-transformers loop afterwards

It copies the project into bench/out/<name>/ (git-ignored), points params.yaml at MedQuAD (FAQ = faq_train.jsonl
grouped by `focus`, data.testset = test/, knowledge base = the test corpus), runs every stage with `dvc repro -s`
and prints base / fine-tuned / BM25 / hybrid metrics on MedQuAD's test/ and on real users' questions
(../shared/bench/consumer_questions, a named test set and the guard: read in place, never trained on), the
validation sets that chose the model, each stage's wall time and peak memory, the CPU model, and the plain
sentence-transformers loop's pairs a second on the same pairs and machine (--pace steps, after the run): issue 21's
45 minutes hold on the AMD EPYC of bench/README.md and scale by that pace on another CPU. Nothing is copied into the
project itself.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import cpu_model  # noqa: E402
from pipeline.params import set_params  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MEDQUAD = ROOT.parent / "shared" / "bench" / "medquad"
CONSUMER = ROOT.parent / "shared" / "bench" / "consumer_questions"  # real users' questions: scored, never trained on
MESSAGES = ROOT.parent / "shared" / "bench" / "user_messages" / "pairs.jsonl"  # real users' messages: may be trained on
MESSAGE_COLUMNS = {"linked": {"message": "message", "question": "question"},  # each message with the question it asks
                   "unlinked": {"message": "message"}}                       # the same messages as a bare query log
STAGES = ["passages", "prepare", "train", "baselines", "evaluate", "index", "index_base", "export"]
# Runs one stage and reports the peak resident memory of the processes it waited for (the stage's python).
STAGE_WRAPPER = (
    "import resource, subprocess, sys; r = subprocess.run(['dvc', 'repro', '-s', sys.argv[1]]); "
    "print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); sys.exit(r.returncode)"
)


def parse_value(text: str):
    return yaml.safe_load(text)


def make_workdir(name: str, overrides: dict, messages: str = "linked") -> Path:
    work = ROOT / "bench" / "out" / name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for item in ["pipeline", "dvc.yaml", "params.yaml", ".dvcignore", "data/raw"]:
        src, dst = ROOT / item, work / item
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir() else shutil.copy(src, dst)
    (work / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", work / ".dvc" / "config")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"].update({
        "faq": [str(MEDQUAD / "faq_train.jsonl")],
        "faq_columns": {"question": "question", "answer": "answer", "group": "focus"},
        "glossary": [],
        "kb": str(MEDQUAD / "test" / "corpus.jsonl"),
        "testset": str(MEDQUAD / "test"),
        "testsets": {"consumer_questions": str(CONSUMER)},  # read in place, never copied into the project
        "val_questions": None,  # no real validation questions: messages made from the validation pairs
        "messages": [] if messages == "none" else [str(MESSAGES)],  # read in place, never copied into the project
        "messages_columns": MESSAGE_COLUMNS.get(messages, MESSAGE_COLUMNS["linked"]),
    })
    params["evaluate"]["guards"] = ["consumer_questions"]
    params["prepare"]["kb_pairs"] = False  # the test corpus is the knowledge base here: never train on it
    params["passages"]["include_faq_answers"] = False
    set_params(params, overrides)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # every file a stage reads through params is a dependency of that stage (the stages check it)
    stages = yaml.safe_load((work / "dvc.yaml").read_text())
    stages["stages"]["prepare"]["deps"] += [str(MEDQUAD / "faq_train.jsonl"), str(MEDQUAD / "test"), str(CONSUMER),
                                            str(MESSAGES)]
    stages["stages"]["passages"]["deps"].append(params["data"]["kb"])
    (work / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    # a repository with a commit, as a user's clone is (dvclive reads the current revision)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench setup"]):
        subprocess.run(cmd, cwd=work, check=True)
    return work


def print_summary(work: Path) -> None:
    """Metrics of a finished work folder: every system on MedQuAD test/ and on consumer_questions/, the paired
    comparisons, the validation sets that chose the model, and which model the index serves."""
    metrics = json.loads((work / "reports" / "metrics.json").read_text())
    stats = json.loads((work / "reports" / "data_stats.json").read_text())
    train = json.loads((work / "reports" / "train" / "metrics.json").read_text())
    serve = json.loads((work / "reports" / "serve.json").read_text())
    keys = list(metrics["base"])
    if "messages" in stats:
        print(f"\nusers' messages: {stats['messages']}; training pairs by source {stats['pairs']['train_by_source']}")
    print(f"\nMedQuAD test/: {stats['pairs']['test_queries']} queries, {stats['pairs']['test_corpus']} passages; "
          f"{stats['pairs']['train']} training tuples ({stats['dropped']})")
    print(f"training: {train['steps']} steps, {train['train_minutes']} min, {train['pairs_per_second']} pairs/s, "
          f"best step {train['best_step']}, merge weight {train['merge_alpha']} (val NDCG@10 {train['merge_val_ndcg@10']}, val_users NDCG@10 "
          f"{train['merge_val_users_ndcg@10']}), "
          f"val ndcg@10 {train['val_ndcg@10_before']} -> {train['val_ndcg@10_best']}, "
          f"val_users ndcg@10 {train['val_users_ndcg@10_before']} -> {train['val_users_ndcg@10_best']}")
    tables = {"MedQuAD test/": metrics, **{f"{n}/": b for n, b in metrics.get("testsets", {}).items()}}
    for title, block in tables.items():
        print(f"\n{title}\n| system | " + " | ".join(keys) + " |\n|---" + "|---" * len(keys) + "|")
        for system in ["bm25", "base", "finetuned", "hybrid"]:
            print(f"| {system} | " + " | ".join(f"{block[system][k]:.4f}" for k in keys) + " |")
    print("\nvalidation (chose the checkpoint and the merge weight)\n| set | " + " | ".join(keys) + " |")
    for system in ["base_val", "finetuned_val", "base_val_users", "finetuned_val_users"]:
        print(f"| {system} | " + " | ".join(f"{metrics[system][k]:.4f}" for k in keys) + " |")
    print()
    comparisons = [("test", c, metrics[c]) for c in metrics if "_vs_" in c]
    comparisons += [(n, "finetuned_vs_base", b["finetuned_vs_base"]) for n, b in metrics.get("testsets", {}).items()]
    for set_name, comp, t in comparisons:
        for m, v in t.items():
            print(f"{set_name:<20} {comp:<40} {m:<8} delta {v['delta']:+.4f}  95% CI [{v['ci_low']:+.4f}, "
                  f"{v['ci_high']:+.4f}]  p {v['p_value']:.4f}")
    print(f"\nthe index serves: {serve['model']}" + (f" ({serve['reason']})" if serve.get("reason") else ""))


# The ablation grid (`--grid`): each entry is queued with `dvc exp run --queue` in one work folder and run in turn
# by `dvc queue start`; prepare runs once per distinct prepare.* and comes from DVC's run cache after that.
CLASSIC = {"train.directions": ["query_to_doc"]}  # classic MNRL: query -> passages only
GTE = {"train.directions": ["query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"]}
GRID = [  # every entry names its loss terms, epochs and batches, so it means the same whatever the defaults are
    ("random batches, 1 epoch", {**CLASSIC, "train.group_batches": False, "train.epochs": 1}),
    ("grouped batches, 1 epoch", {**CLASSIC, "train.group_batches": True, "train.epochs": 1}),
    ("grouped batches, 2 epochs", {**CLASSIC, "train.group_batches": True, "train.epochs": 2}),
    ("grouped batches, 1 epoch, 1 BM25-mined negative",
     {**CLASSIC, "train.group_batches": True, "train.epochs": 1, "prepare.negatives.num": 1,
      "prepare.negatives.miner": "bm25"}),
    ("grouped batches, 1 epoch, Cached MNRL, batch 256",
     {**CLASSIC, "train.group_batches": True, "train.epochs": 1, "train.loss": "CachedMultipleNegativesRankingLoss",
      "train.batch_size": 256}),
    ("grouped batches, 1 epoch, 1 base-model-mined negative",
     {**CLASSIC, "train.group_batches": True, "train.epochs": 1, "prepare.negatives.num": 1,
      "prepare.negatives.miner": "model"}),
    ("grouped batches, 1 epoch, GTE loss (both ways + same-type negatives)",
     {**GTE, "train.group_batches": True, "train.epochs": 1}),
    ("grouped batches, 1 epoch, hardness-weighted in-batch negatives (strength 9)",
     {**CLASSIC, "train.group_batches": True, "train.epochs": 1, "train.hardness_mode": "in_batch_negatives",
      "train.hardness_strength": 9}),
    ("grouped batches, 1 epoch, learning rate 1e-4",
     {**CLASSIC, "train.group_batches": True, "train.epochs": 1, "train.learning_rate": 1e-4}),
]
# the grid was measured with the model's own dropout (0.1), before train.dropout: 0 became the default
GRID = [(label, {"train.dropout": None, **overrides}) for label, overrides in GRID]
SHARED = {**CLASSIC, "train.dropout": None}  # settings every classic row has: left out of the printed overrides
GRID_COLUMNS = {  # dvc exp show column -> table column: validation only, the split the recipe is chosen on
    "reports/train/metrics.json:val_mrr@10_best": "val MRR@10",
    "reports/train/metrics.json:val_ndcg@10_best": "val NDCG@10",
    "reports/train/metrics.json:best_step": "best step",
    "reports/train/metrics.json:steps": "steps",
    "reports/train/metrics.json:train_minutes": "train min",
}


def grid_value(row, key: str):
    """A metric of one `dvc exp show --csv` row; the column is "file:name", or just "name" when that is unique."""
    if row is None:
        return float("nan")
    name = key.split(":", 1)[1]
    for column in (key, name):
        if column in row.index:
            return row[column]
    return next((row[c] for c in row.index if str(c).endswith(":" + name)), float("nan"))


def run_grid(work: Path, entries: list[tuple[str, dict]]) -> None:
    """Queue every entry as a DVC experiment (prepare and train: the grid is read on the validation split, test/ is
    scored only for the chosen defaults), run the queue, print the ablation table."""
    for i, (label, overrides) in enumerate(entries):
        sets = [arg for k, v in overrides.items() for arg in ("-S", f"{k}={json.dumps(v)}")]
        subprocess.run(["dvc", "exp", "run", "--queue", "-n", f"grid-{i}", *sets, "train"], cwd=work, check=True)
    subprocess.run(["dvc", "queue", "start", "-j", "1"], cwd=work, check=True)
    while True:  # the workers run in the background
        time.sleep(30)
        status = subprocess.run(["dvc", "queue", "status"], cwd=work, capture_output=True, text=True).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
    print(status)
    print_grid(work, entries)


def print_grid(work: Path, entries: list[tuple[str, dict]]) -> None:
    """The ablation table of a finished grid, from `dvc exp show`."""
    import pandas as pd

    show = subprocess.run(["dvc", "exp", "show", "--csv", "--force"], cwd=work, capture_output=True, text=True,
                          check=True).stdout
    (work / "grid.csv").write_text(show)
    table = pd.read_csv(io.StringIO(show))
    table = table[table["Experiment"].astype(str).str.startswith("grid-")].set_index("Experiment")
    rows = []
    for i, (label, overrides) in enumerate(entries):
        row = table.loc[f"grid-{i}"] if f"grid-{i}" in table.index else None
        values = {col: grid_value(row, key) for key, col in GRID_COLUMNS.items()}
        rows.append({"run": label, "overrides": " ".join(f"{k}={v}" for k, v in overrides.items()
                                                           if (k, v) not in SHARED.items()) or "-", **values})
    table = pd.DataFrame(rows)
    for column in ("best step", "steps"):
        table[column] = table[column].map(lambda v: "-" if pd.isna(v) else str(int(float(v))))
    print(table.to_markdown(index=False, floatfmt=".4f"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-S", dest="set", action="append", default=[], help="params override, key=value")
    parser.add_argument("--half", action="store_true", help="train on half of faq_train.jsonl")
    parser.add_argument("--messages", choices=["linked", "unlinked", "none"], default="linked",
                        help="users' messages (../shared/bench/user_messages): with their questions, bare, or none")
    parser.add_argument("--name", default=None, help="work folder name under bench/out/")
    parser.add_argument("--grid", action="store_true", help="run the ablation grid with `dvc exp run --queue`")
    parser.add_argument("--pace", type=int, default=20, metavar="STEPS",
                        help="after the run, time the plain sentence-transformers loop for STEPS steps on its pairs, "
                             "the pace issue 21 scales its 45 minutes by on another CPU (0: skip)")
    parser.add_argument("--summary", metavar="NAME", help="only print the metrics of bench/out/NAME")
    args = parser.parse_args()
    if args.summary:
        work = ROOT / "bench" / "out" / args.summary
        print_grid(work, GRID) if args.grid else print_summary(work)
        return
    if not MEDQUAD.is_dir():
        print(f"benchmark data not found at {MEDQUAD}: nothing measured (it lives in ../shared beside the checkout)")
        return
    overrides = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.half:
        n = sum(1 for _ in open(MEDQUAD / "faq_train.jsonl", encoding="utf-8"))
        overrides["prepare.max_train_pairs"] = n // 2
    name = args.name or ("grid_" if args.grid else "") + ("half" if args.half else "default") + (
        "" if args.messages == "linked" else f"_messages={args.messages}") + "".join(f"_{k}={v}" for k, v in overrides.items()
                                                                      if k != "prepare.max_train_pairs")
    work = make_workdir(name.replace("/", "_"), overrides, args.messages)
    print(f"work folder: {work}\noverrides: {overrides or 'none'}", flush=True)
    if args.grid:
        run_grid(work, GRID)
        return

    timings = {}
    for stage in STAGES:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", STAGE_WRAPPER, stage], cwd=work, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        (work / f"{stage}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            sys.exit(f"stage {stage} failed; see {work / (stage + '.log')}\n{proc.stderr[-3000:]}")
        peak = next((ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("PEAK_RSS_MB")), "?")
        timings[stage] = (seconds, peak)
        print(f"{stage:<10} {seconds / 60:6.1f} min   peak memory {peak} MB", flush=True)

    print_summary(work)
    total = sum(s for s, _ in timings.values())
    print(f"total wall time {total / 60:.1f} min on {cpu_model()}: " + ", ".join(f"{k} {s / 60:.1f}" for k, (s, _) in timings.items()))
    if args.pace > 0:
        pace = plain_loop_pace(work, args.pace)
        print(f"plain sentence-transformers loop on {cpu_model()}: {pace} pairs/s "
              f"({args.pace} steps on this run's training pairs; bench/train_pace.py)")


def plain_loop_pace(work: Path, steps: int) -> float:
    """The plain SentenceTransformerTrainer's pairs a second on the run's own pairs and settings, measured after the
    run on the same machine: the yardstick for comparing this run's time with one on another CPU."""
    from bench.train_pace import plain_pace

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"]["max_steps"] = steps
    rows = [json.loads(line) for line in (work / "data" / "prepared" / "train.jsonl").read_text().splitlines()]
    return plain_pace(params, rows)["pairs_per_second"]


if __name__ == "__main__":
    main()
