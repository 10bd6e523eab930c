"""The six tags as special tokens of a Hugging Face tokenizer and rows of a model's embeddings.

1. ``add_tags(tokenizer, model=None)`` adds the tags as special tokens (idempotent), grows the model's
   embeddings when the new ids do not fit, and initialises each new tag's input-embedding row (and
   its LM-head row when the head is not tied) as the mean of the rows of the pieces the tokenizer
   split the tag's text into before it knew the tag (``<Parallel>`` -> ``<``, ``Parallel``, ``>``),
   so a pretrained model starts close to its reading of the words. The paper adds special tokens
   without saying how their rows start; this mean-of-pieces start is our choice.
2. ``tag_ids(tokenizer)`` reads the ids back and fails loud when a tag is missing or not one token.

Departures and things to know:
- Each tag is an ``AddedToken(special=True, normalized=False, lstrip=False, rstrip=False)``: matched
  before any pre-tokenisation and never merged with the whitespace around it, so a newline before or
  after a tag stays its own token and character offsets map back exactly.
- Because they are *special*, ``tokenizer.decode(ids, skip_special_tokens=True)`` drops them. Decode
  responses with ``skip_special_tokens=False`` (and strip EOS yourself) wherever the text is parsed.
- Rows are initialised only for tags this call adds to the tokenizer or that the model had no row
  for. A model whose vocabulary is already padded past the tokenizer (Qwen3 has 151,936 rows for
  151,669 tokens) gets no resize, but the rows of newly added tags are still initialised.
"""

from __future__ import annotations

import re

import torch
from tokenizers import AddedToken

from parallel_r1.format.tags import TAGS

_TAG_PIECES = re.compile(r"(</?)(\w+)(>)")


def _single_id(tokenizer, text: str) -> int | None:
    """The id of ``text`` when the tokenizer encodes it as exactly one token, else None."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def _piece_ids(tokenizer, tag: str) -> list[int]:
    """Ids of the ordinary pieces of ``tag``: its text as the tokenizer split it before the tag was
    added, or (when the tag is already a token) its ``<``/``</``, name and ``>`` encoded one by one."""
    ids = tokenizer(tag, add_special_tokens=False)["input_ids"]
    if len(ids) > 1:
        return ids
    pieces = _TAG_PIECES.fullmatch(tag).groups()
    ids = [i for p in pieces for i in tokenizer(p, add_special_tokens=False)["input_ids"]]
    assert ids, f"the tokenizer encodes the pieces of {tag!r} to nothing"
    return ids


@torch.no_grad()
def _init_rows(model, new: dict[str, int], pieces: dict[str, list[int]]) -> None:
    """Row of each new tag := mean of its pieces' rows, in the input embedding and an untied head."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    head_w = head.weight if head is not None and head.weight is not emb else None
    for tag, tid in new.items():
        src = torch.tensor(pieces[tag], device=emb.device)
        emb[tid] = emb[src].float().mean(0).to(emb.dtype)
        if head_w is not None:
            head_w[tid] = head_w[src].float().mean(0).to(head_w.dtype)


def add_tags(tokenizer, model=None) -> dict[str, int]:
    """Add the six tags as special tokens (idempotent); resize and initialise ``model``; return tag->id."""
    before = {t: _single_id(tokenizer, t) for t in TAGS}
    pieces = {t: _piece_ids(tokenizer, t) for t in TAGS}
    tokens = [AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False) for t in TAGS]
    tokenizer.add_special_tokens({"extra_special_tokens": tokens}, replace_extra_special_tokens=False)
    ids = tag_ids(tokenizer)
    if model is not None:
        rows = model.get_input_embeddings().weight.shape[0]
        need = {t: i for t, i in ids.items() if before[t] != i or i >= rows}
        if max(ids.values()) >= rows:
            # mean_resizing=False: the statistical init is slow on big vocabularies and we overwrite
            # the rows we care about just below.
            model.resize_token_embeddings(max(len(tokenizer), max(ids.values()) + 1), mean_resizing=False)
        _init_rows(model, need, pieces)
    return ids


def tag_ids(tokenizer) -> dict[str, int]:
    """tag -> token id; raises ValueError naming each tag that is missing or not a single token."""
    out, problems = {}, []
    for tag in TAGS:
        tid = tokenizer.convert_tokens_to_ids(tag)
        encoded = tokenizer(tag, add_special_tokens=False)["input_ids"]
        if tid is None or tid == tokenizer.unk_token_id or encoded != [tid]:
            problems.append(f"{tag!r} encodes to {encoded}")
        else:
            out[tag] = tid
    if problems:
        raise ValueError(
            "the tokenizer does not hold the parallel-thinking tags as single tokens: "
            + "; ".join(problems)
            + ". Call parallel_r1.structure.add_tags(tokenizer, model) first."
        )
    return out
