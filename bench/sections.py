"""Sections of ``bench/results.md`` that one benchmark writes and the others keep: each lies
between its own begin and end markers, is replaced in place when written again and carried over
whole when another benchmark rewrites the rest of the file."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MarkedSection:
    """A section by its markers (HTML comments, invisible in the rendered page)."""

    begin: str
    end: str

    def replaced(self, document: str, section: str) -> str:
        """``document`` with this section replaced by ``section`` (appended when it has none)."""
        body = section.strip("\n") + "\n"
        if self.begin in document and self.end in document:
            head, rest = document.split(self.begin, 1)
            tail = rest.split(self.end, 1)[1].lstrip("\n")
            return head.rstrip("\n") + "\n\n" + body + ("\n" + tail if tail.strip() else "")
        return document.rstrip("\n") + "\n\n" + body

    def found_in(self, document: str) -> str:
        """This section of ``document`` with its markers (empty when it has none)."""
        if self.begin not in document or self.end not in document:
            return ""
        inside = document.split(self.begin, 1)[1].split(self.end, 1)[0]
        return f"\n{self.begin}{inside}{self.end}\n"
