"""Where a bench's JobQL processes spent their CPU: py-spy's samples, by library.

    BENCH_PROFILE_DIR=/tmp/prof .venv/bin/python -m bench.run --only P1 --repetitions 1
    .venv/bin/python -m bench.profile /tmp/prof/api-*.raw

Each ``.raw`` file is py-spy's collapsed stacks of one process (idle samples left out), as
``bench.stack.profiled`` records them. Printed: the share of samples by the library the
running frame is in (self time), and the functions that hold the most samples with
everything they call (inclusive), JobQL's own and the libraries' alike.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# The first match names a frame's library; a frame's text is "function (path:line)".
LIBRARIES = [
    ("JobQL gql/", r"gql"),
    ("JobQL tasks/", r"tasks"),
    ("strawberry", r"strawberry"),
    ("graphql-core", r"graphql"),
    ("uvicorn / httptools / websockets", r"uvicorn|httptools|websockets"),
    ("starlette / fastapi", r"starlette|fastapi"),
    ("redis-py / hiredis", r"redis|hiredis"),
    ("celery / kombu / billiard / amqp", r"celery|kombu|billiard|amqp|vine"),
    ("pydantic", r"pydantic\w*"),
    ("prometheus-client", r"prometheus_client"),
    ("logging / json", r"logging|json"),
    ("asyncio / uvloop", r"asyncio|uvloop"),
]


def library(frame: str) -> str:
    """The library of a frame "function (path:line)" by its path's first folder."""
    found = re.search(r"\(([^/()]+)/", frame)
    top = found.group(1) if found else ""
    for name, pattern in LIBRARIES:
        if re.fullmatch(pattern, top):
            return name
    return "other (stdlib, C)"


def summarise(paths: list[Path], top: int) -> str:
    by_library: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            samples = int(count)
            total += samples
            frames = stack.split(";")
            by_library[library(frames[-1])] += samples
            for frame in set(frames):
                inclusive[re.sub(r":\d+\)$", ")", frame)] += samples
    if not total:
        return "no samples"
    lines = [f"{total} samples in {', '.join(p.name for p in paths)}", "", "self time by library:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in by_library.most_common()]
    lines += ["", f"inclusive, top {top}:"]
    entry = re.compile(r"^(process \d+|_run_module_as_main|_run_code|<module>|main|run)\b")
    ranked = [(f, n) for f, n in inclusive.most_common() if not entry.match(f)]
    lines += [f"  {100 * n / total:5.1f}%  {frame[:140]}" for frame, n in ranked[:top]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("raw", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    print(summarise(args.raw, args.top))


if __name__ == "__main__":
    main()
