"""A trained model directory records how it was prompted, and ``eval`` / ``serve`` use that record.

Issue 18, item 8: the README's ``eval runs/demo/model`` scored 0% because eval used its default
prompt and the tokenizer's chat template, while the demo model was trained on its own prompt without
chat formatting. Now every model directory a run saves holds ``parallel_r1.json`` (prompt template,
chat setting, mode), ``eval`` and ``serve`` default to it, a flag still wins, and eval's result says
which settings were used and where they came from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from parallel_r1.cli import app
from parallel_r1.data.prompts import PARALLEL
from parallel_r1.data.toy_tokenizer import build_toy_tokenizer
from parallel_r1.engine.engine import Engine
from parallel_r1.eval.loading import choose_settings, load_model
from parallel_r1.serve.app import ServeApp, ServeOptions
from parallel_r1.train.config import recipe_from_dict
from parallel_r1.train.model_io import MODEL_RECORD, model_record, read_model_record, write_model_record
from parallel_r1.train.runner import run_recipe
from test_eval_fixtures import save_tiny_model

DEMO_PROMPT = "{problem}\nUse parallel paths."  # the demo curriculum's prompt (configs/demo/demo.yaml)
TOY = "parallel_r1.data.toy:toy_problems"


def tiny_recipe(tok_dir: Path) -> dict:
    """Two SFT steps of a one-layer model, prompted like the demo, without chat formatting, Seen mode."""
    data = {"factory": "parallel_r1.data.teacher:teacher_traces",
            "kwargs": {"seed": 0, "problems": {"factory": TOY, "kwargs": {"split": "easy", "n": 8, "seed": 0}}}}
    model = {"init": "scratch", "tokenizer": str(tok_dir),
             "config": {"model_type": "qwen3", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "num_key_value_heads": 1, "head_dim": 8, "intermediate_size": 32,
                        "max_position_embeddings": 512, "tie_word_embeddings": True}}
    stage = {"name": "cold", "type": "sft", "data": data, "steps": 2, "batch_size": 4, "micro_batch_size": 4,
             "max_length": 256, "optimizer": {"lr": 1e-3},
             "prompt": {"template": DEMO_PROMPT, "chat_template": False}}
    return {"name": "record", "mode": "seen", "seed": 0, "threads": 1, "model": model, "stages": [stage],
            "checkpoint": {"every": 1, "keep_last": 5}, "logging": {"progress": False, "tensorboard": False}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The final model directory of a real (tiny) training run."""
    tok_dir = tmp_path_factory.mktemp("tok")
    build_toy_tokenizer().save_pretrained(tok_dir)
    out = tmp_path_factory.mktemp("run")
    result = run_recipe(recipe_from_dict(tiny_recipe(tok_dir)), out)
    return result.checkpoint / "model"


def test_every_saved_model_dir_records_its_prompt_chat_and_mode(trained):
    steps = sorted(trained.parents[1].glob("step-*"))
    assert len(steps) == 2  # checkpoint every step: each one's model dir carries the record
    for step in steps:
        record = json.loads((step / "model" / MODEL_RECORD).read_text())
        assert record == {"prompt_template": DEMO_PROMPT, "chat_template": False, "mode": "seen", "stage": "cold"}
    assert (trained / "config.json").is_file() and read_model_record(trained)["chat_template"] is False


def test_record_round_trip_and_a_malformed_record_is_an_error(tmp_path):
    write_model_record(tmp_path, model_record(None, True, "unseen", "sft"))
    assert read_model_record(tmp_path) == {"prompt_template": None, "chat_template": True, "mode": "unseen",
                                           "stage": "sft"}
    assert read_model_record(tmp_path / "elsewhere") is None
    (tmp_path / MODEL_RECORD).write_text('{"prompt_template": "no placeholder", "chat_template": 1, "mode": "x"}')
    with pytest.raises(ValueError, match=MODEL_RECORD):
        read_model_record(tmp_path)


