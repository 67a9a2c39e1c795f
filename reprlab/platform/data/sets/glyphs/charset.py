"""The glyphs data set's characters and classes.

Classes are characters of Latin (upper and lower case), Greek (upper and lower case, final sigma
included), Cyrillic (the Russian alphabet with the Ukrainian, Belarusian, Serbian and Macedonian
letters of U+0400..U+045F, plus Ґ and the Kazakh letters) and the digits, after merging look-alikes
across scripts (:data:`MERGE_GROUPS`) into one class. Class ids are ``0..C-1`` in the order
(script: digit, latin, greek, cyrillic; then code point of the class's representative) over the
classes that keep at least ``min_faces`` faces; dropped classes are recorded in the metadata.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache

SCRIPTS = ("digit", "latin", "greek", "cyrillic")

_CYRILLIC_EXTRA = (0x0490, 0x0491) + (  # Ukrainian Ghe with upturn, then Kazakh letters
    0x0492, 0x0493, 0x049A, 0x049B, 0x04A2, 0x04A3, 0x04AE, 0x04AF,
    0x04B0, 0x04B1, 0x04BA, 0x04BB, 0x04D8, 0x04D9, 0x04E8, 0x04E9,
)  # fmt: skip

#: Unicode code points of each script's characters (before merging).
SCRIPT_CODEPOINTS: dict[str, tuple[int, ...]] = {
    "digit": tuple(range(0x30, 0x3A)),
    "latin": tuple(range(0x41, 0x5B)) + tuple(range(0x61, 0x7B)),
    "greek": tuple(c for c in range(0x391, 0x3AA) if c != 0x3A2) + tuple(range(0x3B1, 0x3CA)),
    "cyrillic": tuple(range(0x400, 0x460)) + _CYRILLIC_EXTRA,
}

#: Look-alike characters merged into one class; the first name is the class's representative.
#: Chosen from the standard cross-script homoglyphs, checked by rendering: members draw (nearly)
#: identically in DejaVu Sans. Near look-alikes that differ in most faces stay separate classes:
#: Greek rho/p, nu/v, upsilon/u, eta/n, Cyrillic Ze/3, U/Y (upper case), soft sign/b.
MERGE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("LATIN CAPITAL LETTER A", "GREEK CAPITAL LETTER ALPHA", "CYRILLIC CAPITAL LETTER A"),
    ("LATIN CAPITAL LETTER B", "GREEK CAPITAL LETTER BETA", "CYRILLIC CAPITAL LETTER VE"),
    ("LATIN CAPITAL LETTER C", "CYRILLIC CAPITAL LETTER ES"),
    ("LATIN CAPITAL LETTER E", "GREEK CAPITAL LETTER EPSILON", "CYRILLIC CAPITAL LETTER IE"),
    ("LATIN CAPITAL LETTER H", "GREEK CAPITAL LETTER ETA", "CYRILLIC CAPITAL LETTER EN"),
    ("LATIN CAPITAL LETTER I", "GREEK CAPITAL LETTER IOTA",
     "CYRILLIC CAPITAL LETTER BYELORUSSIAN-UKRAINIAN I"),
    ("LATIN CAPITAL LETTER J", "CYRILLIC CAPITAL LETTER JE"),
    ("LATIN CAPITAL LETTER K", "GREEK CAPITAL LETTER KAPPA", "CYRILLIC CAPITAL LETTER KA"),
    ("LATIN CAPITAL LETTER M", "GREEK CAPITAL LETTER MU", "CYRILLIC CAPITAL LETTER EM"),
    ("LATIN CAPITAL LETTER N", "GREEK CAPITAL LETTER NU"),
    ("LATIN CAPITAL LETTER O", "GREEK CAPITAL LETTER OMICRON", "CYRILLIC CAPITAL LETTER O"),
    ("LATIN CAPITAL LETTER P", "GREEK CAPITAL LETTER RHO", "CYRILLIC CAPITAL LETTER ER"),
    ("LATIN CAPITAL LETTER S", "CYRILLIC CAPITAL LETTER DZE"),
    ("LATIN CAPITAL LETTER T", "GREEK CAPITAL LETTER TAU", "CYRILLIC CAPITAL LETTER TE"),
    ("LATIN CAPITAL LETTER X", "GREEK CAPITAL LETTER CHI", "CYRILLIC CAPITAL LETTER HA"),
    ("LATIN CAPITAL LETTER Y", "GREEK CAPITAL LETTER UPSILON", "CYRILLIC CAPITAL LETTER STRAIGHT U"),
    ("LATIN CAPITAL LETTER Z", "GREEK CAPITAL LETTER ZETA"),
    ("LATIN SMALL LETTER A", "CYRILLIC SMALL LETTER A"),
    ("LATIN SMALL LETTER C", "CYRILLIC SMALL LETTER ES"),
    ("LATIN SMALL LETTER E", "CYRILLIC SMALL LETTER IE"),
    ("LATIN SMALL LETTER H", "CYRILLIC SMALL LETTER SHHA"),
    ("LATIN SMALL LETTER I", "CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I"),
    ("LATIN SMALL LETTER J", "CYRILLIC SMALL LETTER JE"),
    ("LATIN SMALL LETTER O", "GREEK SMALL LETTER OMICRON", "CYRILLIC SMALL LETTER O"),
    ("LATIN SMALL LETTER P", "CYRILLIC SMALL LETTER ER"),
    ("LATIN SMALL LETTER S", "CYRILLIC SMALL LETTER DZE"),
    ("LATIN SMALL LETTER X", "CYRILLIC SMALL LETTER HA"),
    ("LATIN SMALL LETTER Y", "CYRILLIC SMALL LETTER U"),
    ("GREEK CAPITAL LETTER GAMMA", "CYRILLIC CAPITAL LETTER GHE"),
    ("GREEK CAPITAL LETTER THETA", "CYRILLIC CAPITAL LETTER BARRED O"),
    ("GREEK CAPITAL LETTER PI", "CYRILLIC CAPITAL LETTER PE"),
    ("GREEK CAPITAL LETTER PHI", "CYRILLIC CAPITAL LETTER EF"),
    ("GREEK SMALL LETTER KAPPA", "CYRILLIC SMALL LETTER KA"),
)  # fmt: skip


@dataclass(frozen=True)
class GlyphClass:
    """One class: its representative character, its script, and every character it merges."""

    char: str
    script: str
    members: tuple[str, ...]

    @property
    def key(self) -> int:
        """Stable key (the representative's code point), independent of the class id."""
        return ord(self.char)


def _script_of(ch: str) -> str:
    for script, cps in SCRIPT_CODEPOINTS.items():
        if ord(ch) in cps:
            return script
    raise ValueError(f"character {ch!r} is not in the glyphs repertoire")


@lru_cache(maxsize=1)
def glyph_classes() -> tuple[GlyphClass, ...]:
    """All candidate classes (before dropping thin ones) in class-id order."""
    rep_of = {chr(cp): chr(cp) for cps in SCRIPT_CODEPOINTS.values() for cp in cps}
    for names in MERGE_GROUPS:
        chars = [unicodedata.lookup(n) for n in names]
        for ch in chars:
            if ch not in rep_of:
                raise ValueError(f"merge group member {ch!r} is not in the repertoire")
            rep_of[ch] = chars[0]
    members: dict[str, list[str]] = {}
    for ch, rep in rep_of.items():
        members.setdefault(rep, []).append(ch)
    classes = [
        GlyphClass(rep, _script_of(rep), tuple(sorted(ms, key=lambda c: (c != rep, ord(c)))))
        for rep, ms in members.items()
    ]
    return tuple(sorted(classes, key=lambda c: (SCRIPTS.index(c.script), ord(c.char))))


def canonical_char(ch: str) -> str:
    """The representative of the class ``ch`` belongs to (``'Α'`` and ``'А'`` give ``'A'``)."""
    for cls in glyph_classes():
        if ch in cls.members:
            return cls.char
    raise ValueError(f"character {ch!r} is not in the glyphs repertoire")
