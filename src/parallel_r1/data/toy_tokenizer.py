"""A small tokenizer for the toy world, trained from scratch with ``tokenizers`` and wrapped as a
Hugging Face ``PreTrainedTokenizerFast`` (``save_pretrained`` / ``from_pretrained`` as for any model).

1. Model: byte-level BPE trained on toy texts (questions, step-by-step solutions, teacher traces), so
   every toy word is one token, while any other text still encodes, byte by byte, and decodes back
   exactly: ``decode(encode(text)) == text`` for every string, not only toy ones.
2. Digits are split into single characters before BPE (``Digits(individual_digits=True)``), so a
   number is a sequence of digit tokens and arithmetic can generalise across magnitudes.
3. Special tokens: ``<|pad|>`` (id 0), ``<|bos|>`` (1), ``<|eos|>`` (2), then the six tags (3-8) as
   ``AddedToken(special=True, normalized=False, lstrip=False, rstrip=False)`` registered as extra
   special tokens, exactly as ``parallel_r1.structure.add_tags`` adds them to a real tokenizer (so
   calling it on this tokenizer changes nothing). Being special, the tags are dropped by
   ``decode(..., skip_special_tokens=True)``: decode responses with ``skip_special_tokens=False``.
4. Nothing is added around an encoding (no automatic bos/eos), like Qwen tokenizers; the caller adds
   ``eos`` after a training response. ``clean_up_tokenization_spaces`` is off, else decoding would
   rewrite ``" ."`` and break exact round trips.
5. Prompts are plain text. The chat template only joins message contents with newlines and, with
   ``add_generation_prompt``, appends one newline: the prompt of a question is ``question + "\\n"``,
   the same text ``toy.pretraining_text`` puts before a solution.

6. The vocabulary (about 670 tokens) is learnt from ``toy_corpus()`` plus the project's prompt
   templates (``data/prompts.py``), so that a rendered prompt costs a token per word: editing a
   template's wording changes the vocabulary. A trained model must keep the tokenizer saved beside
   it (``save_pretrained`` both), never rebuild it.

Departure: the paper uses the base model's own tokenizer; the toy world needs one small enough for a
tiny model on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from parallel_r1.data.prompts import TEMPLATES
from parallel_r1.data.teacher import teacher_traces
from parallel_r1.data.toy import pretraining_text, toy_structures
from parallel_r1.format.tags import TAGS

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
# Newlines are emitted as expressions: transformers renders templates with trim_blocks, which would
# eat a literal newline after a block tag.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['content'] }}{% if not loop.last %}{{ '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n' }}{% endif %}"
)
DEFAULT_VOCAB_SIZE = 1024  # an upper bound: training stops when no pair occurs twice


def toy_corpus(n_per_split: int = 300, seed: int = 0) -> list[str]:
    """Training text for the tokenizer: prompt + sequential solution and a teacher trace per problem."""
    texts = []
    for split in ("easy", "hard"):
        toys = toy_structures(split, n_per_split, seed)
        texts += [pretraining_text(t) for t in toys]
        texts += [t["response"] for t in teacher_traces(toys, seed)]
    return texts


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )


def build_toy_tokenizer(
    texts: Iterable[str] | None = None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    extra_texts: Iterable[str] = tuple(TEMPLATES.values()),
) -> PreTrainedTokenizerFast:
    """Train the tokenizer on ``texts`` (default: ``toy_corpus()``) plus ``extra_texts`` (default:
    the project's prompt templates, so a rendered prompt costs one token per word, not per byte).
    Deterministic: the same inputs give the same vocabulary and ids."""
    # Extra texts are counted twice: BPE only merges pairs seen at least twice (min_frequency).
    corpus = list(toy_corpus() if texts is None else texts) + 2 * list(extra_texts)
    assert corpus, "the tokenizer needs some text to train on"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    # The tags are added before training so that the corpus is split around them (they never take part
    # in merges) and, listed as the trainer's special tokens, they get ids 3-8 after pad/bos/eos.
    specials = [
        AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False)
        for t in (PAD, BOS, EOS, *TAGS)
    ]
    tok.add_special_tokens(specials)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=list(TAGS),
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
    _check(fast)
    return fast


def _check(tokenizer: PreTrainedTokenizerFast) -> None:
    """Fail loud if the special tokens did not land on the documented ids."""
    expected = {PAD: 0, BOS: 1, EOS: 2} | {tag: 3 + i for i, tag in enumerate(TAGS)}
    got = {t: tokenizer.convert_tokens_to_ids(t) for t in expected}
    assert got == expected, f"toy tokenizer special ids {got} != {expected}"
    for tag in TAGS:
        ids = tokenizer(tag, add_special_tokens=False)["input_ids"]
        assert ids == [expected[tag]], f"tag {tag!r} encodes to {ids}, expected one token"


def load_toy_tokenizer(path: str) -> PreTrainedTokenizerFast:
    """Load a saved toy tokenizer (``AutoTokenizer.from_pretrained(path)`` works too)."""
    tok = PreTrainedTokenizerFast.from_pretrained(path)
    _check(tok)
    return tok
