"""Replace known secrets (run token, github/wandb/hf tokens) by `***`.

Every log entry bootstrap ships goes through a Redactor (docs/protocol.md: Log entries), so it
must cost next to nothing when no secret is present, which is nearly always:
a few C-level substring searches decide that, and only a hit pays for the
regex substitution.

The secrets are compiled into one regex shaped like a trie (shared prefixes
factored out), so matching costs about the length of a secret per position
whatever the number of secrets, and a longer secret wins over a shorter one
that is its prefix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

MASK = "***"
# Shorter "secrets" would mask ordinary words all over the log and are not
# real credentials anyway.
MIN_SECRET_LEN = 4
# Up to this many secrets, `in` checks (fast C searches) decide presence;
# beyond it the trie regex is cheaper than one scan per secret.
_DIRECT_CHECK_MAX = 8
# Characters a JSON encoder may escape; a secret containing one could appear
# in the decoded text without appearing verbatim in the raw line.
_JSON_ESCAPED = re.compile(r'["\\/\x00-\x1f]')


def _trie_regex(words: Iterable[str]) -> str:
    """A regex matching any of `words`, preferring the longest at each position."""
    trie: dict[str | None, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[None] = {}  # a word ends here

    def build(node: dict[str | None, Any]) -> str:
        alternatives = []
        for ch in sorted(c for c in node if c is not None):
            # Follow single-child runs iteratively: recursion depth is then the
            # number of branch points, not the length of a (possibly huge) secret.
            chain, child = [ch], node[ch]
            while len(child) == 1 and None not in child:
                ((ch, child),) = child.items()
                chain.append(ch)
            alternatives.append(re.escape("".join(chain)) + build(child))
        if not alternatives:
            return ""
        joined = alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"
        if None in node:
            # Greedy optional: try the longer secret first, else end here.
            return "(?:" + joined + ")?"
        return joined

    return build(trie)


def _bytes_regex(words: Iterable[bytes]) -> bytes:
    # Latin-1 maps bytes 1:1 to code points, so the str trie serves bytes too.
    return _trie_regex(w.decode("latin-1") for w in words).encode("latin-1")


@dataclass(frozen=True)
class Redactor:
    """The secrets of one run; `text()` and `value()` mask them with `***`.

    `secrets` may be any iterable of strings; it is normalised to a tuple,
    longest first, without duplicates and without values under 4 characters.
    The repr never shows them.
    """

    secrets: tuple[str, ...] = field(default=(), repr=False)
    _pattern: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)
    _bytes_pattern: re.Pattern[bytes] | None = field(init=False, repr=False, compare=False, default=None)
    _bytes_secrets: tuple[bytes, ...] = field(init=False, repr=False, compare=False, default=())
    _json_safe: bool = field(init=False, repr=False, compare=False, default=True)

    def __post_init__(self) -> None:
        given = (self.secrets,) if isinstance(self.secrets, str) else self.secrets
        unique = {s for s in given if isinstance(s, str) and len(s) >= MIN_SECRET_LEN}
        ordered = tuple(sorted(unique, key=lambda s: (-len(s), s)))
        object.__setattr__(self, "secrets", ordered)
        if not ordered:
            return
        encoded = tuple(s.encode("utf-8", "surrogatepass") for s in ordered)
        object.__setattr__(self, "_bytes_secrets", encoded)
        object.__setattr__(self, "_pattern", re.compile(_trie_regex(ordered)))
        object.__setattr__(self, "_bytes_pattern", re.compile(_bytes_regex(encoded)))
        object.__setattr__(self, "_json_safe", not any(_JSON_ESCAPED.search(s) for s in ordered))

    @classmethod
    def of(cls, *secrets: str | None) -> Redactor:
        """Build from possibly missing values (None and '' are ignored)."""
        return cls(tuple(s for s in secrets if s))

    def __bool__(self) -> bool:
        return bool(self.secrets)

    @property
    def longest(self) -> int:
        """Length of the longest secret (0 when there is none)."""
        return len(self.secrets[0]) if self.secrets else 0

    def present(self, s: str) -> bool:
        """Whether any secret occurs in `s`."""
        if self._pattern is None:
            return False
        if len(self.secrets) > _DIRECT_CHECK_MAX:
            return self._pattern.search(s) is not None
        for secret in self.secrets:  # a plain loop: no generator on the hot path
            if secret in s:
                return True
        return False

    def might_be_in_json(self, raw: bytes) -> bool:
        """False only when no secret can appear anywhere in the decoded form of
        the JSON text `raw` (so walking the parsed value can be skipped)."""
        if self._bytes_pattern is None:
            return False
        if not self._json_safe or b"\\u" in raw:
            # An escape could spell a secret that is not in `raw` verbatim.
            return True
        if len(self._bytes_secrets) > _DIRECT_CHECK_MAX:
            return self._bytes_pattern.search(raw) is not None
        for secret in self._bytes_secrets:
            if secret in raw:
                return True
        return False

    def text(self, s: str) -> str:
        """`s` with every secret replaced by `***`."""
        if self._pattern is None or not self.present(s):
            return s
        return self._pattern.sub(MASK, s)

    def value(self, obj: Any) -> Any:
        """A JSON value with every secret masked in its strings and dict keys."""
        if self._pattern is None:
            return obj
        return self._value(obj)

    def _value(self, obj: Any) -> Any:
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {
                (self.text(k) if isinstance(k, str) else k): self._value(v) for k, v in obj.items()
            }
        if isinstance(obj, (list, tuple)):
            return [self._value(v) for v in obj]
        return obj



# The user:password part of a URL ("https://user:token@host/…"): everything
# between "://" and the last "@" before the host's end.
_URL_USERINFO = re.compile(r"(://)[^/\s]*@")


def mask_url_userinfo(text: str) -> str:
    """`text` with the userinfo of every URL in it replaced by `***`."""
    return _URL_USERINFO.sub(r"\1" + MASK + "@", text)


def mask(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (and its URL-quoted form, as it appears in a
    URL) and every URL's userinfo replaced by `***`; for one-off messages, where
    building a Redactor once per run would not pay."""
    variants = {v for s in secrets if s for v in (s, quote(s, safe=""))}
    return mask_url_userinfo(Redactor(tuple(variants)).text(text))
