"""A set of record keys on disk (a private temporary SQLite database), so the ids of a corpus
(duplicate check, records already done) cost a bounded page cache, not memory that grows
with the corpus. The database is deleted when the set is closed."""

from __future__ import annotations

import sqlite3

CACHE_KIB = 16 * 1024  # SQLite page cache; the rest of the set stays in its temporary file


class KeySet:
    """Keys (str) with the input position where each was first seen."""

    def __init__(self) -> None:
        # "" = a private on-disk temporary database, removed when the connection closes
        self._db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE keys (key TEXT PRIMARY KEY, pos INTEGER) WITHOUT ROWID")
        self._db.execute("BEGIN")
        self._n = 0

    def add(self, key: str, pos: int = -1) -> int | None:
        """Add ``key``; returns None if it is new, else the position it was first added with."""
        cur = self._db.execute("INSERT OR IGNORE INTO keys VALUES (?, ?)", (key, pos))
        if cur.rowcount:
            self._n += 1
            return None
        return self._db.execute("SELECT pos FROM keys WHERE key = ?", (key,)).fetchone()[0]

    def update(self, keys) -> None:
        for key in keys:
            self.add(key)

    def __contains__(self, key: object) -> bool:
        return self._db.execute("SELECT 1 FROM keys WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return self._n

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> KeySet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
