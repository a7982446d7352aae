"""``events``: which events of a sequence carry information (after "Quantifying surprise in
clinical care").

Each event (a log line, an event code, a user action) is scored by its surprise given
everything before it: the events are joined one per line and scored once with the
compressor's sliding-window surprisal (:func:`tokensieve.scoring.surprisal.text_surprisal`), so
every token is conditioned on the events before it; the event boundaries then split the
tokens into events (mean and total nats per event). The most informative events are flagged
(top-k, or a robust z-score above a threshold: median and MAD), the predictable ones are
listed as safe to drop, and a model-free baseline (rarity of the event's template after
masking numbers, IDs, hex, paths and host names) is ranked side by side (Spearman)."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import regex

from ..errors import InputError, UsageError
from ..spans import NUMBER_OR_ID

SCORES = ("mean", "total")
DEFAULT_Z = 3.5  # Iglewicz & Hoaglin's cut-off for the modified z-score
DEFAULT_DROP_BELOW = 0.5  # nats per token: the LM gives the average token p > 0.6

# What the template baseline masks, most specific first: URLs, paths, e-mail and host names,
# the project's one number / ID pattern (spans.py: also UUIDs, 0x1f, v2.3.1), then hex runs
# without a digit (deadbeef). Each match becomes <*>.
_MASKS = regex.compile(
    r"[a-zA-Z][\w+.-]*://\S+"  # URL
    r"|(?<![\w/])(?:~|\.{1,2})?(?:/[\w.%@+=,~-]+)+/?(?:\?\S*)?"  # path (with a query)
    r"|\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"  # e-mail
    r"|\b(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b(?=[\s\"':,;)\]]|$)"  # host name
    r"|" + NUMBER_OR_ID.pattern
    + r"|\b[0-9a-fA-F]{8,}\b",  # hex
    regex.V0,
)
_SPACES = regex.compile(r"\s+")


def template(text: str) -> str:
    """The event with numbers, IDs, hex, paths, URLs, e-mail and host names masked as
    ``<*>`` and runs of whitespace collapsed: events of one kind share a template."""
    return _SPACES.sub(" ", _MASKS.sub("<*>", text)).strip()


@dataclass
class Event:
    """One scored event. ``total`` / ``mean``: surprisal of its tokens in nats given every
    event before it; ``z``: robust z-score of the ranking score; ``rarity``: -ln of the
    share of events with the same template (the model-free baseline)."""

    index: int
    text: str
    time: Any
    tokens: int
    total: float
    mean: float
    z: float
    template: str
    rarity: float
    flagged: bool = False
    drop: bool = False
    warmup: bool = False


@dataclass
class EventsResult:
    """What :func:`events` returns. ``flagged``: indices of the informative events, most
    surprising first; ``safe_to_drop``: indices of events the model predicts well (mean below
    ``drop_below`` nats per token), with the share of events and of tokens dropping them saves;
    ``spearman``: rank agreement of the LM score and the template rarity."""

    events: list[Event]
    model: str
    score: str
    rule: str
    median: float
    mad: float
    flagged: list[int]
    safe_to_drop: list[int]
    drop_below: float
    saved_events: float
    saved_tokens: float
    spearman: float
    templates: int
    notes: list[str] = field(default_factory=list)

    def scores(self, which: str | None = None) -> np.ndarray:
        """The ranking score of every event ('mean', 'total' or 'rarity'; default: ``score``)."""
        which = which or self.score
        if which not in (*SCORES, "rarity", "z"):
            raise UsageError(f"unknown score {which!r}; use mean, total, rarity or z.")
        return np.array([getattr(e, which) for e in self.events], dtype=float)

    def ranking(self, which: str | None = None) -> list[int]:
        """Event indices from the most to the least informative under ``which``; the
        warm-up events (no history yet) are left out of the LM rankings."""
        s = self.scores(which)
        if which != "rarity":
            s = np.where([e.warmup for e in self.events], -np.inf, s)
        return [int(i) for i in np.argsort(-s, kind="stable")
                if which == "rarity" or not self.events[i].warmup]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["unit"] = "nats"
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EventsResult:
        """The result back from :meth:`to_dict` (or the CLI's ``--json``)."""
        data = {k: v for k, v in data.items() if k != "unit"}
        data["events"] = [Event(**e) for e in data["events"]]
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=2, default=str)
        if path is not None:
            from .render import writable

            writable(path, "JSON").write_text(text + "\n", encoding="utf-8")
        return text

    def summary(self) -> str:
        n = len(self.events)
        return (f"{n} events, {sum(e.tokens for e in self.events)} tokens under {self.model}; "
                f"{len(self.flagged)} flagged ({self.rule}); {len(self.safe_to_drop)} safe to "
                f"drop (mean < {self.drop_below:g} nats/token): saves {self.saved_events:.0%} "
                f"of events, {self.saved_tokens:.0%} of tokens; {self.templates} templates, "
                f"Spearman(LM {self.score}, template rarity) = {self.spearman:.2f}")

    def print(self, console=None, limit: int = 20) -> None:
        """A table of the flagged events and of a few of the ones safe to drop."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console(highlight=False)
        table = Table(title="Most informative events", title_justify="left")
        for col in ("#", "time", f"{self.score} nats", "z", "rarity", "event"):
            table.add_column(col, overflow="fold")
        for i in self.flagged[:limit]:
            e = self.events[i]
            table.add_row(str(e.index), "" if e.time is None else str(e.time),
                          f"{getattr(e, self.score):.2f}", f"{e.z:.1f}", f"{e.rarity:.2f}",
                          _clip(e.text, 100))
        console.print(table)
        if self.safe_to_drop:
            low = sorted(self.safe_to_drop, key=lambda i: self.events[i].mean)[:5]
            console.print("Safe to drop, e.g.: " + "; ".join(
                f"#{i} {_clip(self.events[i].text, 60)!r} ({self.events[i].mean:.2f})"
                for i in low), markup=False, style="dim")
        console.print(self.summary(), markup=False, style="dim")

    def to_png(self, path: str | Path, *, dpi: int = 120, mark: list[int] | None = None,
               title: str | None = None) -> Path:
        """A PNG of event scores over time (or over the event index when times are missing):
        the LM score with the flagged events in red, the drop line, and the template rarity
        below. ``mark``: indices to ring (e.g. known anomalies)."""
        from .render import pyplot, save, writable

        target = writable(path, "PNG")
        plt = pyplot()
        x, xlabel = _time_axis(self.events)
        s, r = self.scores(), self.scores("rarity")
        flagged = np.array(self.flagged, dtype=int)
        drop = np.array(self.safe_to_drop, dtype=int)
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 5.6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
        ax.scatter(x, s, s=6, color="#6b8fb3", label="event", zorder=2)
        if len(drop):
            ax.scatter(x[drop], s[drop], s=6, color="#bdbdbd", label="safe to drop", zorder=2)
        warm = np.array([e.index for e in self.events if e.warmup], dtype=int)
        if len(warm):
            ax.scatter(x[warm], s[warm], s=14, facecolors="none", edgecolors="#6b8fb3",
                       label="warm-up (not ranked)", zorder=2)
        if len(flagged):
            ax.scatter(x[flagged], s[flagged], s=22, color="#d7301f", label="flagged", zorder=3)
        if self.score == "mean":
            ax.axhline(self.drop_below, color="#999", lw=0.8, ls=":")
        if mark:
            m = np.array(mark, dtype=int)
            for a, vals in ((ax, s), (ax2, r)):
                a.scatter(x[m], vals[m], s=90, facecolors="none", edgecolors="black",
                          linewidths=1.2, label="marked" if a is ax else None, zorder=4)
        unit = "nats/token" if self.score == "mean" else "nats"
        ax.set_ylabel(f"LM surprisal, {self.score}\n({unit})")
        ax.set_title(title or f"Event surprise under {self.model} ({self.rule})")
        ax.legend(loc="best", fontsize=8, ncol=2, framealpha=0.7)
        ax2.scatter(x, r, s=6, color="#74a57f")
        ax2.set_ylabel("template rarity\n(-ln share)")
        ax2.set_xlabel(xlabel)
        ax2.set_title(f"model-free baseline: template rarity (Spearman with the LM score "
                      f"{self.spearman:.2f})", fontsize=10)
        return save(fig, target, dpi)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _parse_time(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _time_axis(events: list[Event]):
    times = [_parse_time(e.time) for e in events]
    if events and all(t is not None for t in times):
        if all(isinstance(e.time, str) for e in events):
            from datetime import UTC

            return (np.array([datetime.fromtimestamp(t, UTC) for t in times], dtype=object),
                    "time (UTC)")
        return np.array(times, dtype=float), "time"
    return np.arange(len(events)), "event index"


# -------------------------------------------------------------------------------- input


def parse_events(data: str, *, name: str = "the input", format: str = "auto"
                 ) -> list[dict[str, Any]]:
    """Records ``{"text": ..., "time": ...}`` from one event per line (blank lines skipped) or
    from JSONL with a ``text`` field and an optional ``time``. ``format``: 'auto' (JSONL when
    the first non-blank line is a JSON object), 'lines' or 'jsonl'. Lines end at LF or CRLF
    only: U+2028, U+0085, form feeds ... belong to the event (str.splitlines would cut it)."""
    if format not in ("auto", "lines", "jsonl"):
        raise UsageError(f"format must be auto, lines or jsonl, got {format!r}.")
    lines = [line.removesuffix("\r") for line in data.removeprefix("\ufeff").split("\n")]
    numbered = [(k + 1, line) for k, line in enumerate(lines) if line.strip()]
    if not numbered:
        raise InputError(f"{name} holds no events (it is empty or blank); pass one event per "
                         "line, or JSONL with a 'text' field.")
    if format == "auto":
        first = numbered[0][1].strip()
        format = "lines"
        if first.startswith("{"):
            try:
                format = "jsonl" if isinstance(json.loads(first), dict) else "lines"
            except ValueError:
                format = "lines"
    if format == "lines":
        return [{"text": line, "time": None} for _, line in numbered]
    records = []
    for k, line in numbered:
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise InputError(f"line {k} of {name} is not valid JSON ({exc.msg}); every line of "
                             "a JSONL file must be one JSON object.") from None
        records.append(_record(obj, f"line {k} of {name}"))
    return records


def _record(obj: Any, where: str) -> dict[str, Any]:
    if isinstance(obj, str):
        return {"text": obj, "time": None}
    if not isinstance(obj, dict):
        raise InputError(f"{where} is a {type(obj).__name__}, not an event; give a string or an "
                         "object with a 'text' field.")
    if "text" not in obj:
        raise InputError(f"{where} has no 'text' field (keys: {', '.join(map(str, obj)) or 'none'}"
                         "); every event needs {\"text\": ...} and may have a \"time\".")
    text = obj["text"]
    if not isinstance(text, str):
        raise InputError(f"{where}: 'text' must be a string, got {type(text).__name__}.")
    return {"text": text, "time": obj.get("time")}


def _records(source: Any) -> list[dict[str, Any]]:
    if isinstance(source, bytes):
        from .surprise import check_text

        source = check_text(source, "the events")
    if isinstance(source, str):
        if "\x00" in source:
            raise InputError("the events contain NUL characters, so they look binary; pass text.")
        return parse_events(source, name="the events")
    if isinstance(source, dict) or not hasattr(source, "__iter__"):
        raise InputError(f"events must be a str (one event per line), a list of str or a list "
                         f"of {{'text': ..., 'time': ...}} records, got {type(source).__name__}.")
    records = [_record(obj, f"event {k}") for k, obj in enumerate(source)]
    if not records:
        raise InputError("no events given; pass at least one event.")
    return records


# ------------------------------------------------------------------------------ scoring


def robust_z(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(z, median, MAD): z = (x - median) / (1.4826 MAD), the MAD scaled to the standard
    deviation of a normal; when more than half the values are equal (MAD = 0) the mean
    absolute deviation (x 1.2533) stands in, and z = 0 if every value is equal."""
    values = np.asarray(values, dtype=float)
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med)))
    return _z_against(values, values), med, mad


