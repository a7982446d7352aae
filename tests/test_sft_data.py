"""The SFT set from the BSD quiz data: the quiz syntax, the pinned package read from a fake
.deb (no network: the download is replaced), the split by task group, the chat format, the
options, and the multiple-choice scorer on a tiny random Llama."""

import io
import tarfile

import pytest
import torch

from tokensieve.bench import sft_data as sd
from tokensieve.errors import TokensieveError, UsageError

FAKE = {
    "africa": "Algeria:Algiers\nAngola:Luanda\nBenin:Porto-Novo|Cotonou\nChad:N'Djamena\n"
              "Egypt:Cairo\nKenya:Nairobi\n",
    "europe": "Austria:Vienna|Wien\nFrance:Paris\nItaly:Rome\nSpain:Madrid\nNorway:Oslo\n",
    "elements": "H:1:1.008:Hydrogen\nHe:2:4.003:Helium\nLi:3:6.94:Lithium\n"
                "Be:4:9.013:Beryllium\nB:5:10.81:Boron\n",
    "babies": "cub:lion|tiger|bear\nkitten:cat\ncalf:cow|whale\npuppy:dog|bear\nlamb:sheep\n"
              "yearling:bear\n",
    "pres": "{G{eorge} }Washington:1789-{17}97:{J{ohn} }Adams:{J{ohn} }Adams\n"
            "{J{ohn} }Adams:1797-1801:{T{homas} }Jefferson:{T{homas} }Jefferson\n"
            "{T{homas} }Jefferson:1801-{{18}0}9:{A{aron} }Burr|{G{eorge} }Clinton:\\\n"
            "{J{ames} }Madison\n"
            "{J{ames} }Madison:1809-17:{G{eorge} }Clinton:{J{ames} }Monroe\n"
            "{J{ames} }Monroe:1817-25:Tompkins:{J{ohn} Q{uincy} }Adams\n",
    "seq-easy": "1,2,3,4:5{(integers)}:integers\n1,2,4,8:16{(powers of 2)}:powers of 2\n"
                "1,1,2,3,5:8{(Fibonacci)}:Fibonacci\n2,3,5,7:11{(primes)}:primes\n"
                "1,4,9,16:25{(squares)}:squares\n",
    "sexes": "abbot:abbess\nprince:princess\nram:ewe\nlad:lass\nmonk:nun\n",
}


def fake_files():
    return {k: v.encode() for k, v in FAKE.items()}


