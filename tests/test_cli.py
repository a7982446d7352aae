"""The command line, through a subprocess: output, JSON, exit codes, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
REPORT = str(ROOT / "examples" / "report.txt")


def run(*args, stdin: bytes | None = None):
    proc = subprocess.run([sys.executable, "-m", "tokensieve", *args], input=stdin,
                          capture_output=True, timeout=300)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


@pytest.mark.model
def test_compress_file_prints_text_and_stats():
    code, out, err = run("compress", REPORT, "--keep", "0.33", "--question",
                         "What was the Q3 revenue?", "--keep-numbers", "--stats")
    assert code == 0, err
    assert "Q3 revenue was $48.2 million, up 17% from $41.2 million" in out
    assert "tokens:" in err and "->" in err


@pytest.mark.model
def test_json_output_is_a_typed_result():
    code, out, err = run("compress", REPORT, "--target-tokens", "120", "--method", "random",
                         "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["compressed_tokens"] <= data["target_tokens"] == 120
    assert data["method"] == "random" and isinstance(data["kept_spans"], list)
    assert {"text", "original_tokens", "scores", "timings"} <= set(data)


@pytest.mark.model
def test_stdin_and_explain():
    code, out, err = run("compress", "-", "--keep", "0.5", "--method", "wordfreq", "--explain",
                         stdin=b"The quick brown fox jumps over the lazy dog. " * 4)
    assert code == 0, err
    assert "fox" in out and "tokens" in out


def test_models_command():
    code, out, err = run("models", "--json")
    assert code == 0, err
    assert any(row["kind"] == "causal LM" for row in json.loads(out))


@pytest.mark.parametrize("args,exit_code,message", [
    (["compress", REPORT, "--keep", "0"], 2, "keep"),
    (["compress", REPORT, "--keep", "1.5"], 2, "keep"),
    (["compress", REPORT, "--keep", "PX-1"], 2, "--keep-text 'PX-1'"),
    (["compress", REPORT, "--target-tokens", "-3"], 2, "positive"),
    (["compress", REPORT, "--method", "nope"], 2, "invalid choice"),
    (["compress", "/no/such/file.txt"], 2, "no such file"),
    (["compress", REPORT, "--keep", "0.5", "--target-tokens", "9"], 2, "not allowed"),
    (["compress", REPORT, "--method", "bm25"], 2, "question"),
    (["compress", REPORT, "--protect", "(unclosed"], 2, "invalid protect regex"),
])
def test_usage_errors_exit_2_with_one_line(args, exit_code, message):
    code, out, err = run(*args)
    assert code == exit_code
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content,message", [
    (b"", "empty"),
    (b"   \n\t  \n", "empty"),
    (b"\xff\xfe\x00\x01binary\x00", "binary"),
    (b"caf\xe9 au lait", "UTF-8"),
])
def test_bad_files_exit_1_with_one_line(tmp_path, content, message):
    path = tmp_path / "input.txt"
    path.write_bytes(content)
    code, out, err = run("compress", str(path), "--method", "random")
    assert code == 1
    assert message in err and "Traceback" not in err


def test_malformed_json_exits_1(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"a": "some text", "b": [1, 2,}')
    code, out, err = run("compress", str(path), "--format", "json", "--method", "random")
    assert code == 1 and "not valid JSON" in err and "line 1" in err


def test_protected_text_over_budget_exits_1_or_keeps_with_flag(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("Order ACME-1234 and ACME-5678 were shipped today to the warehouse in Leeds.")
    code, out, err = run("compress", str(path), "--target-tokens", "3", "--keep-text",
                         "ACME-1234 and ACME-5678", "--method", "random")
    assert code == 1 and "over by" in err
    code, out, err = run("compress", str(path), "--target-tokens", "3", "--keep-text",
                         "ACME-1234 and ACME-5678", "--method", "random", "--allow-over-budget")
    assert code == 0 and "ACME-1234 and ACME-5678" in out and "note:" in err
