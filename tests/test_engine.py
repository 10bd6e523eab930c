"""Behaviour of the branching engine on a tiny random Qwen3 with tags forced by a logits processor."""

from __future__ import annotations

import pytest
import torch

from parallel_r1.engine import Engine, SamplingConfig
from parallel_r1.engine.testing import Force, Script, random_qwen3
from parallel_r1.format import parse
from parallel_r1.format.tags import (
    PARALLEL_CLOSE,
    PARALLEL_OPEN,
    PATH_CLOSE,
    PATH_OPEN,
    SUMMARY_CLOSE,
    SUMMARY_OPEN,
    TAGS,
)
from parallel_r1.structure import find_blocks


@pytest.fixture(scope="module")
def engine(tok):
    return Engine(random_qwen3(len(tok), "tiny", seed=0), tok)


def prompts(tok):
    return [tok.encode("what is 2+3?"), tok.encode("x"), tok.encode("a longer prompt, with more tokens in it")]


def in_main(n):
    """Main chain (no open block) with n response tokens so far."""
    return lambda c: c.phase == "main" and len(c.tokens) == n


def in_path(index, n):
    """Path ``index`` holding n ids so far (its <Path> included)."""
    return lambda c: c.phase == "path" and c.path_index == index and len(c.tokens) == n


def quiet(tok, tags, forces=()):
    """Script that bans EOS, ``<Parallel>`` and the closing tags (the caps insert those), then applies
    ``forces`` (a forced token overrides its ban)."""
    ban = [tok.eos_token_id, tags[PATH_CLOSE], tags[SUMMARY_CLOSE], tags[PARALLEL_OPEN]]
    return Script(forces, ban=ban)


def check_rollout(r, tok, tags):
    """Invariants every rollout must satisfy."""
    n = len(r.response_ids)
    assert len(r.loss_mask) == n and len(r.logprobs) == n
    for token, loss, lp in zip(r.response_ids, r.loss_mask, r.logprobs, strict=True):
        assert loss in (0, 1)
        assert (lp == 0.0) if loss == 0 else (lp <= 0.0)
        if token in (tags[PATH_OPEN], tags[PARALLEL_CLOSE], tags[SUMMARY_OPEN]) and r.mode != "sequential":
            assert loss == 0, "engine-inserted tags carry no loss"
    if r.mode != "sequential":
        assert find_blocks(r.response_ids, tags) == r.blocks, "spans must read back from the ids"
        longest = sum(max((e - s for s, e in b.paths), default=0) for b in r.blocks)
        all_paths = sum(e - s for b in r.blocks for s, e in b.paths)
        assert r.critical_path_tokens == n - all_paths + longest
    else:
        assert r.critical_path_tokens == n
    ids = r.response_ids[:-1] if r.finish_reason == "eos" else r.response_ids
    assert r.text == tok.decode(ids, skip_special_tokens=False)
    if r.mode != "sequential" and all(b.close is not None for b in r.blocks):  # the text level agrees
        assert parse(r.text).num_parallel == len(r.blocks)
        whole = all(b.close is not None and len(b.paths) >= 2 and b.summary for b in r.blocks)
        if r.finish_reason != "length" and whole:
            assert parse(r.text).valid, parse(r.text).errors


def cfg(**kw):
    base = dict(max_new_tokens=60, max_path_tokens=3, max_summary_tokens=2, seed=0)
    return SamplingConfig(**{**base, **kw})


@pytest.mark.parametrize("mode", ["unseen", "seen"])
@pytest.mark.parametrize("num_paths", [1, 2, 3, 4])
def test_fork_layout_and_loss_mask(engine, tok, tags, mode, num_paths):
    script = quiet(tok, tags, [Force(tags[PARALLEL_OPEN], in_main(2))])
    (r,) = engine.generate([tok.encode("hi")], 1, cfg(mode=mode, num_paths=num_paths, max_new_tokens=40), [script])
    check_rollout(r, tok, tags)
    assert r.finish_reason == "length" and len(r.response_ids) == 40
    (b,) = r.blocks
    assert b.parallel == 2 and r.loss_mask[2] == 1
    assert b.paths == [(3 + 5 * j, 8 + 5 * j) for j in range(num_paths)]  # <Path> + 3 + </Path>
    for s, e in b.paths:
        assert r.response_ids[s] == tags[PATH_OPEN] and r.response_ids[e - 1] == tags[PATH_CLOSE]
        assert r.loss_mask[s:e] == [0, 1, 1, 1, 0], "the closing tag at the cap is inserted"
    close = 3 + 5 * num_paths
    assert b.close == close and b.summary == (close + 1, close + 5)
    assert r.response_ids[close + 4] == tags[SUMMARY_CLOSE] and r.loss_mask[close + 1 : close + 5] == [0, 1, 1, 0]
    assert r.critical_path_tokens == 40 - 5 * (num_paths - 1)


