#!/usr/bin/env python3
"""Prints the Debian packages to `apt-get download` so that the named packages run unpacked (with
`dpkg -x`) on this machine: the packages themselves and, recursively, the packages of their
Depends/PreDepends that are not installed here (the first alternative of each choice; providers
for virtual packages). Used by the benchmark scripts, which run Apache without installing it.

    python3 tests/bench/debs_to_fetch.py PACKAGE...
"""
import subprocess, sys

def installed(name):
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True).stdout
    return out.startswith("install ok installed")

def depends(pkg):
    """The package's Depends as choices: lists of package names (providers for virtual ones)."""
    out = subprocess.run(
        ["apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks",
         "--no-replaces", "--no-enhances", pkg], capture_output=True, text=True, check=True).stdout
    choices, choice, last = [], [], None
    for line in out.splitlines():
        if line.startswith("    ") and last is not None:  # a provider of the virtual package above
            last.append(line.strip())
            continue
        kind, _, name = line.strip().partition(": ")
        if kind.lstrip("|") not in ("Depends", "PreDepends"):
            last = None
            continue
        last = [] if name.startswith("<") else [name]
        choice.append(last)
        if not kind.startswith("|"):  # "|Depends" means "or the next one"
            choices.append([n for names in choice for n in names])
            choice = []
    return choices

wanted, todo = [], list(sys.argv[1:])
seen = set(todo)
while todo:
    pkg = todo.pop(0)
    wanted.append(pkg)
    for names in depends(pkg):
        if names and not any(n in seen or installed(n) for n in names):
            seen.add(names[0])
            todo.append(names[0])
print(" ".join(wanted))
