#!/usr/bin/env python3
"""Split a markdown file into GitHub comment bodies below GitHub's 65,535-character limit.

Usage: split_comment.py [--max-chars N] [--marker TEXT] INPUT PREFIX

Writes PREFIX-001.md, PREFIX-002.md, ... in order and prints how many. Parts break at line
boundaries; the first part starts at the top of INPUT, so vakt's summary (heading, counts,
gates) always comes first. Every part starts with MARKER (a hidden HTML comment that lets the
workflow find and replace its earlier comments) and, when there is more than one part,
"part i of n". A code fence open at a break is closed and reopened in the next part; a line
longer than a part is cut. Exit status: 0 written, 1 bad input, 2 usage.
"""

import argparse
import os
import sys

GITHUB_LIMIT = 65535
MAX_INPUT = 64 * 1024 * 1024


def split(text, max_chars, marker):
    """Returns the bodies, each at most max_chars characters, marker and header included."""
    # Room for the marker, "part 999 of 999" and a fence closed and reopened around a break.
    overhead = len(marker) + 64 + 2 * 16
    budget = max_chars - overhead
    if budget < 256:
        raise ValueError(f"--max-chars {max_chars} leaves no room for content")
    chunks = []
    cur = []
    size = 0
    fence = None  # the opening fence line of a code block open at the current position
    reopen = None
    for line in text.splitlines(keepends=True):
        pieces = [line[i : i + budget] for i in range(0, len(line), budget)] or [line]
        for piece in pieces:
            if size + len(piece) > budget and cur:
                if fence is not None:
                    cur.append("```\n")
                chunks.append((reopen, "".join(cur)))
                reopen = fence
                cur = []
                size = len(fence) if fence else 0
            cur.append(piece)
            size += len(piece)
        stripped = line.strip()
        if stripped.startswith("```") or stripped.startswith("~~~"):
            fence = None if fence is not None else stripped + "\n"
    if cur or not chunks:
        chunks.append((reopen, "".join(cur)))
    n = len(chunks)
    bodies = []
    for i, (opened, body) in enumerate(chunks, 1):
        head = marker + "\n" if marker else ""
        if n > 1:
            head += f"*part {i} of {n}*\n\n"
        if opened:
            head += opened
        out = head + body
        assert len(out) <= max_chars, (len(out), max_chars)
        bodies.append(out)
    return bodies


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-chars", type=int, default=60000)
    p.add_argument("--marker", default="")
    p.add_argument("input")
    p.add_argument("prefix")
    a = p.parse_args(argv)
    if not 1000 <= a.max_chars <= GITHUB_LIMIT:
        print(f"--max-chars must be between 1000 and {GITHUB_LIMIT}", file=sys.stderr)
        return 2
    try:
        if os.path.getsize(a.input) > MAX_INPUT:
            print(f"{a.input}: larger than {MAX_INPUT} bytes; refusing", file=sys.stderr)
            return 1
        with open(a.input, encoding="utf-8") as f:
            text = f.read()
        bodies = split(text, a.max_chars, a.marker)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        print(f"{a.input}: {e}", file=sys.stderr)
        return 1
    for i, body in enumerate(bodies, 1):
        tmp = f"{a.prefix}-{i:03}.md.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(body)
        os.replace(tmp, f"{a.prefix}-{i:03}.md")
    print(len(bodies))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
