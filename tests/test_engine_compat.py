"""``SamplingConfig(compat="reference")``: sampling as the reference engine does (rows docstring, point 8).

Each test runs the same script under the default ("ours") too, so it shows both what compat changes
and that the default stays as it was: ``</Parallel><Summary>`` back to back, ``<Parallel>`` suppressed
after ``max_blocks`` while the main chain goes on, unseen summaries at the structured positions.
"""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from typer.testing import CliRunner

from parallel_r1.cli import app
from parallel_r1.data.prompts import load_template
from parallel_r1.engine import Engine, SamplingConfig
from parallel_r1.engine.testing import Force, Script, random_qwen3
from parallel_r1.eval.loading import load_model
from parallel_r1.eval.run import EvalConfig, digest_text
from parallel_r1.format import parse
from parallel_r1.format.tags import PARALLEL_CLOSE, PARALLEL_OPEN, PATH_CLOSE, SUMMARY_CLOSE, SUMMARY_OPEN
from parallel_r1.serve import OpenAIServer, ServeOptions
from test_engine import check_rollout, in_main, quiet
from test_eval_fixtures import ScriptedPolicy, save_tiny_model

TOL = 1e-4


@pytest.fixture(scope="module")
def model(tok):
    return random_qwen3(len(tok), "tiny", seed=2)


@pytest.fixture(scope="module")
def engine(model, tok):
    return Engine(model, tok, max_batch_size=4)


def cfg(**kw):
    base = dict(max_new_tokens=60, max_path_tokens=3, max_summary_tokens=2, seed=0)
    return SamplingConfig(**{**base, **kw})


def test_compat_defaults_to_ours_and_rejects_unknown_values():
    assert SamplingConfig().compat == "ours"
    with pytest.raises(ValueError, match="compat must be one of"):
        SamplingConfig(compat="verl")


@pytest.mark.parametrize("mode", ["unseen", "seen"])
def test_reference_inserts_a_newline_between_the_block_and_its_summary(engine, tok, tags, mode):
    prompts = [tok.encode(t) for t in ("what is 2+3?", "x", "a longer prompt, with more tokens")]
    script = quiet(tok, tags, [Force(tags[PARALLEL_OPEN], in_main(2))])
    newline = tok.encode("\n", add_special_tokens=False)
    for compat, between in (("reference", newline), ("ours", [])):
        rollouts = engine.generate(prompts, 2, cfg(mode=mode, compat=compat), [script])
        for r in rollouts:
            check_rollout(r, tok, tags)
            (b,) = r.blocks
            inserted = r.response_ids[b.close : b.summary[0] + 1]
            assert inserted == [tags[PARALLEL_CLOSE], *between, tags[SUMMARY_OPEN]]
            assert r.loss_mask[b.close : b.summary[0] + 1] == [0] * len(inserted), "inserted: no loss"
            assert r.logprobs[b.close : b.summary[0] + 1] == [0.0] * len(inserted)
            expected = "</Parallel>\n<Summary>" if compat == "reference" else "</Parallel><Summary>"
            assert tok.decode(inserted, skip_special_tokens=False) == expected
            assert expected in r.text and r.mode == mode


@pytest.mark.parametrize("max_blocks", [1, 4])
def test_reference_ends_the_response_after_the_last_allowed_block(engine, tok, tags, max_blocks):
    """The main chain would go on (EOS is banned) and open a block at once whenever it may."""
    always = Force(tags[PARALLEL_OPEN], lambda c: c.phase == "main")
    script = Script([always], ban=[tok.eos_token_id, tags[PATH_CLOSE], tags[SUMMARY_CLOSE]])
    config = dict(max_new_tokens=120, max_path_tokens=1, max_summary_tokens=1, max_blocks=max_blocks)
    (ref,) = engine.generate([tok.encode("q")], 1, cfg(compat="reference", **config), [script])
    check_rollout(ref, tok, tags)
    assert ref.finish_reason == "max_blocks" and len(ref.blocks) == max_blocks
    assert ref.response_ids[-1] == tags[SUMMARY_CLOSE] and ref.blocks[-1].summary[1] == len(ref.response_ids)
    assert parse(ref.text).valid and parse(ref.text).num_parallel == max_blocks
    (ours,) = engine.generate([tok.encode("q")], 1, cfg(**config), [script])
    check_rollout(ours, tok, tags)
    assert ours.finish_reason == "length" and len(ours.response_ids) == 120, "ours goes on after the blocks"
    assert len(ours.blocks) == max_blocks


def test_reference_without_a_block_is_not_cut(engine, tok, tags):
    """Only a block's end can stop the response early; a response without one ends as usual."""
    script = quiet(tok, tags, [Force(tok.eos_token_id, in_main(7))])
    (r,) = engine.generate([tok.encode("q")], 1, cfg(compat="reference"), [script])
    assert r.finish_reason == "eos" and len(r.response_ids) == 8 and not r.blocks


