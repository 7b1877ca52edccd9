"""Summarise py-spy's collapsed stacks (`py-spy record --format raw`): where one service spends
its samples, by the frames that belong to us and by the library frames at the top of stacks.

    .venv/bin/python bench/hotspots.py .run/bench/profiles/router.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# "function (module/path.py:line)" in py-spy's raw output
FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


def parse(text: str) -> list[tuple[list[str], int]]:
    """Each line is `frame;frame;...;frame count`, outermost frame first."""
    stacks: list[tuple[list[str], int]] = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def short(frame: str) -> str:
    match = FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "civicline/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['function']} ({path})"


def summarise(stacks: list[tuple[list[str], int]], top: int) -> str:
    total = sum(count for _, count in stacks) or 1
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        self_time[short(frames[-1])] += count
        for frame in {short(f) for f in frames}:
            inclusive[frame] += count
    lines = [f"{total} samples", "", "self (top of stack):"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in self_time.most_common(top)]
    lines += ["", "inclusive (anywhere on the stack):"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(summarise(parse(args.profile.read_text()), args.top))


if __name__ == "__main__":
    main()
