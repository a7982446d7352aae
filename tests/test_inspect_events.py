"""inspect.events: a planted anomaly in a repetitive sequence is flagged first, event scores
are the tokens' surprisal given all earlier events, the template baseline masks IDs, input
formats and bad input, the CLI."""

import json

import numpy as np
import pytest

from tokensieve import InputError, UsageError, cli
from tokensieve import inspect as ins
from tokensieve.inspect.events import (
    EventsResult,
    parse_events,
    robust_z,
    spearman,
    template,
    template_rarity,
)
from tokensieve.scoring.surprisal import text_surprisal

ANOMALY = "kernel: Out of memory: Killed process 4242 (postgres) total-vm:8123456kB"


def sequence(n=40, at=30):
    lines = [f"10:{i:02d}:00 INFO worker-{i % 3} heartbeat ok seq={1000 + i}" for i in range(n)]
    lines.insert(at, f"10:{at:02d}:30 ERROR {ANOMALY}")
    return lines


@pytest.fixture(scope="module")
def planted(lm):
    return ins.events(sequence(), lm, progress=False)


# ------------------------------------------------------------------------------ flagging


@pytest.mark.model
def test_planted_anomaly_is_flagged_first(planted):
    r = planted
    assert r.flagged[0] == 30 and r.ranking()[0] == 30
    assert r.events[30].flagged and r.events[30].z > 3.5
    assert r.ranking("total")[0] == 30
    assert r.ranking("rarity")[0] == 30  # the baseline finds it too: its template is unique
    assert r.events[0].warmup and 0 not in r.flagged  # no history: never flagged
    # the repeats are predictable: most are safe to drop, the anomaly is not
    assert 30 not in r.safe_to_drop and len(r.safe_to_drop) > 30
    tokens = np.array([e.tokens for e in r.events])
    assert r.saved_events == pytest.approx(len(r.safe_to_drop) / len(r.events))
    assert r.saved_tokens == pytest.approx(tokens[r.safe_to_drop].sum() / tokens.sum())
    assert -1 <= r.spearman <= 1


@pytest.mark.model
def test_planted_anomaly_with_a_sliding_window_and_top_k(lm):
    lines = sequence(60, 45)
    n = len(lm.tokenizer("\n".join(lines), add_special_tokens=False)["input_ids"])
    assert n > 4 * 128  # several windows: history comes from the carried overlap
    r = ins.events(lines, lm, top=3, window=128, overlap=64, progress=False)
    assert r.flagged[0] == 45 and len(r.flagged) == 3 and r.rule == "top 3"


def test_empty_events_stay_out_of_the_median_and_mad(tiny):
    """Events with no token (empty strings) carry nothing: they are not in the median / MAD
    (before, four empty events of ten pulled the median to the low scores and flattened every
    z-score), get z = 0, and are never flagged, even by a top-k larger than the real events."""
    real = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota", "kappa", "lambda mu",
            "nu xi omicron"]
    lines = real[:2] + ["", ""] + real[2:4] + ["", ""] + real[4:]
    r = ins.events(lines, tiny, warmup=0, progress=False)
    empty = [i for i, t in enumerate(lines) if not t]
    full = [i for i, t in enumerate(lines) if t]
    assert all(r.events[i].tokens == 0 for i in empty)
    means = np.array([r.events[i].mean for i in full])
    z, med, mad = robust_z(means)
    assert r.median == pytest.approx(med) and r.mad == pytest.approx(mad)
    assert [r.events[i].z for i in full] == pytest.approx(list(z))
    assert all(r.events[i].z == 0 for i in empty)
    top = ins.events(lines, tiny, warmup=0, top=len(lines), progress=False)
    assert sorted(top.flagged) == full


def test_event_scores_are_the_tokens_of_each_line(tiny):
    model, tok = tiny
    lines = ["alpha beta gamma", "  indented delta", "x", "café 你好 épsilon"]
    r = ins.events(lines, tiny, warmup=0, progress=False)
    joined = "\n".join(lines)
    ts = text_surprisal(model, tok, joined, progress=False)
    newline = np.array([joined[a:b].strip() == "" and "\n" in joined[a:b]
                        for a, b in ts.offsets])
    # every token but the line breaks belongs to exactly one event
    assert sum(e.tokens for e in r.events) == int((~newline).sum())
    assert sum(e.total for e in r.events) == pytest.approx(float(ts.surprisal[~newline].sum()),
                                                           rel=1e-5)
    for e in r.events:
        assert e.mean == pytest.approx(e.total / e.tokens)
        assert e.text == lines[e.index]


# ---------------------------------------------------------------------- template baseline


def test_template_masks_numbers_ids_hex_paths_hosts():
    line = ("2024-01-15 10:42:07 sshd[4242]: session Z9K6-4842 for user bob from 10.0.0.7 "
            "port 52211 req 0xdeadbeef trace deadbeefcafe file /var/log/app/x.log "
            "host db-3.internal.example.com uuid 123e4567-e89b-12d3-a456-426614174000 ok")
    assert template(line) == ("<*> <*> sshd[<*>]: session <*> for user bob from <*> port <*> "
                              "req <*> trace <*> file <*> host <*> uuid <*> ok")
    assert template("GET /images/photos/455.jpg HTTP/1.1 200") == template(
        "GET  /images/nav/tab.gif HTTP/1.1 404")
    temps, rarity = template_rarity(["a 1", "a 2", "a 3", "b x"])
    assert temps[:3] == ["a <*>"] * 3 and rarity[3] == pytest.approx(np.log(4))
    assert rarity[0] == pytest.approx(-np.log(3 / 4))