def test_parallel_as_first_token(engine, tok, tags):
    script = quiet(tok, tags, [Force(tags[PARALLEL_OPEN], in_main(0))])
    (r,) = engine.generate([tok.encode("go")], 1, cfg(max_new_tokens=20), [script])
    check_rollout(r, tok, tags)
    assert r.blocks[0].parallel == 0 and r.response_ids[0] == tags[PARALLEL_OPEN]
    assert r.text.startswith(PARALLEL_OPEN + PATH_OPEN)


def test_eos_inside_path_closes_only_that_path(engine, tok, tags):
    eos = tok.eos_token_id
    script = quiet(tok, tags, [Force(tags[PARALLEL_OPEN], in_main(1)), Force(eos, in_path(0, 2))])
    (r,) = engine.generate([tok.encode("q")], 1, cfg(max_new_tokens=30, max_path_tokens=4), [script])
    check_rollout(r, tok, tags)
    (s0, e0), (s1, e1) = r.blocks[0].paths
    assert e0 - s0 == 3 and r.response_ids[e0 - 1] == tags[PATH_CLOSE] and r.loss_mask[e0 - 1] == 0
    assert e1 - s1 == 6, "the sibling path runs on to its cap"
    assert eos not in r.response_ids and r.finish_reason == "length"


def test_eos_inside_summary_closes_it_and_main_resumes(engine, tok, tags):
    first_in_summary = lambda c: c.phase == "summary" and c.tokens[-1] == tags[SUMMARY_OPEN]  # noqa: E731
    forces = [Force(tags[PARALLEL_OPEN], in_main(1)), Force(tok.eos_token_id, first_in_summary)]
    (r,) = engine.generate([tok.encode("q")], 1, cfg(max_new_tokens=25, max_summary_tokens=5),
                           [quiet(tok, tags, forces)])
    check_rollout(r, tok, tags)
    s, e = r.blocks[0].summary
    assert e - s == 2 and r.response_ids[s + 1] == tags[SUMMARY_CLOSE] and r.loss_mask[s + 1] == 0
    assert r.finish_reason == "length" and len(r.response_ids) == 25


def test_sampled_closing_tags_carry_loss(engine, tok, tags):
    forces = [
        Force(tags[PARALLEL_OPEN], in_main(1)),
        Force(tags[PATH_CLOSE], in_path(1, 2)),
        Force(tags[SUMMARY_CLOSE], lambda c: c.phase == "summary" and c.tokens[-2] == tags[SUMMARY_OPEN]),
    ]
    script = Script(forces, ban=[tok.eos_token_id, tags[PATH_CLOSE], tags[SUMMARY_CLOSE], tags[PARALLEL_OPEN]])
    (r,) = engine.generate([tok.encode("q")], 1, cfg(max_new_tokens=30, max_summary_tokens=9), [script])
    check_rollout(r, tok, tags)
    b = r.blocks[0]
    s1, e1 = b.paths[1]
    assert e1 - s1 == 3 and r.loss_mask[e1 - 1] == 1, "a sampled </Path> is trained on"
    s, e = b.summary
    assert e - s == 3 and r.loss_mask[e - 1] == 1, "a sampled </Summary> is trained on"


def test_budget_hit_inside_a_path(engine, tok, tags):
    script = quiet(tok, tags, [Force(tags[PARALLEL_OPEN], in_main(2))])
    (r,) = engine.generate([tok.encode("q")], 1, cfg(max_new_tokens=7, max_path_tokens=9), [script])
    check_rollout(r, tok, tags)
    # 2 main + <Parallel> + 2 <Path> = 5, then 2 more tokens: one per path, so both paths are open.
    assert r.finish_reason == "length"
    (b,) = r.blocks
    assert b.close is None and b.summary is None
    assert b.paths == [(3, 5)], "only the first unclosed path is kept, so the ids read back the same"
    assert len(r.response_ids) == 5


