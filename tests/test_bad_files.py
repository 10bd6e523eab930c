"""Every file a command reads, fed five kinds of bad file (issue 18, defect 3).

Regression: a file that was not UTF-8 ended in a ``UnicodeDecodeError`` traceback in ``train`` (the
recipe and its data files), ``make-data --problems``, ``report`` and ``demo --recipe``; a damaged
or empty YAML recipe in ``demo`` ended in a yaml/AttributeError traceback; ``score`` turned bad bytes
into U+FFFD silently. Now each bad file is one message that names the file (and the line and byte
offset where there is one), with the command's usage-error exit code and no traceback.

The real ``parallel-r1`` command runs in process (typer's CliRunner) on inputs that fail before a
model is built; two cases also run as a real subprocess. ``eval`` exits 1 on every bad input (its
tested convention, tests/test_eval_run.py); every other command exits 2.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from parallel_r1.cli import app
from parallel_r1.data.toy_tokenizer import build_toy_tokenizer
from parallel_r1.files import FileReadError, decode, parse_json, read_json_lines, read_text

# a row every reader takes: a problem, an SFT row, a score input line, a metrics row
GOOD_ROW = b'{"id": "a", "step": 1, "question": "1 + 1", "answer": "2", "response": "Final Answer: 2"}\n'
# kind -> (bytes of a JSON Lines file, bytes of a YAML file, bytes of a text template); None: not made
KINDS = {
    # byte 0xe9 (latin-1 "é") on line 2, at byte offset len(GOOD_ROW) + 14 of the file
    "not-utf8": (GOOD_ROW + b'{"question": "caf\xe9", "answer": "1", "response": "x"}\n',
                 b"name: run\nmode: caf\xe9\n", b"{problem}\ncaf\xe9\n"),
    "bad-json": (GOOD_ROW + b'{"question": "2 + 2", "answer": \n', b"name: run\nmode: x: y\n", None),
    "empty": (b"", b"", b""),
    "directory": (None, None, None),
    "missing": (None, None, None),
}
KIND_NAMES = list(KINDS)
BAD_OFFSET = len(GOOD_ROW) + len(b'{"question": "caf')


def make_bad(path: Path, kind: str, flavour: int) -> Path:
    """``path`` turned into the bad file of ``kind``; flavour 0: JSON Lines, 1: YAML, 2: text."""
    if kind == "directory":
        path.mkdir(parents=True)
    elif kind != "missing":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(KINDS[kind][flavour])
    return path


def squash(text: str) -> str:
    """Text without whitespace and rich's box drawing: a long path may be wrapped across lines."""
    return re.sub(r"[\s│╭╮╰╯─]", "", text)


@dataclass
class Outcome:
    code: int
    text: str  # stdout + stderr (+ log records for train)
    exception: BaseException | None


def invoke(args: list, caplog=None) -> Outcome:
    caplog_text = ""
    if caplog is not None:
        caplog.clear()
    result = CliRunner().invoke(app, [str(a) for a in args])
    if caplog is not None:
        caplog_text = caplog.text
    return Outcome(result.exit_code, result.output + caplog_text, result.exception)


def check_clean_error(out: Outcome, file: Path, kind: str, code: int = 2, where: bool = True) -> None:
    """Exit ``code``, the file named, the line (and byte offset) of bad bytes or JSON, no traceback."""
    assert out.exception is None or isinstance(out.exception, SystemExit), f"{out.exception!r}\n{out.text}"
    assert "Traceback" not in out.text, out.text
    assert out.code == code, out.text
    assert squash(str(file)) in squash(out.text), out.text
    if where and kind == "not-utf8":
        assert "line 2" in out.text and "not UTF-8" in out.text, out.text
    if where and kind == "bad-json":
        assert "line 2" in out.text, out.text


# --- the shared reader --------------------------------------------------------------------------------


def test_decode_names_line_and_byte_offset_of_the_first_bad_byte():
    data = KINDS["not-utf8"][0]
    with pytest.raises(FileReadError, match=rf"f\.jsonl: not UTF-8 text: byte 0xe9 at line 2 \(byte offset {BAD_OFFSET}\)"):
        decode(data, "f.jsonl")
    assert data[BAD_OFFSET] == 0xE9


def test_read_text_drops_a_byte_order_mark_and_names_folders_and_missing_files(tmp_path):
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfhello")
    assert read_text(tmp_path / "bom.txt") == "hello"
    with pytest.raises(FileReadError, match="is a directory, not a recipe"):
        read_text(tmp_path, "recipe")
    with pytest.raises(FileReadError, match="recipe not found: .*nope"):
        read_text(tmp_path / "nope", "recipe")