class SummaryLogits:
    """Logits processor that records the model's raw logits at every summary query, with the response
    so far (a single row: one prompt, one sample)."""

    def __init__(self):
        self.seen: list[tuple[list[int], torch.Tensor]] = []

    def __call__(self, logits, contexts):
        for i, ctx in enumerate(contexts):
            if ctx.phase == "summary":
                self.seen.append((list(ctx.tokens), logits[i].clone()))
        return logits


@torch.no_grad()
def causal_logits(model, ids):
    """Last-position logits of a plain causal forward (the model's own mask and positions)."""
    return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def summary_gaps(engine, model, tok, tags, compat):
    """Largest |engine - plain causal forward| logit gap per summary query of an unseen rollout."""
    second = lambda c: c.phase == "main" and c.block_index == 0 and len(c.tokens) >= 30  # noqa: E731
    forces = [Force(tags[PARALLEL_OPEN], in_main(2)), Force(tags[PARALLEL_OPEN], second)]
    recorder = SummaryLogits()
    config = cfg(mode="unseen", compat=compat, max_new_tokens=80, max_path_tokens=4, max_summary_tokens=3,
                 num_paths=3, temperature=1.0, seed=5)
    prompt = tok.encode("solve 12*7")
    (r,) = engine.generate([prompt], 1, config, [recorder, quiet(tok, tags, forces)])
    assert len(r.blocks) == 2 and len(recorder.seen) == 6, "two blocks, three summary queries each"
    return [float((logits - causal_logits(model, prompt + tokens)).abs().max()) for tokens, logits in recorder.seen]


def test_reference_unseen_summaries_are_sampled_at_causal_positions(engine, model, tok, tags):
    """The reference samples an Unseen model's summary after the serialised block at sequential
    positions; ours at the structured positions (and so differs from the causal forward)."""
    assert max(summary_gaps(engine, model, tok, tags, "reference")) <= TOL
    assert min(summary_gaps(engine, model, tok, tags, "ours")) > 1e-3


def test_reference_has_no_effect_in_sequential_mode(engine, tok, tags):
    script = quiet(tok, tags, [Force(tags[PARALLEL_OPEN], in_main(2))])
    runs = [engine.generate([tok.encode("q")], 2, cfg(mode="sequential", compat=c), [script])
            for c in ("reference", "ours")]
    assert [r.response_ids for r in runs[0]] == [r.response_ids for r in runs[1]]


# ---- the --compat flag of eval and serve ---------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    save_tiny_model(path)
    return path


def test_eval_config_passes_compat_and_keeps_old_results_resumable():
    ours, ref = EvalConfig(model="m", benchmarks=["toy-easy"]), EvalConfig(model="m", benchmarks=["b"], compat="reference")
    assert ours.sampling(0).compat == "ours" and ref.sampling(0).compat == "reference"
    assert "compat" not in ours.fingerprint("t"), "results stored before --compat existed stay resumable"
    assert ref.fingerprint("t")["compat"] == "reference"
    with pytest.raises(ValueError, match="compat must be one of"):
        EvalConfig(model="m", benchmarks=["b"], compat="verl")


def test_eval_cli_compat_reference_with_the_reference_prompt(model_dir, tmp_path):
    out = tmp_path / "ref.json"
    args = ["eval", str(model_dir), "--benchmarks", "toy-easy", "--limit", "1", "--samples", "1",
            "--max-tokens", "8", "--output", str(out), "--no-progress"]
    res = CliRunner().invoke(app, [*args, "--compat", "reference", "--prompt", "reference"])
    assert res.exit_code == 0, res.output
    config = json.loads(out.read_text())["config"]
    assert config["compat"] == "reference" and config["prompt"] == "reference"
    assert config["prompt_digest"] == digest_text(load_template("reference"))
    bad = CliRunner().invoke(app, [*args, "--compat", "verl"])
    assert bad.exit_code == 2 and "verl" in bad.output


@pytest.mark.parametrize("compat", ["reference", "ours"])
def test_serve_compat_reference_answers_as_the_reference_engine(model_dir, compat):
    """One block allowed: the reference engine's response ends with the block's summary."""
    loaded = load_model(str(model_dir))
    engine = Engine(loaded.model, loaded.tokenizer, loaded.tag_ids)
    options = ServeOptions("tiny", compat=compat, max_blocks=1)
    policy = ScriptedPolicy(loaded.tokenizer, lambda i, s: "42")
    body = {"model": "tiny", "prompt": "one", "max_tokens": 40}
    with OpenAIServer(engine, loaded.tokenizer, options, port=0, logits_processors=[policy],
                      log_requests=False) as server:
        response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    block = "a<Parallel><Path>aa</Path><Path>aaa</Path></Parallel>"
    if compat == "reference":
        assert choice["text"] == block + "\n<Summary>a</Summary>" and choice["finish_reason"] == "stop"
    else:
        assert choice["text"] == block + "<Summary>a</Summary>\nFinal Answer: 42"