def test_budget_hit_inside_a_path_keeps_closed_siblings(engine, tok, tags):
    forces = [Force(tags[PARALLEL_OPEN], in_main(1)), Force(tags[PATH_CLOSE], in_path(1, 2))]
    script = Script(forces, ban=[tok.eos_token_id, tags[PATH_CLOSE], tags[PARALLEL_OPEN]])
    (r,) = engine.generate([tok.encode("q")], 1, cfg(max_new_tokens=12, max_path_tokens=20, num_paths=3), [script])
    check_rollout(r, tok, tags)
    (b,) = r.blocks
    assert b.close is None and len(b.paths) == 2
    assert r.response_ids[b.paths[0][1] - 1] == tags[PATH_CLOSE], "the closed path comes first"
    assert b.paths[1][1] == len(r.response_ids)


def test_budget_ending_on_parallel_leaves_a_block_without_paths(engine, tok, tags):
    """Regression: a response cut right after <Parallel> used to record no block at all, so its spans
    did not read back from the ids (find_blocks sees an open block with no paths)."""
    script = quiet(tok, tags, [Force(tags[PARALLEL_OPEN], in_main(3))])
    (r,) = engine.generate([tok.encode("q")], 1, cfg(max_new_tokens=4), [script])
    check_rollout(r, tok, tags)
    assert r.finish_reason == "length" and r.response_ids[-1] == tags[PARALLEL_OPEN]
    assert len(r.blocks) == 1 and r.blocks[0].paths == [] and r.blocks[0].close is None


def test_budget_hit_inside_the_summary(engine, tok, tags):
    script = quiet(tok, tags, [Force(tags[PARALLEL_OPEN], in_main(0))])
    # 1 + 2 * 5 + 2 = 13 tokens reach the summary; 2 summary tokens fit
    (r,) = engine.generate([tok.encode("q")], 1, cfg(max_new_tokens=15, max_summary_tokens=8), [script])
    check_rollout(r, tok, tags)
    (b,) = r.blocks
    assert r.finish_reason == "length" and b.summary == (12, 15)
    assert tags[SUMMARY_CLOSE] not in r.response_ids


def test_parallel_and_other_tags_suppressed_inside_paths_and_summaries(engine, tok, tags):
    boost_all_tags = [Force(tags[t], lambda c: c.phase != "main") for t in TAGS if t != PATH_CLOSE]
    forces = [Force(tags[PARALLEL_OPEN], in_main(0))] + boost_all_tags
    script = Script(forces, ban=[tok.eos_token_id])
    rs = engine.generate(prompts(tok), 2, cfg(max_new_tokens=40, max_path_tokens=6, max_summary_tokens=6), [script])
    for r in rs:
        check_rollout(r, tok, tags)
        b = r.blocks[0]
        for s, e in b.paths:
            inner = r.response_ids[s + 1 : e - 1]
            assert not set(inner) & set(tags.values()), "only </Path> may end a path"
        s, e = b.summary
        assert not set(r.response_ids[s + 1 : e - 1]) & set(tags.values())


def test_max_blocks_suppresses_parallel(engine, tok, tags):
    always = Force(tags[PARALLEL_OPEN], lambda c: c.phase == "main")
    script = Script([always], ban=[tok.eos_token_id, tags[PATH_CLOSE], tags[SUMMARY_CLOSE]])
    config = cfg(max_new_tokens=80, max_path_tokens=1, max_summary_tokens=1, max_blocks=3)
    (r,) = engine.generate([tok.encode("q")], 1, config, [script])
    check_rollout(r, tok, tags)
    assert len(r.blocks) == 3
    assert r.response_ids.count(tags[PARALLEL_OPEN]) == 3
    assert [b.parallel for b in r.blocks] == [0, 11, 22]  # back to back: <Parallel> 2x3 </Parallel> 3