def test_json_errors_count_lines_of_the_file():
    with pytest.raises(FileReadError, match=r"f\.json, line 3: not valid JSON: .*\(column 7\)"):
        parse_json('{"a":\n 1,\n "b": }', "f.json")
    with pytest.raises(FileReadError, match=r"f\.json is empty"):
        parse_json(" \n", "f.json")


def test_json_lines_keep_unicode_line_separators_and_number_rows(tmp_path):
    file = tmp_path / "rows.jsonl"
    file.write_text('{"q": "x\u2028y"}\n\n{"q": "z"}\n', encoding="utf-8")
    assert read_json_lines(file) == [(1, {"q": "x\u2028y"}), (3, {"q": "z"})]


# --- every command --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_score_input(tmp_path, kind):
    file = make_bad(tmp_path / "in.jsonl", kind, 0)
    out = invoke(["score", "--input", file, "--output", tmp_path / "v.jsonl"])
    if kind == "empty":  # score's own rule for an input with nothing to score: "no input", exit 2
        assert out.code == 2 and "no input" in out.text and "Traceback" not in out.text, out.text
        return
    if kind == "not-utf8":  # score decodes line by line: the offset counts within the bad line
        assert "not UTF-8 text: byte 0xe9 at byte 17 of the line" in out.text, out.text
    check_clean_error(out, file, kind)


def test_score_skips_a_line_that_is_not_utf8_with_skip_bad(tmp_path):
    """Regression: undecodable bytes became U+FFFD, so the altered response was judged silently."""
    file = make_bad(tmp_path / "in.jsonl", "not-utf8", 0)
    file.write_bytes(file.read_bytes().replace(b'"response": "x"', b'"response": "Final Answer: 1"'))
    result = CliRunner().invoke(app, ["score", "--input", str(file), "--skip-bad"])
    assert result.exit_code == 0, result.output
    assert "skipped line 2: not UTF-8 text" in result.stderr
    assert len(result.stdout.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_report_metrics_file(tmp_path, kind):
    file = make_bad(tmp_path / "run" / "metrics.jsonl", kind, 0)
    (tmp_path / "run").mkdir(exist_ok=True)
    out = invoke(["report", tmp_path / "run"])
    if kind == "bad-json":  # a cut *last* line is a killed run's leftover: dropped with a warning
        assert out.code == 0, out.text
        return
    check_clean_error(out, file, kind)


def test_report_damaged_middle_line_is_an_error(tmp_path):
    file = tmp_path / "run" / "metrics.jsonl"
    make_bad(file, "bad-json", 0)
    file.write_bytes(file.read_bytes() + b'{"step": 3}\n')
    check_clean_error(invoke(["report", tmp_path / "run"]), file, "bad-json")


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_make_data_problems_file(tmp_path, kind):
    file = make_bad(tmp_path / "problems.jsonl", kind, 0)
    out = invoke(["make-data", "--endpoint", "http://127.0.0.1:9/v1", "--problems", file, "--max-retries", "0",
                  "--output", tmp_path / "out", "--samples", "1"])
    check_clean_error(out, file, kind)


@pytest.mark.parametrize("kind", ["not-utf8", "empty", "directory", "missing"])
def test_make_data_prompt_file(tmp_path, kind):
    file = make_bad(tmp_path / "prompt.txt", kind, 2)
    out = invoke(["make-data", "--endpoint", "http://127.0.0.1:9/v1", "--problems", "toy-easy", "--limit", "1",
                  "--prompt", file, "--max-retries", "0", "--output", tmp_path / "out", "--samples", "1"])
    check_clean_error(out, file, kind)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_train_recipe(tmp_path, kind, caplog):
    file = make_bad(tmp_path / "recipe.yaml", kind, 1)
    check_clean_error(invoke(["train", file, "--output", tmp_path / "out"], caplog), file, kind)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_demo_recipe(tmp_path, kind):
    file = make_bad(tmp_path / "demo.yaml", kind, 1)
    check_clean_error(invoke(["demo", "--recipe", file, "--output", tmp_path / "out"]), file, kind)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    """The toy tokenizer (it holds the six tags), saved: what train and eval load before any data."""
    path = tmp_path_factory.mktemp("toy_tok")
    build_toy_tokenizer().save_pretrained(path)
    return path


def sft_recipe(tok_dir: Path, data: dict, prompt: dict) -> dict:
    model = {"init": "scratch", "tokenizer": str(tok_dir),
             "config": {"model_type": "qwen3", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 64}}  # fmt: skip
    stage = {"name": "sft", "type": "sft", "data": data, "prompt": prompt, "steps": 1, "batch_size": 1,
             "micro_batch_size": 1, "max_length": 64, "optimizer": {"lr": 1e-3}}  # fmt: skip
    return {"name": "bad-files", "threads": 1, "model": model, "stages": [stage],
            "logging": {"progress": False, "tensorboard": False}}  # fmt: skip


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_train_data_file(tmp_path, tok_dir, kind, caplog):
    file = make_bad(tmp_path / "rows.jsonl", kind, 0)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(sft_recipe(tok_dir, {"path": str(file)}, {"template": "{problem}"})))
    out = invoke(["train", recipe, "--output", tmp_path / "out"], caplog)
    check_clean_error(out, file, kind)
    assert "stages[0].data.path" in out.text  # the recipe entry that names the file


