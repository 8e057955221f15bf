"""A log file with a size cap: the first half of the cap is written as it comes, the last half kept
in memory and written at each `flush`, with a line saying how much was cut in between. A solution
that prints in a loop therefore costs at most the cap on disk, and both its start (the first
error) and its end (the last traceback) survive."""
from __future__ import annotations

import threading
from pathlib import Path


class CappedLog:
    def __init__(self, path: Path, cap_bytes: int = 2 * 2**20, pair_tail: int = 4000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.head_cap = cap_bytes // 2
        self.tail_cap = cap_bytes - self.head_cap
        self.pair_tail = pair_tail
        self.total = 0                  # bytes received, ever
        self._head = self.path.stat().st_size if self.path.exists() else 0
        self._tail = bytearray()        # the last bytes past the head, at most tail_cap
        self._recent = bytearray()      # the last bytes received, for a pair's excerpt
        self._cut = 0                   # bytes dropped between head and tail
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self.total += len(data)
            self._recent += data
            if len(self._recent) > 4 * self.pair_tail + 65536:
                del self._recent[: len(self._recent) - 4 * self.pair_tail]
            room = max(0, self.head_cap - self._head)
            if room:
                with open(self.path, "ab") as handle:
                    handle.write(data[:room])
                self._head += min(room, len(data))
                data = data[room:]
            if data:
                self._tail += data
                if len(self._tail) > self.tail_cap:
                    self._cut += len(self._tail) - self.tail_cap
                    del self._tail[: len(self._tail) - self.tail_cap]

    def flush(self) -> None:
        """Rewrite the file as head + (cut note) + tail."""
        with self._lock:
            if not self._tail:
                return
            with open(self.path, "r+b") as handle:
                handle.seek(self._head)
                handle.truncate()
                if self._cut:
                    handle.write(f"\n[fib: {self._cut} bytes of output cut here; log capped at "
                                 f"{self.head_cap + self.tail_cap} bytes]\n".encode())
                handle.write(bytes(self._tail))

    def mark(self) -> int:
        return self.total

    def since(self, mark: int) -> str:
        """The output received after `mark` (its last `pair_tail` characters)."""
        with self._lock:
            count = min(self.total - mark, len(self._recent))
            data = bytes(self._recent[len(self._recent) - count:]) if count > 0 else b""
        return data.decode(errors="replace")[-self.pair_tail:]

    def write_line(self, text: str) -> None:
        self.write((text.rstrip("\n") + "\n").encode())
