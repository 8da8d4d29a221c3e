"""The stand-in's "model": a fixed word list, a deterministic word picker and a token counter.

Invariants (tests and the sidecar's audit checks rely on them):
- the same prompt text and choice index always give the same words, across processes
  and Python versions (the picker is seeded by SHA-256, not by `hash()`);
- a prompt counts one token per whitespace-separated word, at least one per prompt, and
  `POST /tokenize` counts the same way;
- the first token of an answer is a bare word, every later token is " " + word, so the
  answer text is the tokens concatenated, exactly as a real tokenizer streams;
- a few words are non-ASCII, so byte-exact proxies are exercised on multi-byte UTF-8.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator

WORDS: tuple[str, ...] = (
    "the", "audit", "record", "stream", "token", "model", "answer", "quiet", "river",
    "stone", "lantern", "harbor", "meadow", "copper", "signal", "window", "garden",
    "engine", "cloud", "bridge", "paper", "ember", "falcon", "orbit", "pixel", "maple",
    "cobalt", "drift", "echo", "fable", "glacier", "hollow", "island", "jasper", "kernel",
    "ledger", "marble", "nectar", "oasis", "prism", "quartz", "raven", "saffron", "timber",
    "umber", "velvet", "willow", "xenon", "yonder", "zephyr", "café", "naïve", "über",
    "smörgåsbord", "façade", "jalapeño", "crème", "Zürich", "São", "niño", "déjà", "vu",
    "résumé", "fjörd",
)  # fmt: skip

VOCAB_SIZE = 151_936  # Qwen2.5's vocabulary size: token ids look plausible


def prompt_token_count(text: str) -> int:
    """Tokens in one prompt: its whitespace-separated words, at least one."""
    return max(1, len(text.split()))


def token_ids(text: str) -> list[int]:
    """Deterministic ids, one per word (`prompt_token_count(text)` of them)."""
    words = text.split() or [""]
    return [zlib.crc32(word.encode()) % VOCAB_SIZE for word in words]


def detokenize(ids: Iterable[int]) -> str:
    """Text for token ids: one vocabulary word per id, space separated."""
    return " ".join(WORDS[i % len(WORDS)] for i in ids)


def _picker(seed_text: str, salt: str) -> Iterator[int]:
    """An endless stream of word indexes derived from SHA-256 of the seed."""
    counter = 0
    while True:
        block = hashlib.sha256(f"{salt}\x00{counter}\x00{seed_text}".encode()).digest()
        for offset in range(0, len(block) - 1, 2):
            yield int.from_bytes(block[offset : offset + 2], "big") % len(WORDS)
        counter += 1


def pick_words(seed_text: str, salt: str, count: int) -> list[str]:
    """`count` words chosen deterministically from `seed_text` and `salt`."""
    picker = _picker(seed_text, salt)
    return [WORDS[next(picker)] for _ in range(count)]


def as_tokens(words: list[str]) -> list[str]:
    """Streamed token texts for words: the first bare, the rest with a leading space."""
    return [word if i == 0 else f" {word}" for i, word in enumerate(words)]