@pytest.mark.parametrize("kind", ["not-utf8", "empty", "directory", "missing"])
def test_train_prompt_template_file(tmp_path, tok_dir, kind, caplog):
    rows = make_bad(tmp_path / "rows.jsonl", "empty", 0)
    rows.write_bytes(GOOD_ROW)
    file = make_bad(tmp_path / "prompt.txt", kind, 2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(sft_recipe(tok_dir, {"path": str(rows)}, {"template_file": str(file)})))
    out = invoke(["train", recipe, "--output", tmp_path / "out"], caplog)
    check_clean_error(out, file, kind)
    assert "stages[0].prompt.template_file" in out.text


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_eval_benchmark_file(tmp_path, tok_dir, kind):
    file = make_bad(tmp_path / "bench.jsonl", kind, 0)
    out = invoke(["eval", tok_dir, "--benchmarks", file, "--output", tmp_path / "r.json", "--no-progress"])
    check_clean_error(out, file, kind, code=1)


@pytest.mark.parametrize("kind", ["not-utf8", "empty", "directory", "missing"])
def test_eval_prompt_file(tmp_path, tok_dir, kind):
    file = make_bad(tmp_path / "prompt.txt", kind, 2)
    out = invoke(["eval", tok_dir, "--benchmarks", "toy-easy", "--prompt", file, "--output", tmp_path / "r.json",
                  "--no-progress"])
    check_clean_error(out, file, kind, code=1)


CONTENT_KINDS = ["not-utf8", "bad-json", "empty"]  # where a folder or no file is a state, not an error


@pytest.mark.parametrize("kind", CONTENT_KINDS)
def test_make_data_report_summary(tmp_path, kind):
    file = make_bad(tmp_path / "out" / "summary.json", kind, 0)
    out = invoke(["make-data", "--report", "--output", tmp_path / "out"])
    check_clean_error(out, file, kind)


@pytest.mark.parametrize("kind", CONTENT_KINDS)
def test_make_data_resumed_run_record(tmp_path, kind):
    from fake_teacher import FakeTeacher
    from parallel_r1.data.toy import toy_problems

    file = make_bad(tmp_path / "out" / "run.json", kind, 0)
    with FakeTeacher(toy_problems("easy", 1, 0)) as teacher:  # make-data asks the endpoint first
        out = invoke(["make-data", "--endpoint", teacher.url, "--problems", "toy-easy", "--limit", "1",
                      "--output", tmp_path / "out", "--samples", "1"])
    check_clean_error(out, file, kind)


@pytest.mark.parametrize("kind", CONTENT_KINDS)
def test_eval_resumed_result_file(tmp_path, tok_dir, kind):
    file = make_bad(tmp_path / "r.json", kind, 0)
    out = invoke(["eval", tok_dir, "--benchmarks", "toy-easy", "--output", file, "--no-progress"])
    check_clean_error(out, file, kind, code=1)
    assert "--fresh" in out.text  # the way out


# --- the real console script ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["report", "train"])
def test_real_command_prints_one_line_and_exits_2(tmp_path, command):
    """In a subprocess: what a user sees in a terminal (no logging capture, no CliRunner)."""
    if command == "report":
        file = make_bad(tmp_path / "metrics.jsonl", "not-utf8", 0)
        args = ["report", str(tmp_path)]
    else:
        file = make_bad(tmp_path / "recipe.yaml", "not-utf8", 1)
        args = ["train", str(file), "--output", str(tmp_path / "out")]
    cli = Path(sys.executable).with_name("parallel-r1")
    proc = subprocess.run([str(cli), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{file}: not UTF-8 text: byte 0xe9 at line 2" in proc.stderr