def test_spearman_and_robust_z():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)  # ties averaged
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    z, med, mad = robust_z(np.array([1.0, 1.1, 0.9, 1.0, 10.0]))
    assert med == 1.0 and mad == pytest.approx(0.1)
    assert z[4] == pytest.approx(9.0 / 0.14826) and abs(z[0]) < 1e-9
    z, _, mad = robust_z(np.array([0.0, 0.0, 0.0, 0.0, 5.0]))  # MAD 0: mean deviation instead
    assert mad == 0 and z[4] > 3.5
    assert (robust_z(np.ones(4))[0] == 0).all()


# --------------------------------------------------------------------------------- input


def test_parse_lines_and_jsonl():
    assert parse_events("a\n\n  b  \n") == [{"text": "a", "time": None},
                                             {"text": "  b  ", "time": None}]
    jl = '{"text": "boot", "time": "2024-01-01T00:00:00"}\n\n{"text": "login", "user": 3}\n'
    assert parse_events(jl) == [{"text": "boot", "time": "2024-01-01T00:00:00"},
                                {"text": "login", "time": None}]
    assert parse_events('{"text": "x"}', format="lines") == [{"text": '{"text": "x"}',
                                                             "time": None}]
    assert parse_events("{not json} still a line")[0]["text"].startswith("{not")


def test_parse_splits_only_on_line_feeds():
    """U+2028, U+0085, form feed, vertical tab ... inside an event are part of it (before,
    str.splitlines cut a JSONL string at a raw U+2028 into fragments scored as lines);
    CRLF ends a line like LF, and a byte-order mark is not part of the first event."""
    odd = "a\u2028b", "c\x85d", "e\x0cf\x0bg\x1ch\u2029i"
    jl = "".join(json.dumps({"text": t}, ensure_ascii=False) + end
                 for t, end in zip(odd, ("\n", "\r\n", "\n"), strict=True))
    assert "\u2028" in jl and "\\u2028" not in jl  # raw, as a JSON writer may leave it
    assert parse_events(jl) == [{"text": t, "time": None} for t in odd]
    assert parse_events("\ufeff" + jl)[0]["text"] == odd[0]
    lines = "one\x0ctwo\u2028three\r\n\r\nfour\x85five\n"
    assert parse_events(lines) == [{"text": "one\x0ctwo\u2028three", "time": None},
                                   {"text": "four\x85five", "time": None}]


@pytest.mark.parametrize("data, match", [
    ('{"text": "a"}\n{"msg": "no text"}\n', "line 2 of the input has no 'text' field"),
    ('{"text": "a"}\n{"text": 5}\n', "'text' must be a string"),
    ('{"text": "a"}\nnot json\n', "line 2 of the input is not valid JSON"),
    ('{"text": "a"}\n[1, 2]\n', "line 2 of the input is a list"),
    ("\n \n", "no events"),
])
def test_bad_jsonl_gets_one_line_error(data, match):
    with pytest.raises(InputError, match=match) as exc:
        parse_events(data)
    assert "\n" not in str(exc.value)


def test_bad_arguments(tiny):
    with pytest.raises(InputError, match="event 1 has no 'text'"):
        ins.events([{"text": "a"}, {"time": 3}], tiny)
    with pytest.raises(InputError, match="binary"):
        ins.events(b"a\x00b", tiny)
    with pytest.raises(InputError, match="no events"):
        ins.events([], tiny)
    with pytest.raises(InputError):
        ins.events("", tiny)
    with pytest.raises(UsageError, match="either top"):
        ins.events(["a", "b"], tiny, top=1, z=2.0)
    with pytest.raises(UsageError, match="top must be"):
        ins.events(["a", "b"], tiny, top=0)
    with pytest.raises(UsageError, match="score must be"):
        ins.events(["a", "b"], tiny, score="max")


def test_times_records_json_roundtrip_and_png(tiny, tmp_path):
    records = [{"text": f"tick {i}", "time": f"2024-01-01T00:00:{i:02d}"} for i in range(12)]
    records.append({"text": "disk /dev/sda1 failed with I/O error", "time": "2024-01-01T00:00:30"})
    r = ins.events(records, tiny, top=2, progress=False)
    assert r.events[-1].time == "2024-01-01T00:00:30"
    back = EventsResult.from_dict(json.loads(r.to_json()))
    assert back == r
    png = r.to_png(tmp_path / "e.png", mark=[12])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------- CLI


@pytest.mark.model
def test_cli_json_and_png(tmp_path, capsys):
    src = tmp_path / "events.log"
    src.write_text("\n".join(sequence()) + "\n")
    png = tmp_path / "e.png"
    assert cli.main(["inspect", "events", str(src), "--top", "2", "--json", "--png",
                     str(png)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["flagged"][0] == 30 and len(data["flagged"]) == 2
    assert len(data["events"]) == 41 and data["unit"] == "nats"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["inspect", "events", str(src), "--top", "2"]) == 0
    shown = capsys.readouterr().out
    assert "Most informative events" in shown and "10:30:30" in shown


def test_cli_bad_input_one_line(tmp_path, capsys):
    jl = tmp_path / "e.jsonl"
    jl.write_text('{"text": "a"}\n{"time": 1}\n')
    assert cli.main(["inspect", "events", str(jl)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"line 2 of {jl} has no 'text' field" in err
    binary = tmp_path / "b.log"
    binary.write_bytes(b"ok\n\x00\x00\n")
    assert cli.main(["inspect", "events", str(binary)]) == 1
    assert "binary" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: mutually exclusive options
        cli.main(["inspect", "events", str(jl), "--top", "1", "--z", "2"])
    assert exc.value.code == 2