def test_rows_finish_at_different_times_and_batching_does_not_change_greedy_output(engine, tok, tags):
    stop_at = {0: 5, 1: 30, 2: 50}

    def script(first=0):  # prompt i of the full list is prompt i - first of a call
        forces = [
            Force(tags[PARALLEL_OPEN], lambda c: c.phase == "main" and len(c.tokens) == 2 + c.prompt_index + first),
            Force(tok.eos_token_id,
                  lambda c: c.phase == "main" and len(c.tokens) >= stop_at[c.prompt_index + first]),
        ]
        return Script(forces, ban=[tok.eos_token_id, tags[PARALLEL_OPEN]])

    config = cfg(temperature=0.0, max_new_tokens=70, max_path_tokens=4)
    together = engine.generate(prompts(tok), 2, config, [script()])
    assert [r.finish_reason for r in together] == ["eos"] * 6
    lengths = [len(r.response_ids) for r in together]
    assert lengths[0] < lengths[2] < lengths[4]
    for r in together:
        check_rollout(r, tok, tags)
    small = Engine(engine.model, tok, max_batch_size=2)  # admission in groups while others decode
    staggered = small.generate(prompts(tok), 2, config, [script()])
    chunked = Engine(engine.model, tok, prefill_tokens=20).generate(prompts(tok), 2, config, [script()])
    assert [r.response_ids for r in chunked] == [r.response_ids for r in together], "prefill in chunks"
    packed = Engine(engine.model, tok, compact_above=0.0).generate(prompts(tok), 2, config, [script()])
    assert [r.response_ids for r in packed] == [r.response_ids for r in together], "cache re-packed"
    flat = [x for r in packed for x in r.logprobs]
    assert flat == pytest.approx([x for r in together for x in r.logprobs], abs=1e-5)
    one_by_one = [engine.generate([p], 2, config, [script(i)]) for i, p in enumerate(prompts(tok))]
    one_by_one = [r for group in one_by_one for r in group]
    for a, b, c in zip(together, staggered, one_by_one, strict=True):
        assert a.response_ids == b.response_ids == c.response_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
        assert a.logprobs == pytest.approx(c.logprobs, abs=1e-5)


def test_seeded_sampling_is_deterministic(engine, tok, tags):
    script = Script([Force(tags[PARALLEL_OPEN], in_main(3))])
    config = cfg(max_new_tokens=40, max_path_tokens=5, max_summary_tokens=4)
    a = engine.generate(prompts(tok), 2, config, [script])
    b = engine.generate(prompts(tok), 2, config, [script])
    c = engine.generate(prompts(tok), 2, cfg(max_new_tokens=40, max_path_tokens=5, seed=1), [script])
    assert [r.response_ids for r in a] == [r.response_ids for r in b]
    assert [r.logprobs for r in a] == [r.logprobs for r in b]
    assert [r.response_ids for r in a] != [r.response_ids for r in c]
    assert [(r.prompt_index, r.sample_index) for r in a] == [(i, s) for i in range(3) for s in range(2)]
    assert a[0].response_ids != a[1].response_ids, "samples of one prompt differ"
    for r in a:
        check_rollout(r, tok, tags)


def test_stop_string_ends_the_main_chain(engine, tok, tags):
    a, b = tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")
    forces = [Force(a, in_main(4)), Force(b, in_main(5))]
    script = Script(forces, ban=[tok.eos_token_id, tags[PARALLEL_OPEN], a, b])
    (r,) = engine.generate([tok.encode("q")], 1, cfg(stop=("ab",)), [script])
    assert r.finish_reason == "stop" and r.text.endswith("ab") and len(r.response_ids) == 6


def test_sequential_mode_treats_tags_as_tokens(engine, tok, tags):
    forces = [Force(tags[PARALLEL_OPEN], in_main(1)), Force(tags[PATH_OPEN], in_main(2)),
              Force(tags[PATH_CLOSE], in_main(4))]
    script = Script(forces, ban=[tok.eos_token_id])
    (r,) = engine.generate([tok.encode("q")], 1, cfg(mode="sequential", max_new_tokens=8), [script])
    check_rollout(r, tok, tags)
    assert r.response_ids[1:3] == [tags[PARALLEL_OPEN], tags[PATH_OPEN]] and r.response_ids[4] == tags[PATH_CLOSE]
    assert all(m == 1 for m in r.loss_mask), "nothing is inserted in sequential mode"
    assert r.blocks == find_blocks(r.response_ids, tags) and r.blocks[0].paths == [(2, 5)]


def test_bad_inputs_fail_loud(engine, tok):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[3], []])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([[3, 10**6]])
    with pytest.raises(ValueError, match="num_samples"):
        engine.generate([[3]], 0)
    model = random_qwen3(len(tok), "tiny", attn_implementation="eager")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attention"):
        Engine(model, tok)


def test_eager_attention_gives_the_sdpa_result(engine, tok, tags):
    eager = Engine(random_qwen3(len(tok), "tiny", seed=0, attn_implementation="eager"), tok)
    script = quiet(tok, tags, [Force(tags[PARALLEL_OPEN], in_main(1))])
    config = cfg(temperature=0.0, max_new_tokens=30)
    a = engine.generate(prompts(tok), 1, config, [script])
    b = eager.generate(prompts(tok), 1, config, [script])
    assert [r.response_ids for r in a] == [r.response_ids for r in b]
    assert torch.allclose(torch.tensor([x for r in a for x in r.logprobs]),
                          torch.tensor([x for r in b for x in r.logprobs]), atol=1e-5)
