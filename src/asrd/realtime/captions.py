"""Partial text that only ever grows: the words two successive hypotheses of the open
utterance agree on (LocalAgreement-2), never the newest hypothesis's last word (the audio may
end in the middle of it)."""

from __future__ import annotations

import re

_NOT_WORD = re.compile(r"[^\w']+")


def _key(word: str) -> str:
    """A word as compared: case and punctuation aside (`so,` agrees with `So`)."""
    return _NOT_WORD.sub("", word.lower())


class StablePrefix:
    def __init__(self) -> None:
        self._previous: list[str] = []
        self.emitted = 0  # words handed out
        self.text = ""  # all deltas so far, joined

    def update(self, hypothesis: str) -> str:
        """The delta to send for a new hypothesis ("" when nothing new is agreed on)."""
        words = hypothesis.split()
        agreed = 0
        for old, new in zip(self._previous, words[:-1], strict=False):
            if _key(old) != _key(new):
                break
            agreed += 1
        self._previous = words
        if agreed <= self.emitted:
            return ""
        delta = " ".join(words[self.emitted : agreed])
        if self.text:
            delta = " " + delta
        self.emitted = agreed
        self.text += delta
        return delta