def test_settings_come_from_flags_then_the_record_then_defaults(tmp_path):
    assert choose_settings(str(tmp_path), None, None, None).sources == {
        "prompt": "default", "chat": "tokenizer", "mode": "default"}
    write_model_record(tmp_path, model_record(DEMO_PROMPT, False, "seen", "rl"))
    chosen = choose_settings(str(tmp_path), None, None, None)
    assert (chosen.template, chosen.chat, chosen.mode, chosen.prompt) == (DEMO_PROMPT, False, "seen", "recorded")
    assert set(chosen.sources.values()) == {f"model record {MODEL_RECORD}"}
    flags = choose_settings(str(tmp_path), "parallel", True, "unseen")
    assert (flags.template, flags.chat, flags.mode) == (PARALLEL, True, "unseen")
    assert set(flags.sources.values()) == {"flag"}
    # a recorded template equal to a named one is labelled by its name
    write_model_record(tmp_path, model_record(PARALLEL, True, "unseen", "rl"))
    assert choose_settings(str(tmp_path), None, None, None).prompt == "parallel"
    # a record without a template (the rows carried ready-made prompts) leaves the default prompt
    write_model_record(tmp_path, model_record(None, False, "seen", "sft"))
    no_template = choose_settings(str(tmp_path), None, None, None)
    assert (no_template.prompt, no_template.sources["prompt"], no_template.chat) == ("parallel", "default", False)


def run_eval_cli(model: Path, out: Path, *extra) -> dict:
    args = [str(model), "--benchmarks", "toy-easy", "--output", str(out), "--samples", "2", "--limit", "2",
            "--max-tokens", "12", "--no-progress", *map(str, extra)]
    res = CliRunner().invoke(app, ["eval", *args])
    assert res.exit_code == 0, res.output
    return {"result": json.loads(out.read_text()), "responses": out.with_suffix(".responses.jsonl").read_text(),
            "output": res.output}


def test_eval_uses_the_record_by_default_and_a_flag_wins(trained, tmp_path):
    """End to end on a trained model dir: no flags gives exactly the samples of the recorded settings
    passed as flags, and the result names the record as their source."""
    prompt_file = tmp_path / "demo_prompt.txt"
    prompt_file.write_text(DEMO_PROMPT)
    by_record = run_eval_cli(trained, tmp_path / "a.json")
    by_flags = run_eval_cli(trained, tmp_path / "b.json", "--prompt", prompt_file, "--no-chat", "--mode", "seen")
    defaults = run_eval_cli(trained, tmp_path / "c.json", "--prompt", "parallel", "--chat", "--mode", "unseen")
    assert by_record["responses"] == by_flags["responses"] != defaults["responses"]
    config = by_record["result"]["config"]
    assert (config["prompt"], config["chat"], config["mode"]) == ("recorded", False, "seen")
    assert config["prompt_digest"] == by_flags["result"]["config"]["prompt_digest"]
    assert config["settings_from"] == {k: f"model record {MODEL_RECORD}" for k in ("prompt", "chat", "mode")}
    assert "prompt: recorded (model record" in by_record["output"]
    assert by_flags["result"]["config"]["settings_from"] == {"prompt": "flag", "chat": "flag", "mode": "flag"}
    # one flag overrides only its own setting
    mixed = run_eval_cli(trained, tmp_path / "d.json", "--chat")["result"]["config"]
    assert (mixed["chat"], mixed["mode"], mixed["settings_from"]["chat"]) == (True, "seen", "flag")
    # the finished run resumes (reprints) under the same settings
    assert run_eval_cli(trained, tmp_path / "a.json")["result"] == by_record["result"]


def test_serve_renders_chat_messages_into_the_recorded_template(tmp_path):
    save_tiny_model(tmp_path)
    write_model_record(tmp_path, model_record(DEMO_PROMPT, False, "seen", "rl"))
    chosen = choose_settings(str(tmp_path), None, None, None, default_prompt=None)
    loaded = load_model(str(tmp_path), "cpu")
    tok = loaded.tokenizer
    options = ServeOptions("m", mode=chosen.mode, chat_template=chosen.chat, prompt_template=chosen.template)
    served = ServeApp(Engine(loaded.model, tok, loaded.tag_ids), tok, options)
    try:
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]
        expected = "Be brief.\n" + DEMO_PROMPT.replace("{problem}", "What is 2 + 3?") + "\n"
        assert served._encode(messages, chat=True) == list(tok(expected)["input_ids"])
        assert served._encode("raw text", chat=False) == list(tok("raw text")["input_ids"])  # completions: as sent
    finally:
        served.batcher.stop()
    # without a record nor --prompt, serve leaves messages as they are
    bare = tmp_path / "bare"
    save_tiny_model(bare)
    assert choose_settings(str(bare), None, None, None, default_prompt=None).template is None
