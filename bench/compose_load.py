"""Loading a compose file near its 1 MB cap: one mapping of many keys, the duplicate-key
check's worst case (issue 8: a pairwise check took 101 s on such a file).

    .venv/bin/python -m bench.compose_load

Prints the seconds to load half the keys and all of them; a one-pass check about doubles,
a pairwise one about quadruples. Not a test: timings belong here, not in tests/.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from pvcheck.compose import MAX_COMPOSE_BYTES, load_compose


def compose_text(keys: int) -> str:
    lines = ["services:", "  app:", "    image: x", "    environment:"]
    lines += [f"      K{i:06d}: v" for i in range(keys)]
    return "\n".join(lines) + "\n"


def seconds_to_load(path: Path, keys: int) -> float:
    path.write_text(compose_text(keys))
    started = time.perf_counter()
    doc = load_compose(path)
    elapsed = time.perf_counter() - started
    assert len(doc["services"]["app"]["environment"]) == keys
    return elapsed


def main() -> None:
    keys = (MAX_COMPOSE_BYTES - 100) // len(compose_text(1).splitlines()[-1] + "\n")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "compose.yml"
        half = seconds_to_load(path, keys // 2)
        full = seconds_to_load(path, keys)
    size = len(compose_text(keys))
    print(f"{keys // 2} keys: {half:.2f} s; {keys} keys ({size} bytes): {full:.2f} s")
    print(f"ratio {full / half:.1f} (about 2 when linear, 4 when quadratic)")


if __name__ == "__main__":
    main()