def _z_against(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Robust z-scores of ``values`` with the median and spread of ``reference``."""
    med = float(np.median(reference))
    scale = 1.4826 * float(np.median(np.abs(reference - med)))
    if scale <= 1e-12:
        scale = 1.2533 * float(np.mean(np.abs(reference - med)))
    if scale <= 1e-12:
        return np.zeros_like(values, dtype=float)
    return (np.asarray(values, dtype=float) - med) / scale


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=float)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation (ties averaged); nan when either side is constant."""
    ra, rb = _ranks(np.asarray(a, dtype=float)), _ranks(np.asarray(b, dtype=float))
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def template_rarity(texts: list[str]) -> tuple[list[str], np.ndarray]:
    """Each event's template and its rarity -ln(events with that template / events)."""
    temps = [template(t) for t in texts]
    counts = Counter(temps)
    n = len(texts)
    return temps, np.array([-math.log(counts[t] / n) for t in temps])


def events(
    source: Any,
    model: Any = "default",
    *,
    top: int | None = None,
    z: float | None = None,
    score: str = "mean",
    drop_below: float = DEFAULT_DROP_BELOW,
    warmup: int = 1,
    window: int = 1024,
    overlap: int = 256,
    device: str = "cpu",
    dtype: str = "float32",
    progress: bool | None = None,
) -> EventsResult:
    """Score every event of ``source`` by its surprise given the events before it.

    ``source``: a str with one event per line (or JSONL records with ``text`` and optional
    ``time``), a list of str, or a list of ``{"text": ..., "time": ...}``. ``model`` as in
    :func:`tokensieve.inspect.surprise`. The events are joined with newlines and scored in
    windows of ``window`` tokens, each carrying at least ``overlap`` tokens of history.
    ``score``: rank by the 'mean' (default: nats per token) or 'total' surprisal of an event.
    Flag the ``top`` highest, or (default) those whose robust z-score exceeds ``z``
    (default 3.5). Events whose mean surprisal is below ``drop_below`` nats per token, and
    that are not flagged, are listed as safe to drop. The first ``warmup`` events have no
    history to be surprised against: they are scored but neither flagged nor dropped."""
    import torch

    from ..scoring.lm import resolve_causal_lm
    from ..scoring.surprisal import text_surprisal
    from ..scoring.units import reduce_units, token_units

    if score not in SCORES:
        raise UsageError(f"score must be one of {', '.join(SCORES)}, got {score!r}.")
    if top is not None and z is not None:
        raise UsageError("give either top (a count) or z (a threshold), not both.")
    if top is not None and (isinstance(top, bool) or int(top) != top or top < 1):
        raise UsageError(f"top must be a whole number >= 1, got {top!r}.")
    if z is not None and not math.isfinite(float(z)):
        raise UsageError(f"z must be a finite number, got {z!r}.")
    if isinstance(warmup, bool) or int(warmup) != warmup or warmup < 0:
        raise UsageError(f"warmup must be a whole number >= 0, got {warmup!r}.")
    if window < 64 or not 0 <= overlap < window:
        raise UsageError(f"window must be >= 64 and 0 <= overlap < window, got window={window}, "
                         f"overlap={overlap}.")
    records = _records(source)
    texts = [r["text"] for r in records]
    if not any(t.strip() for t in texts):
        raise InputError("every event is empty; pass events with some text.")
    lm, tokenizer, label = resolve_causal_lm(model, device=device, dtype=dtype,
                                             what="inspect events")

    joined = "\n".join(texts)
    spans = np.zeros((len(texts), 2), dtype=np.int64)
    pos = 0
    for i, t in enumerate(texts):
        spans[i] = (pos, pos + len(t))
        pos += len(t) + 1
    ts = text_surprisal(lm, tokenizer, joined, window=window, overlap=overlap,
                        progress=progress)
    # empty events would make the spans overlap their neighbours' start: keep only real ones
    real = spans[:, 1] > spans[:, 0]
    owner = np.full(len(ts.surprisal), -1, dtype=np.int64)
    if real.any():
        idx = np.flatnonzero(real)
        sub = token_units(ts.starts, spans[idx])
        owner = np.where(sub >= 0, idx[np.clip(sub, 0, None)], -1)
    total, count = (v.numpy() for v in reduce_units(torch.from_numpy(ts.surprisal),
                                                    torch.from_numpy(owner), len(texts)))
    mean = total / np.maximum(count, 1)
    ranked = mean if score == "mean" else total
    warm = np.arange(len(texts)) < int(warmup)
    if warm.all():
        warm[:] = False  # nothing would be left to rank
    # the centre and spread come from the events after the warm-up that hold a token (an
    # empty event scores 0 and would flatten every z-score): it gets z = 0, is never flagged
    scored = count > 0
    ref = ranked[~warm & scored] if (~warm & scored).any() else ranked[scored]
    _, med, mad = robust_z(ref)
    zs = np.where(scored, _z_against(ranked, ref), 0.0)
    order = [int(i) for i in np.argsort(-ranked, kind="stable") if not warm[i] and scored[i]]
    if top is not None:
        flagged = order[: int(top)]
        rule = f"top {int(top)}"
    else:
        z = DEFAULT_Z if z is None else float(z)
        flagged = [int(i) for i in order if zs[i] > z]
        rule = f"robust z > {z:g}"
    flag_set = set(flagged)
    drop = [i for i in range(len(texts)) if count[i] and mean[i] < drop_below
            and i not in flag_set and not warm[i]]
    temps, rarity = template_rarity(texts)
    out = [Event(i, texts[i], records[i]["time"], int(count[i]), float(total[i]),
                 float(mean[i]), float(zs[i]), temps[i], float(rarity[i]), i in flag_set,
                 False, bool(warm[i]))
           for i in range(len(texts))]
    for i in drop:
        out[i].drop = True
    n_tok = int(count.sum())
    notes = []
    if len(texts) < 10:
        notes.append("fewer than 10 events: the robust z-score has little to go on")
    if tokenizer.bos_token_id is None:
        notes.append("the tokenizer has no BOS token: the first event's first token has no "
                     "context and gets the median surprisal")
    return EventsResult(
        out, label, score, rule, med, mad, flagged, drop, float(drop_below),
        len(drop) / len(texts), float(count[drop].sum() / n_tok) if n_tok else 0.0,
        spearman(ranked, rarity), len(set(temps)), notes)
