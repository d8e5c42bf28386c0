#!/usr/bin/env python3
"""Summarise a callgrind output file per request (standard library only).

    cgsummary.py FILE --requests N [--top 30] [--callees REGEX] [--label NAME]

Prints user-space instructions (Ir) per request, the functions with the most
exclusive cost, the inclusive cost of the gateway's own functions
(`jadugar_`), what `--callees` functions spend in each callee, and who
calls the `--callers` functions (memcpy and malloc by default).
(callgrind_annotate can fail on some Rust symbol files; this reads the
format directly: name compression, `calls=` lines carrying inclusive cost.)
"""

import argparse
import collections
import re

GENERICS = re.compile(r"<[^<>]*(<[^<>]*(<[^<>]*>[^<>]*)*>[^<>]*)*>")


def short(name: str, width: int = 110) -> str:
    return GENERICS.sub("<..>", name or "?")[:width]


def parse(path: str):
    names: dict[str, str] = {}

    def name(spec: str) -> str:
        match = re.match(r"\((\d+)\)(?:\s+(.*))?", spec)
        if not match:
            return spec
        if match.group(2):
            names[match.group(1)] = match.group(2)
        return names.get(match.group(1), "?" + match.group(1))

    exclusive: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    fn = cfn = None
    call_line = False
    with open(path, errors="replace") as fh:
        for line in fh:
            if line.startswith("fn="):
                fn = name(line[3:].strip())
            elif line.startswith("cfn="):
                cfn = name(line[4:].strip())
            elif line.startswith("calls="):
                call_line = True
                counts[cfn] += int(line[6:].split()[0])
            elif line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if len(parts) < 2:
                    continue
                cost = int(parts[1])
                if call_line:
                    calls[(fn, cfn)] += cost
                    call_line = False
                else:
                    exclusive[fn] += cost
    return exclusive, calls, counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--callees", default=r"route_and_proxy|remove_hop_by_hop|set_forwarded_for")
    parser.add_argument("--callers", default=r"^__memcpy|^_int_malloc$|^malloc$|^mi_malloc_aligned$")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    exclusive, calls, counts = parse(args.file)
    n = args.requests
    total = sum(exclusive.values())
    print(f"## {args.label}: {total / n:,.0f} user-space instructions per request ({total:,} Ir over {n:,} requests)\n")
    # glibc's entry points, and mimalloc's as Rust's `GlobalAlloc` calls them.
    entries = ("malloc", "calloc", "realloc", "mi_malloc_aligned", "mi_zalloc_aligned", "mi_realloc_aligned")
    allocs = sum(c for f, c in counts.items() if f in entries)
    print(f"Heap allocations (malloc/calloc/realloc calls) per request: {allocs / n:.1f}\n")
    print("Exclusive cost (Ir per request, share):")
    for fn, cost in exclusive.most_common(args.top):
        print(f"  {cost / n:8,.0f}  {100 * cost / total:5.1f}%  {short(fn)}")
    inclusive: collections.Counter = collections.Counter()
    for (fn, _), cost in calls.items():
        if fn and "jadugar_" in fn:
            inclusive[fn] += cost
    for fn, cost in exclusive.items():
        if fn and "jadugar_" in fn:
            inclusive[fn] += cost
    if inclusive:
        print("\nInclusive cost of jadugar functions (Ir per request; recursion may double count):")
        for fn, cost in inclusive.most_common(20):
            print(f"  {cost / n:8,.0f}  {short(fn)}")
    pattern = re.compile(args.callees)
    callees: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for (fn, cfn), cost in calls.items():
        if fn and pattern.search(fn):
            callees[short(fn, 70)][short(cfn)] += cost
    for fn, counter in sorted(callees.items()):
        print(f"\nCallees of {fn} (Ir per request):")
        for cfn, cost in counter.most_common(15):
            print(f"  {cost / n:8,.0f}  {cfn}")
    pattern = re.compile(args.callers)
    callers: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for (fn, cfn), cost in calls.items():
        if cfn and pattern.search(cfn):
            callers[short(cfn, 70)][short(fn)] += cost
    for cfn, counter in sorted(callers.items()):
        print(f"\nCallers of {cfn} (Ir per request):")
        for fn, cost in counter.most_common(10):
            print(f"  {cost / n:8,.0f}  {fn}")


if __name__ == "__main__":
    main()
