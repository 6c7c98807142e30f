"""Who is in a picture, read from its file name, so that a plain folder or CSV gets splits that keep a
person (and a video) on one side: the frames of one CK+ sequence in train and test make a test score
that measures memory, not recognition.

A pattern is a regular expression with a named group ``subject`` (and optionally ``video``), matched
against the image's path relative to the dataset root; ``auto`` tries the presets and keeps the first
that reads a subject from nearly every file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ferdata.core.errors import UsageError

PRESETS: dict[str, str] = {
    # CK+ / CK+48: S005_001_00000011.png (subject S005, sequence 001)
    "ckplus": r"(?:^|/)(?P<video>(?P<subject>S\d{3})_\d{3})_\d+\.\w+$",
    # JAFFE: KA.AN1.39.tiff (poser KA)
    "jaffe": r"(?:^|/)(?P<subject>[A-Z]{2})\.[A-Z]{2}\d*\.\d+\.\w+$",
    # KDEF: AF01ANS.JPG (session A, female 01, angry, straight)
    "kdef": r"(?:^|/)[AB](?P<subject>[FM]\d{2})[A-Z]{2}(?:S|HL|HR|FL|FR)\.\w+$",
    # Oulu-CASIA / MMI-like layouts: <class>/<subject>/<file> (a folder per person under each class)
    "subfolder": r"^(?:[^/]+/)*?(?P<subject>[^/]+)/[^/]+$",
}
AUTO_ORDER = ("ckplus", "jaffe", "kdef")  # subfolder only when asked: any nested layout would match it
AUTO_SHARE = 0.95  # a preset must read a subject from this share of the files to be chosen


@dataclass(frozen=True)
class Subjects:
    """How a dataset's subjects were found: the pattern's name (or None) and the per-file reading."""

    name: str | None
    regex: re.Pattern[str] | None

    def read(self, rel: str) -> tuple[str | None, str | None]:
        """(subject, video) of the file at ``rel`` (None where the pattern does not match)."""
        if self.regex is None:
            return None, None
        match = self.regex.search(rel)
        if match is None:
            return None, None
        groups = match.groupdict()
        return groups.get("subject") or None, groups.get("video") or None


def compile_pattern(pattern: str, option: str) -> re.Pattern[str]:
    try:
        regex = re.compile(PRESETS.get(pattern, pattern))
    except re.error as exc:
        raise UsageError(f"{option} {pattern!r} is not a regular expression ({exc})") from None
    if "subject" not in regex.groupindex:
        raise UsageError(
            f"{option} {pattern!r} has no (?P<subject>...) group; use auto, none, "
            f"{', '.join(PRESETS)}, or a regex naming the subject"
        )
    return regex


def choose(pattern: str, paths: list[str], *, option: str) -> Subjects:
    """The subject reading for ``pattern`` (``auto``: the first preset that reads nearly every file)."""
    if pattern == "none":
        return Subjects(None, None)
    if pattern != "auto":
        return Subjects(pattern if pattern in PRESETS else "custom", compile_pattern(pattern, option))
    for name in AUTO_ORDER:
        regex = re.compile(PRESETS[name])
        hits = [m.group("subject") for m in map(regex.search, paths) if m]
        if paths and len(hits) >= AUTO_SHARE * len(paths) and len(set(hits)) > 1:
            return Subjects(name, regex)
    return Subjects(None, None)
