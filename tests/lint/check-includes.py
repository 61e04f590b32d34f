#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""check-includes.py: no include cycle between broker modules.

A module is a .c file and its .h, with the files of one family taken as
one (store_*.c and store_int.h are the store, rpc_*.c the handlers,
clock_*.c the clock). Module A depends on B when a file of A includes B's
header. A cycle fails the check unless it is one of KNOWN (cycles not yet
broken, printed as such so they stay visible); a KNOWN cycle that is gone
fails too, so the list only shrinks.

Usage: check-includes.py SRC_DIR (the broker/ folder)."""
import os
import re
import sys

FAMILIES = ("store", "rpc", "clock")
KNOWN = [
    # Empty: startup.c alone knows every part (it opens and closes them),
    # so broker.c, jobs.c and keys.c no longer include each other.
]


def module(name):
    for f in FAMILIES:
        if name == f or name.startswith(f + "_"):
            return f
    return name


def graph(src):
    headers = {f[:-2] for f in os.listdir(src) if f.endswith(".h")}
    deps = {}
    for f in sorted(os.listdir(src)):
        if not f.endswith((".c", ".h")):
            continue
        m = module(f[:-2])
        d = deps.setdefault(m, set())
        with open(os.path.join(src, f)) as fh:
            for line in fh:
                g = re.match(r'\s*#\s*include\s+"([^"/]+)\.h"', line)
                if g and g.group(1) in headers and module(g.group(1)) != m:
                    d.add(module(g.group(1)))
    return deps


def cycles(deps):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(deps.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))
    for v in sorted(deps):
        if v not in index:
            visit(v)
    return out


def main():
    deps = graph(sys.argv[1])
    found = cycles(deps)
    known = [frozenset(k) for k in KNOWN]
    rc = 0
    for c in found:
        names = " <-> ".join(sorted(c))
        if c in known:
            print("known cycle, still to break: %s" % names)
        else:
            rc = 1
            print("FAIL: these modules include each other (directly or "
                  "through one another): %s" % names)
            for m in sorted(c):
                print("  %s includes %s" % (m, " ".join(sorted(deps[m] & c))))
    for k in known:
        if k not in found:
            rc = 1
            print("FAIL: the known cycle %s is gone or changed: update KNOWN "
                  "in %s" % (" <-> ".join(sorted(k)), sys.argv[0]))
    print("%d modules, %d cycles (%d known)" % (
        len(deps), len(found), sum(1 for c in found if c in known)))
    return rc


if __name__ == "__main__":
    sys.exit(main())