def fake_deb(path, files, data_name="data.tar.xz"):
    """A .deb as dpkg writes it: an ar archive of debian-binary, control and data tars."""
    def tar_bytes(members, mode):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode) as tar:
            for name, blob in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        return buf.getvalue()

    data = {sd.DEB_PREFIX + k: v for k, v in files.items()}
    data["./usr/games/quiz"] = b"\x7fELF not a quiz file"
    data["./usr/share/games/bsdgames/quiz/index"] = b"/x/africa:Africa{n}:cap{ital}\n"
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", tar_bytes({}, "w:xz")),
               (data_name, tar_bytes(data, "w:xz" if data_name.endswith("xz") else "w:gz"))]
    out = b"!<arch>\n"
    for name, blob in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(blob):<10}`\n".encode() + blob
        out += b"\n" if len(blob) % 2 else b""
    path.write_bytes(out)
    return path


def _mk(folder):
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def pinned_fake(tmp_path, monkeypatch):
    """The data folder in tmp, no installed bsdgames, and the pin set to the fake files."""
    monkeypatch.setenv("TOKENSIEVE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TOKENSIEVE_QUIZ_DIR", str(tmp_path / "not-installed"))
    monkeypatch.setattr(sd, "QUIZ_SHA256", sd.quiz_digest(fake_files()))

    def no_network(folder):
        raise AssertionError("the test tried to download")
    monkeypatch.setattr(sd, "_apt_download", no_network)
    return tmp_path / "data" / "downloads"


# ----------------------------------------------------------------------------- syntax


def test_quiz_syntax():
    assert sd.render("{G{eorge} }Washington") == "George Washington"
    assert sd.render("W[illia|]m [II|2|Rufus]") == "William II"
    assert sd.render("forget{-| }me{-| }not") == "forget-me-not"
    assert sd.render("7{(integers)}") == "7"                  # a hint is not the answer
    assert sd.render("{To be{,} or not to be{\\:}}") == "To be, or not to be:"
    assert sd.render("marchioness[|e]|marquise") == "marchioness"
    assert sd.render("Ann'\x08uminas") == "Ann'uminas"
    assert sd.variants("Alabama|Ala|AL") == {"alabama", "ala", "al"}
    rows = sd.parse_quiz("a\\:b:c\nx:\\\ny:z\n\n{p:q}:r|s\n")
    assert rows == [["a\\:b", "c"], ["x", "y", "z"], ["{p:q}", "r|s"]]
    assert sd.render(rows[0][0]) == "a:b"


# ----------------------------------------------------------------------------- the files


def test_pinned_deb_is_read_without_dpkg(pinned_fake):
    fake_deb(_mk(pinned_fake) / f"bsdgames_{sd.DEB_VERSION}_amd64.deb", fake_files())
    assert sd.quiz_files() == fake_files()
    gz = fake_deb(pinned_fake / "other.deb", fake_files(), "data.tar.gz")
    assert sd.deb_members(gz) == fake_files()


def test_a_deb_with_other_data_is_refused(pinned_fake):
    files = fake_files()
    files["africa"] += b"Mali:Bamako\n"
    fake_deb(_mk(pinned_fake) / f"bsdgames_{sd.DEB_VERSION}_amd64.deb", files)
    with pytest.raises(TokensieveError, match="does not hold the pinned quiz data"):
        sd.quiz_files()
    (pinned_fake / "junk.deb").write_bytes(b"not an archive")
    with pytest.raises(TokensieveError, match="not a Debian package"):
        sd.deb_members(pinned_fake / "junk.deb")


def test_missing_package_is_fetched_once_with_apt(pinned_fake, monkeypatch):
    with pytest.raises(TokensieveError, match="apt-get install bsdgames"):
        sd.quiz_files(download=False)
    calls = []

    def fake_apt(folder):
        calls.append(folder)
        return fake_deb(_mk(folder) / f"bsdgames_{sd.DEB_VERSION}_amd64.deb", fake_files())
    monkeypatch.setattr(sd, "_apt_download", fake_apt)
    assert sd.quiz_files() == fake_files() and sd.quiz_files() == fake_files()
    assert calls == [pinned_fake]          # the second call reads the downloaded file

    def failing(folder):
        raise TokensieveError("apt-get download failed (E: no such version)")
    monkeypatch.setattr(sd, "_apt_download", failing)
    for p in pinned_fake.iterdir():
        p.unlink()
    with pytest.raises(TokensieveError, match="could not fetch bsdgames") as err:
        sd.quiz_files()
    assert len(str(err.value).splitlines()) == 1


def test_an_installed_copy_is_used_when_it_is_the_pinned_one(pinned_fake, tmp_path,
                                                               monkeypatch):
    folder = _mk(tmp_path / "installed")
    for k, v in fake_files().items():
        (folder / k).write_bytes(v)
    (folder / "index").write_text("not a subject")
    monkeypatch.setenv("TOKENSIEVE_QUIZ_DIR", str(folder))
    assert sd.quiz_files(download=False) == fake_files()
    (folder / "africa").write_text("Mali:Bamako\n")        # another version: not used
    with pytest.raises(TokensieveError, match="not here"):
        sd.quiz_files(download=False)


# ----------------------------------------------------------------------------- the set


def test_split_by_group_chat_format_and_options():
    s = sd.build_sft(files=fake_files(), n_held_out=2, seed=3)
    group = {t.name: t.group for t in sd.TASKS}
    assert set(s.train_groups).isdisjoint(s.held_out_groups) and len(s.held_out_groups) == 2
    assert {group[e.task] for e in s.train} == set(s.train_groups)
    assert {group[e.task] for e in s.held_out} == set(s.held_out_groups)
    assert sorted(s.train_tasks + s.held_out_tasks) == sorted({e.task for e in s.train}
                                                              | {e.task for e in s.held_out})
    rows = {k: sd.parse_quiz(v) for k, v in FAKE.items()}
    for e in s.train + s.held_out:
        assert e.prompt == sd.chat_prompt(e.user) and e.prompt.endswith("<|im_start|>assistant\n")
        assert e.answer == e.choices[e.gold] + "<|im_end|>"
        assert len(e.choices) == 4 == len(set(e.choices)) and f"- {e.choices[0]}" in e.user
        task = next(t for t in sd.TASKS if t.name == e.task)
        row = rows[task.subject][int(e.id.split("/")[1])]
        same = sd.variants(row[task.answer])
        assert [c for c in e.choices if c.lower() in same] == [e.choices[e.gold]]
        assert task.template.format(q=sd.render(row[task.question])) in e.user
    # a distractor is never another spelling of the gold answer (cub: lion|tiger|bear)
    cub = [e for e in s.train + s.held_out if e.task == "animal-young" and e.id.endswith("/0")]
    assert cub and "bear" not in cub[0].choices
    assert s.source["quiz_sha256"] == sd.quiz_digest(fake_files())
    again = sd.build_sft(files=fake_files(), n_held_out=2, seed=3)
    assert sd.to_jsonl(again.train) == sd.to_jsonl(s.train)
    other = sd.build_sft(files=fake_files(), n_held_out=2, seed=4)
    assert (other.held_out_groups, sd.to_jsonl(other.train)) != (s.held_out_groups,
                                                                 sd.to_jsonl(s.train))


def test_sizes_are_bounded_and_bad_settings_refused():
    s = sd.build_sft(files=fake_files(), n_held_out=1, max_per_task=2)
    per = {}
    for e in s.train + s.held_out:
        per[e.task] = per.get(e.task, 0) + 1
    assert max(per.values()) == 2
    for kw in ({"n_held_out": 0}, {"n_held_out": 7}, {"max_per_task": 0},
               {"max_chars": 10}, {"n_held_out": True}):
        with pytest.raises(UsageError):
            sd.build_sft(files=fake_files(), **kw)
    with pytest.raises(TokensieveError, match="task groups"):
        sd.build_sft(files={"africa": FAKE["africa"].encode()})


# ----------------------------------------------------------------------------- scoring


def test_accuracy_counts_lowest_loss_choices():
    s = sd.build_sft(files=fake_files(), n_held_out=2)
    ex = s.held_out[:4]
    losses = [[0.0 if i == e.gold else 5.0 for i in range(4)] for e in ex[:3]]
    losses.append([0.0 if i != ex[3].gold else 5.0 for i in range(4)])
    got = sd.accuracy(ex, losses)
    assert got["accuracy"] == pytest.approx(0.75) and got["chance"] == pytest.approx(0.25)
    assert got["n"] == 4 and sd.choose([2.0, 1.0, 1.0]) == 1
    with pytest.raises(UsageError):
        sd.accuracy(ex, losses[:2])


def tiny_chat_model():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                  special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([v for v in FAKE.values()] * 5, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tk.get_vocab_size(), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval(), tok


def test_option_losses_match_one_forward_per_option():
    model, tok = tiny_chat_model()
    ex = sd.build_sft(files=fake_files(), n_held_out=2).held_out[0]
    got = sd.option_losses(model, tok, ex)
    prompt = tok(ex.prompt, add_special_tokens=False)["input_ids"]
    for c, loss in zip(ex.choices, got, strict=True):
        cont = tok(c + "<|im_end|>", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + cont])).logits[0]
        want = torch.nn.functional.cross_entropy(
            logits[len(prompt) - 1:-1], torch.tensor(cont), reduction="sum")
        assert loss == pytest.approx(float(want), rel=1e-4)


@pytest.mark.model
def test_chat_prompt_is_smollm2s_template():
    from tokensieve.models import load_tokenizer

    tok = load_tokenizer("default")
    user = "What is the capital of Chad?\n\nOptions:\n- a\n- b"
    assert sd.chat_prompt(user) == tok.apply_chat_template(
        [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False)
    assert tok.convert_tokens_to_ids(sd.END) != tok.unk_token_id
