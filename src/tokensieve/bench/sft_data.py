"""A supervised fine-tuning set of short-answer questions, split by task, from the quiz data
of the BSD games (``quiz(6)``).

Source: the Debian package ``bsdgames`` 2.17-29+b1 (its ``/usr/share/games/bsdgames/quiz``
files: capitals, chemical elements, presidents and sovereigns, animal young and collective
nouns, Latin words, the language of flowers, Shakespeare and poetry lines, number sequences,
...). Licence: BSD (Copyright The Regents of the University of California; see the package's
``copyright`` file). The files are read from an installed ``bsdgames`` when its quiz data is
the pinned one, else from the pinned ``.deb`` in ``data_dir()/downloads`` (fetched once with
``apt-get download bsdgames=2.17-29+b1``); either way the files used are checked against
:data:`QUIZ_SHA256` (a digest of their bytes, the same in every architecture's ``.deb``).
BIG-bench 1.0.0, the first plan, is no longer served by the package index.

Each quiz subject holds facts in columns (a state: capital, abbreviation, flower); a *task* is
one question direction over one subject (state -> capital) with a fixed wording. Each example
becomes a (prompt, answer) pair in SmolLM2's chat template: the user turn is the question with
four options (the gold answer and three other answers of the same task, seeded), the answer is
the gold option + ``<|im_end|>``. Tasks are split into train and held-out by *group* (the
subjects that share a question type, e.g. the capitals of Africa, Asia, Europe, the Americas
and Canada's provinces form one group), so a held-out task is a question type the model never
trained on, not only unseen facts.

Held-out accuracy is multiple choice by the lowest summed loss of each option's tokens after
the prompt (BIG-bench's and lm-eval's rank classification; also per character, "norm"): it
needs no decoding settings, is deterministic, and grades a 135M model where exact match of a
generated answer (with the quiz's spelling variants) would sit near zero; chance is 1/4.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import TokensieveError, UsageError
from .store import data_dir

DEB_PACKAGE, DEB_VERSION = "bsdgames", "2.17-29+b1"
DEB_SHA256_AMD64 = "cc92de974a1f66623a05ac0aed6dc790f682e5aac5205f0210294744d1532d10"
LICENCE = "BSD-3-Clause-style (The Regents of the University of California), Debian bsdgames"
INSTALLED_DIR = Path("/usr/share/games/bsdgames/quiz")
DEB_PREFIX = "./usr/share/games/bsdgames/quiz/"
MAX_DEB_BYTES = 16 << 20
MAX_QUIZ_FILE_BYTES = 1 << 20
MAX_LINE_CHARS = 2000
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # SmolLM2's
END = "<|im_end|>"
N_OPTIONS = 4


@dataclass(frozen=True)
class Task:
    """One question direction over one quiz subject: the answer in column ``answer`` to the
    question made from column ``question`` with ``template`` (``{q}``)."""

    name: str
    subject: str
    group: str
    question: int
    answer: int
    template: str


def _t(name, subject, group, q, a, template):
    return Task(name, subject, group, q, a, template)


TASKS = (
    _t("capital-africa", "africa", "capitals", 0, 1, "What is the capital of {q}?"),
    _t("capital-america", "america", "capitals", 0, 1, "What is the capital of {q}?"),
    _t("capital-asia", "asia", "capitals", 0, 1, "What is the capital of {q}?"),
    _t("capital-europe", "europe", "capitals", 0, 1, "What is the capital of {q}?"),
    _t("capital-province", "province", "capitals", 0, 1,
       "What is the capital of the Canadian province of {q}?"),
    _t("city-midearth", "midearth", "middle-earth", 0, 1,
       "In Tolkien's Middle-earth, what is the chief city of {q}?"),
    _t("state-capital", "state", "us-states", 0, 1, "What is the capital of the US state of {q}?"),
    _t("state-abbreviation", "state", "us-states", 0, 2,
       "What is the postal abbreviation of the US state of {q}?"),
    _t("state-flower", "state", "us-states", 0, 3, "What is the state flower of {q}?"),
    _t("element-name", "elements", "elements", 0, 3,
       "Which chemical element has the symbol {q}?"),
    _t("element-number", "elements", "elements", 3, 1, "What is the atomic number of {q}?"),
    _t("element-symbol", "elements", "elements", 3, 0, "What is the chemical symbol of {q}?"),
    _t("collective-noun", "collectives", "collectives", 0, 1,
       "What is the collective noun for a group of {q}?"),
    _t("animal-young", "babies", "animal-young", 0, 1, "A {q} is the young of which animal?"),
    _t("female-form", "sexes", "female-forms", 0, 1, "What is the female counterpart of {q}?"),
    _t("opposite", "posneg", "opposites", 0, 1, "What is the opposite of \"{q}\"?"),
    _t("latin-word", "latin", "latin", 0, 1, "What does the Latin word \"{q}\" mean in English?"),
    _t("flower-meaning", "flowers", "flowers", 0, 1,
       "In the Victorian language of flowers, what does the {q} mean?"),
    _t("morse-code", "morse", "morse", 0, 1, "What is the Morse code for {q}?"),
    _t("president-successor", "pres", "presidents", 0, 3,
       "Who succeeded {q} as President of the United States?"),
    _t("president-vice", "pres", "presidents", 0, 2, "Who was vice president under {q}?"),
    _t("sovereign-successor", "sov", "sovereigns", 0, 2,
       "Who succeeded {q} on the English throne?"),
    _t("sovereign-century", "sov", "sovereigns", 0, 1,
       "In which century did {q} begin to reign in England?"),
    _t("inca-successor", "inca", "inca", 0, 1, "Which Inca ruler succeeded {q}?"),
    _t("zodiac-next", "chinese", "zodiac", 0, 1,
       "In the Chinese zodiac, which year follows the year of the {q}?"),
    _t("killer", "murders", "murders", 0, 1, "Who or what killed {q}?"),
    _t("shakespeare-next", "bard", "shakespeare", 0, 1,
       "Which line follows \"{q}\" in Shakespeare?"),
    _t("shakespeare-work", "bard", "shakespeare", 0, 2,
       "Which Shakespeare work has the line \"{q}\"?"),
    _t("shakespeare-speaker", "bard", "shakespeare", 0, 3,
       "Which Shakespeare character says \"{q}\"?"),
    _t("poem-next", "poetry", "poetry", 0, 1, "Which line of verse follows \"{q}\"?"),
    _t("poem-title", "poetry", "poetry", 0, 2, "Which poem has the line \"{q}\"?"),
    _t("poem-author", "poetry", "poetry", 0, 3, "Who wrote the line \"{q}\"?"),
    _t("arithmetic", "arith", "arithmetic", 0, 1, "Fill in the blank (...): {q}"),
    _t("multiplication", "mult", "arithmetic", 0, 1, "What is {q}?"),
    _t("sequence-easy", "seq-easy", "sequences", 0, 1,
       "Which number comes next in the sequence {q}?"),
    _t("sequence-hard", "seq-hard", "sequences", 0, 1,
       "Which number comes next in the sequence {q}?"),
    _t("locomotive", "locomotive", "locomotives", 0, 1,
       "What is the name of the {q} locomotive wheel arrangement?"),
)
SUBJECTS = tuple(sorted({t.subject for t in TASKS}))
GROUPS = tuple(sorted({t.group for t in TASKS}))
# sha256 over "name\0bytes\0" of every file in SUBJECTS, in sorted order (see quiz_digest)
QUIZ_SHA256 = "fc692a46522bd334369794b5c555959168bd714bbe53134b22235db37baf9807"


# --------------------------------------------------------------------------- the files

def quiz_digest(files: dict[str, bytes]) -> str:
    """The content pin of the quiz files of :data:`SUBJECTS` (missing ones count as absent)."""
    h = hashlib.sha256()
    for name in SUBJECTS:
        if name in files:
            h.update(name.encode() + b"\0" + files[name] + b"\0")
    return h.hexdigest()


def _read_folder(folder: Path) -> dict[str, bytes]:
    out = {}
    for name in SUBJECTS:
        p = folder / name
        if p.is_file() and p.stat().st_size <= MAX_QUIZ_FILE_BYTES:
            out[name] = p.read_bytes()
    return out


def deb_members(path: Path) -> dict[str, bytes]:
    """The quiz files of :data:`SUBJECTS` inside a ``.deb`` (an ``ar`` archive whose
    ``data.tar.xz`` / ``.gz`` holds the files), read without dpkg."""
    if path.stat().st_size > MAX_DEB_BYTES:
        raise TokensieveError(f"{path} is over {MAX_DEB_BYTES} bytes: not the pinned package")
    blob = path.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise TokensieveError(f"{path} is not a Debian package (no ar header)")
    pos, data = 8, None
    while pos + 60 <= len(blob):
        header = blob[pos:pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise TokensieveError(f"{path}: a damaged ar member header") from None
        body = blob[pos + 60:pos + 60 + size]
        if name.startswith("data.tar"):
            data = (name, body)
            break
        pos += 60 + size + (size & 1)
    if data is None:
        raise TokensieveError(f"{path} has no data.tar member")
    name, body = data
    mode = {"data.tar.xz": "r:xz", "data.tar.gz": "r:gz", "data.tar": "r:"}.get(name)
    if mode is None:
        raise TokensieveError(f"{path}: {name} is compressed in a way Python cannot read")
    out = {}
    with tarfile.open(fileobj=io.BytesIO(body), mode=mode) as tar:
        for m in tar:
            if m.isfile() and m.name.startswith(DEB_PREFIX):
                sub = m.name[len(DEB_PREFIX):]
                if sub in SUBJECTS and m.size <= MAX_QUIZ_FILE_BYTES:
                    out[sub] = tar.extractfile(m).read()
    return out


def _apt_download(folder: Path) -> Path:
    """``apt-get download bsdgames=VERSION`` into ``folder``: the ordinary Debian client,
    from the mirror apt is configured with."""
    apt = shutil.which("apt-get")
    if apt is None:
        raise TokensieveError("apt-get is not on this machine")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        run = subprocess.run([apt, "download", f"{DEB_PACKAGE}={DEB_VERSION}"], cwd=folder,
                             capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        raise TokensieveError("apt-get download timed out") from None
    found = sorted(folder.glob(f"{DEB_PACKAGE}_{DEB_VERSION.replace(':', '%3a')}_*.deb"))
    if run.returncode or not found:
        last = (run.stderr or run.stdout).strip().splitlines()
        raise TokensieveError(f"apt-get download failed ({last[-1] if last else run.returncode})")
    return found[0]


def quiz_files(*, download: bool = True) -> dict[str, bytes]:
    """The pinned quiz files (name -> bytes): an installed ``bsdgames`` (or the folder in
    ``$TOKENSIEVE_QUIZ_DIR``) when its files match :data:`QUIZ_SHA256`, else the pinned
    ``.deb`` in the downloads folder, fetched with apt-get when missing (``download``)."""
    env = os.environ.get("TOKENSIEVE_QUIZ_DIR")
    folder = Path(env).expanduser() if env else INSTALLED_DIR
    if folder.is_dir():
        files = _read_folder(folder)
        if quiz_digest(files) == QUIZ_SHA256:
            return files
    downloads = data_dir() / "downloads"
    debs = sorted(downloads.glob(f"{DEB_PACKAGE}_{DEB_VERSION}_*.deb")) \
        if downloads.is_dir() else []
    how = f"apt-get install {DEB_PACKAGE} (version {DEB_VERSION}), or put " \
          f"{DEB_PACKAGE}_{DEB_VERSION}_amd64.deb in {downloads}"
    if not debs:
        if not download:
            raise TokensieveError(f"the quiz data is not here; {how}")
        try:
            debs = [_apt_download(downloads)]
        except TokensieveError as exc:
            raise TokensieveError(f"could not fetch {DEB_PACKAGE} {DEB_VERSION}: {exc}; "
                                  f"{how}") from None
    files = deb_members(debs[0])
    if quiz_digest(files) != QUIZ_SHA256:
        raise TokensieveError(f"{debs[0]} does not hold the pinned quiz data (sha256 differs "
                              f"from {QUIZ_SHA256[:12]}...); delete it to fetch it again")
    return files


# --------------------------------------------------------------------------- the syntax

def _close(s: str, i: int) -> int:
    """Index of the bracket closing the one at ``s[i]`` (-1 if none), skipping escapes."""
    pairs = {"{": "}", "[": "]"}
    stack, j = [pairs[s[i]]], i + 1
    while j < len(s):
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c in pairs:
            stack.append(pairs[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if not stack:
                return j
        j += 1
    return -1


def split_top(s: str, sep: str) -> list[str]:
    """``s`` split on ``sep`` outside brackets and not escaped."""
    parts, start, j = [], 0, 0
    while j < len(s):
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c in "{[":
            end = _close(s, j)
            j = end + 1 if end > 0 else j + 1
            continue
        if c == sep:
            parts.append(s[start:j])
            start = j + 1
        j += 1
    parts.append(s[start:])
    return parts


def render(pattern: str) -> str:
    """The canonical text of a quiz pattern: the first of ``a|b``, optional ``{x}`` parts
    included (except a parenthesised hint such as ``{(integers)}``), escapes resolved,
    spaces collapsed, control characters dropped."""
    text = "".join(c for c in _render(pattern) if c >= " " or c in "\t\n")
    return " ".join(text.split())


def _render(pattern: str) -> str:
    p = split_top(pattern, "|")[0]
    out, i = [], 0
    while i < len(p):
        c = p[i]
        if c == "\\" and i + 1 < len(p):
            out.append(p[i + 1])
            i += 2
            continue
        if c in "{[":
            end = _close(p, i)
            if end > 0:
                inner = p[i + 1:end]
                if not (c == "{" and inner.strip().startswith("(")):
                    out.append(_render(inner))
                i = end + 1
                continue
        out.append(c)
        i += 1
    return "".join(out)


def variants(pattern: str) -> set[str]:
    """The canonical texts of the top-level alternatives (lower case): what counts as the
    same answer when choosing distractors."""
    return {render(a).lower() for a in split_top(pattern, "|") if render(a)}


def parse_quiz(text: str) -> list[list[str]]:
    """The rows (lists of column patterns) of a quiz data file: a line ending in ``\\``
    continues on the next; columns split on ``:`` outside brackets, not escaped."""
    rows, buf = [], ""
    for line in text.splitlines():
        line = line.rstrip("\r")
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:   # an unescaped backslash at the end: the line goes on
            buf += line[:-1]
            continue
        line, buf = buf + line, ""
        if line.strip() and len(line) <= MAX_LINE_CHARS:
            rows.append(split_top(line, ":"))
    if buf.strip() and len(buf) <= MAX_LINE_CHARS:
        rows.append(split_top(buf, ":"))
    return rows


# --------------------------------------------------------------------------- the set

@dataclass
class SFTExample:
    """One example: ``prompt`` (the chat template up to the assistant turn), ``answer`` (the
    gold option + ``<|im_end|>``), the options and the index of the gold one; ``user``: the
    user turn alone."""

    id: str
    task: str
    group: str
    prompt: str
    answer: str
    choices: list[str]
    gold: int
    user: str = ""


@dataclass
class SFTSet:
    train: list[SFTExample]
    held_out: list[SFTExample]
    train_tasks: list[str]
    held_out_tasks: list[str]
    train_groups: list[str]
    held_out_groups: list[str]
    source: dict = field(default_factory=dict)

    def counts(self) -> dict:
        return {"train": len(self.train), "held_out": len(self.held_out),
                "train_tasks": len(self.train_tasks), "held_out_tasks": len(self.held_out_tasks)}


def chat_prompt(user: str, system: str = SYSTEM) -> str:
    """SmolLM2's chat template (ChatML) up to the assistant's turn."""
    return (f"<|im_start|>system\n{system}{END}\n<|im_start|>user\n{user}{END}\n"
            "<|im_start|>assistant\n")


def task_examples(task: Task, rows: list[list[str]], *, seed: int, max_examples: int,
                  max_chars: int) -> list[SFTExample]:
    """Up to ``max_examples`` examples of ``task`` (a seeded sample), each with the gold
    answer and three distractors: other answers of the task, none a variant of the gold."""
    facts = []
    for k, row in enumerate(rows):
        if max(task.question, task.answer) < len(row):
            q, a = render(row[task.question]), render(row[task.answer])
            if q and a:
                facts.append((k, q, a, variants(row[task.answer]) | {a.lower()}))
    answers = sorted({a for _, _, a, _ in facts})
    rng = random.Random(f"sft:{task.name}:{seed}")
    out = []
    for k, q, a, same in facts:
        pool = [x for x in answers if x.lower() not in same]
        if len(pool) < N_OPTIONS - 1:
            continue
        choices = rng.sample(pool, N_OPTIONS - 1) + [a]
        rng.shuffle(choices)
        options = "\n".join(f"- {c}" for c in choices)
        user = (f"{task.template.format(q=q)}\n\nOptions:\n{options}\n\n"
                "Answer with one of the options.")
        if len(user) <= max_chars:
            out.append(SFTExample(f"{task.name}/{k}", task.name, task.group, chat_prompt(user),
                                  a + END, choices, choices.index(a), user))
    rng.shuffle(out)
    return out[:max_examples]


def split_groups(groups, seed: int, n_held_out: int) -> tuple[list[str], list[str]]:
    """(train groups, held-out groups): a seeded draw of ``n_held_out`` held-out groups."""
    groups = sorted(set(groups))
    if isinstance(n_held_out, bool) or not isinstance(n_held_out, int) or \
            not 1 <= n_held_out < len(groups):
        raise UsageError(f"n_held_out must be a whole number between 1 and {len(groups) - 1} "
                         f"for {len(groups)} task groups, not {n_held_out!r}")
    held = sorted(random.Random(f"sft-split:{seed}").sample(groups, n_held_out))
    return [g for g in groups if g not in held], held


def build_sft(*, seed: int = 0, n_held_out: int = 5, max_per_task: int = 200,
              max_chars: int = 1500, files: dict[str, bytes] | None = None) -> SFTSet:
    """The SFT set: the examples of the train groups' tasks (in a seeded order mixing them)
    and of the held-out groups' tasks. ``files``: quiz files to use instead of the pinned
    ones (tests)."""
    if isinstance(max_per_task, bool) or not isinstance(max_per_task, int) or \
            not 1 <= max_per_task <= 10000 or not 100 <= max_chars <= 20000:
        raise UsageError(f"max_per_task must be in [1, 10000] and max_chars in [100, 20000], "
                         f"not {max_per_task!r} and {max_chars!r}")
    files = quiz_files() if files is None else files
    rows = {name: parse_quiz(blob.decode("utf-8", "replace")) for name, blob in files.items()}
    examples = {t.name: task_examples(t, rows[t.subject], seed=seed, max_examples=max_per_task,
                                      max_chars=max_chars)
                for t in TASKS if t.subject in rows}
    examples = {n: ex for n, ex in examples.items() if ex}
    group_of = {t.name: t.group for t in TASKS}
    groups = sorted({group_of[n] for n in examples})
    if len(groups) < 2:
        raise TokensieveError(f"only {len(groups)} quiz task groups have usable examples; "
                              "the quiz files are incomplete")
    train_groups, held_groups = split_groups(groups, seed, n_held_out)
    train_tasks = sorted(n for n in examples if group_of[n] in train_groups)
    held_tasks = sorted(n for n in examples if group_of[n] in held_groups)
    train = [e for n in train_tasks for e in examples[n]]
    random.Random(f"sft-order:{seed}").shuffle(train)
    return SFTSet(train, [e for n in held_tasks for e in examples[n]], train_tasks, held_tasks,
                  train_groups, held_groups,
                  {"package": f"debian:{DEB_PACKAGE}={DEB_VERSION}", "licence": LICENCE,
                   "quiz_sha256": quiz_digest(files)})


# --------------------------------------------------------------------------- scoring

def choose(option_losses) -> int:
    """The chosen option: the lowest loss (the first of equal ones)."""
    losses = [float(x) for x in option_losses]
    if not losses:
        raise UsageError("no option losses to choose from")
    return min(range(len(losses)), key=lambda i: (losses[i], i))


def accuracy(examples: list[SFTExample], option_losses: list) -> dict:
    """Accuracy of the lowest-loss choices (summed loss; and ``accuracy_norm``: loss per
    character of the option), overall, per task, and the chance level."""
    if len(examples) != len(option_losses):
        raise UsageError(f"{len(examples)} examples but {len(option_losses)} loss lists")
    per: dict[str, list[int]] = {}
    norm: list[int] = []
    for ex, losses in zip(examples, option_losses, strict=True):
        if len(losses) != len(ex.choices):
            raise UsageError(f"{ex.id}: {len(ex.choices)} options but {len(losses)} losses")
        per.setdefault(ex.task, []).append(int(choose(losses) == ex.gold))
        per_char = [x / max(1, len(c)) for x, c in zip(losses, ex.choices, strict=True)]
        norm.append(int(choose(per_char) == ex.gold))
    hits = [h for v in per.values() for h in v]
    n = max(len(examples), 1)
    return {"accuracy": sum(hits) / n if hits else 0.0, "accuracy_norm": sum(norm) / n,
            "chance": sum(1 / len(e.choices) for e in examples) / n, "n": len(hits),
            "per_task": {t: sum(v) / len(v) for t, v in sorted(per.items())}}


def option_losses(model, tokenizer, example: SFTExample) -> list[float]:
    """Summed token loss of each option (+ ``<|im_end|>``) after the example's prompt, in one
    batch (right padding)."""
    import torch
    import torch.nn.functional as F

    prompt = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    conts = [tokenizer(c + END, add_special_tokens=False)["input_ids"] for c in example.choices]
    width = len(prompt) + max(len(c) for c in conts)
    ids = torch.zeros((len(conts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, c in enumerate(conts):
        ids[i, :len(prompt) + len(c)] = torch.tensor(prompt + c)
        mask[i, :len(prompt) + len(c)] = 1
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    out = []
    for i, c in enumerate(conts):
        rows = logits[i, len(prompt) - 1:len(prompt) - 1 + len(c)].float()
        out.append(float(F.cross_entropy(rows, torch.tensor(c, device=rows.device),
                                         reduction="sum")))
    return out


def to_jsonl(examples: list[SFTExample]) -> str:
    """One JSON object per example (prompt, answer, ...): input for ``tokensieve train
    select --prompt-field prompt --response-field answer``."""
    return "".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in examples)
