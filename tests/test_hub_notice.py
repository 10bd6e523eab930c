"""A named problem set with no local data folder says, once and before it starts, that it goes to the
Hugging Face hub (issue 18, item 9: it used to try the hub silently, retrying with back-off).

The hub cannot be reached from the test machines, so ``datasets`` is a stand-in module whose
``load_dataset`` notes what had been logged when it was called and then fails as an offline client does.
"""

from __future__ import annotations

import logging
import sys
import types

import pytest

from parallel_r1.data.problems import DATA_DIR_ENV, ProblemSourceError, load_problems


def test_hub_fetch_is_announced_once_before_it_starts(monkeypatch, caplog):
    calls = []

    def load_dataset(repo, config, split):
        calls.append([r.getMessage() for r in caplog.records])  # what was logged before the fetch
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="parallel_r1.data"), pytest.raises(ProblemSourceError,
                                                                                      match="could not fetch"):
        load_problems("aime24")
    assert len(calls) == 1 and len(calls[0]) == 1
    notice = calls[0][0]
    for part in ("'aime24'", "--data-dir", DATA_DIR_ENV, "HuggingFaceH4/aime_2024", "hub", "HF_HUB_OFFLINE"):
        assert part in notice, notice
    assert len(caplog.records) == 1  # once: nothing more is logged after the fetch


def test_local_data_dir_is_read_without_a_notice(tmp_path, caplog):
    (tmp_path / "aime24.jsonl").write_text('{"id": "a", "question": "1 + 1?", "answer": "2"}\n')
    with caplog.at_level(logging.WARNING, logger="parallel_r1.data"):
        assert [p.answer for p in load_problems("aime24", data_dir=tmp_path)] == ["2"]
    assert caplog.records == []
