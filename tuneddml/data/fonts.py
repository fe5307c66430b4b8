"""Finding fonts and the characters each one covers, for the glyph datasets.

A :class:`FontFace` is one face of a font file (TrueType collections hold several) with the code
points its character map (``cmap``) covers, read with fontTools. Fonts that would poison a glyph
dataset are excluded by file name (:data:`EXCLUDED`): ``LastResortHE`` maps every code point to a
box, the ``Display``/``NonUni``/``Siz*`` fonts hold a few odd-sized or unencoded glyphs, and the
TeX ``cmex10``/``cmsy10`` fonts put symbols at letter code points. The other Computer Modern fonts
(``cm*``) use TeX encodings too, so only A-Z, a-z and 0-9 are taken from them
(:data:`ALNUM_ONLY`).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import string
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: file-name patterns (without extension, case-insensitive) of fonts never used
EXCLUDED = ("LastResortHE*", "DejaVu*Display*", "STIXNonUni*", "STIXSiz*", "cmex10*", "cmsy10*")
#: file-name patterns of fonts whose cmap is trusted only for ASCII letters and digits
ALNUM_ONLY = ("cm*",)
ALNUM = frozenset(map(ord, string.ascii_letters + string.digits))
FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")
SYSTEM_FONT_DIR = "/usr/share/fonts"

# Categories that do not print on their own: controls, format, surrogates, private use,
# unassigned, separators and combining marks.
_NON_PRINTING = {"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp", "Mn", "Mc", "Me"}


@dataclass(frozen=True)
class FontFace:
    """One face of a font file and the printable code points its cmap maps to a real glyph."""

    path: str
    index: int  # face number inside a collection (.ttc); 0 otherwise
    name: str  # PostScript name where the font has one, else the file stem
    codepoints: frozenset[int]

    @property
    def label(self) -> str:
        return self.name if self.index == 0 else f"{self.name}#{self.index}"


def matplotlib_font_dir() -> Path:
    import importlib.util

    # found without importing matplotlib, which takes half a second
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin is not None:
        folder = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf"
        if folder.is_dir():
            return folder
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def is_printable(codepoint: int) -> bool:
    """A code point that draws something on its own (not a control, space or combining mark)."""
    ch = chr(codepoint)
    return unicodedata.category(ch) not in _NON_PRINTING and not ch.isspace()


def _matches(stem: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(stem.lower(), p.lower()) for p in patterns)


def font_files(dirs: Iterable[str | Path]) -> list[Path]:
    """Font files under ``dirs`` (recursively), sorted within each folder, excluded names dropped."""
    found: list[Path] = []
    for folder in dirs:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in FONT_SUFFIXES and path.is_file() and not _matches(path.stem, EXCLUDED):
                found.append(path)
    return found


def read_faces(paths: Iterable[Path], *, restrict: Iterable[int] | None = None) -> list[FontFace]:
    """Read the cmap of every face of every file; duplicate faces (same PostScript name) kept once.

    ``restrict`` limits the code points to a given set (e.g. A-Z, a-z, 0-9 for a tiny dataset).
    Files fontTools cannot parse are skipped: a broken system font must not stop the dataset.
    """
    allowed = None if restrict is None else frozenset(restrict)
    faces: list[FontFace] = []
    seen: set[str] = set()
    for path in paths:
        for face in _faces_of(path):
            if face.name in seen or not face.codepoints:
                continue
            codepoints = face.codepoints if allowed is None else face.codepoints & allowed
            if codepoints:
                seen.add(face.name)
                faces.append(FontFace(face.path, face.index, face.name, codepoints))
    return faces


def _faces_of(path: Path) -> Iterator[FontFace]:
    from fontTools.ttLib import TTCollection, TTFont, TTLibError

    # fontTools logs a warning for every old timestamp in a font header; they are harmless here
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    try:
        if path.suffix.lower() in (".ttc", ".otc"):
            fonts = list(TTCollection(str(path), lazy=True).fonts)
        else:
            fonts = [TTFont(str(path), lazy=True)]
    except (TTLibError, OSError, AssertionError, ValueError):
        return
    alnum_only = _matches(path.stem, ALNUM_ONLY)
    for index, font in enumerate(fonts):
        try:
            cmap = font.getBestCmap() or {}
            name = _postscript_name(font) or path.stem
        except Exception:  # a malformed table in one face; the others may be fine
            continue
        codepoints = frozenset(
            cp for cp, glyph in cmap.items() if glyph != ".notdef" and cp < 0x110000 and is_printable(cp)
        )
        if alnum_only:
            codepoints &= ALNUM
        yield FontFace(str(path), index, name, codepoints)


def _postscript_name(font: object) -> str | None:
    names = font["name"]  # type: ignore[index]
    record = names.getName(6, 3, 1) or names.getName(6, 1, 0)
    return record.toUnicode() if record is not None else None


def default_cache_dir() -> Path:
    return Path(os.environ.get("TUNEDDML_CACHE") or Path.home() / ".cache" / "tuneddml")
