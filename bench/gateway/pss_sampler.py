#!/usr/bin/env python3
"""Whole-host PSS of one side of bench/gateway/memory.sh, sampled while a load runs.

One process reading /proc directly (the shell sampler it replaces forked a dozen tools per
sample and, starved by the load on two cores, took two samples in a five-second round).
memory.sh starts it at a raised priority when the load starts and stops it with SIGTERM.

  pss_sampler.py berth GATEWAY_PID CGROUP_DIR   # gateway + dockerd + containerd + shims + cgroup
  pss_sampler.py sshd SSHD_PID                  # every sshd process and all below SSHD_PID
  pss_sampler.py --once …                       # one sample (idle figures)

Prints one line: "peak_kib mean_kib samples processes_at_peak gateway_rss_peak_kib".
"""

import os
import signal
import sys
import time

INTERVAL = float(os.environ.get("SAMPLE_INTERVAL", "0.1"))


def procs():
    """{pid: (comm, ppid)} for every process, from one read of /proc/PID/stat each."""
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                head, tail = f.read().rsplit(")", 1)
            # the name may hold spaces and parentheses: it runs from the first '(' to the last ')'
            out[int(p)] = (head.split("(", 1)[1], int(tail.split()[1]))
        except (OSError, ValueError, IndexError):
            pass
    return out


def kib(path, key):
    """The KiB figure of the line starting with `key` in a /proc file (0 when gone)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cgroup_pids(root):
    out = set()
    for d, _, files in os.walk(root):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    out.update(int(x) for x in f.read().split())
            except (OSError, ValueError):
                pass
    return out


def descendants(root, table):
    kids = {}
    for p, (_, ppid) in table.items():
        kids.setdefault(ppid, []).append(p)
    out, queue = set(), [root]
    while queue:
        p = queue.pop()
        if p not in out:
            out.add(p)
            queue.extend(kids.get(p, []))
    return out


def berth_set(gateway, cgroup):
    s = {gateway} | cgroup_pids(cgroup)
    for p, (c, _) in procs().items():
        if c in ("dockerd", "containerd") or c.startswith("containerd-shim"):
            s.add(p)
    return s


def sshd_set(sshd):
    table = procs()
    s = descendants(sshd, table)
    s.update(p for p, (c, _) in table.items() if c in ("sshd", "sshd-session"))
    return s


def main():
    args = sys.argv[1:]
    once = bool(args) and args[0] == "--once"
    if once:
        args = args[1:]
    side = args[0]
    if side == "berth":
        gateway, cgroup = int(args[1]), args[2]
        members = lambda: berth_set(gateway, cgroup)  # noqa: E731
    elif side == "sshd":
        gateway = None
        members = lambda: sshd_set(int(args[1]))  # noqa: E731
    else:
        sys.exit(f"pss_sampler.py: unknown side {side!r} (berth or sshd)")

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    peak = total = n = at_peak = gpeak = 0
    while True:
        s = members()
        v = sum(kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in s)
        n += 1
        total += v
        if v > peak:
            peak, at_peak = v, len(s)
        if gateway is not None:
            gpeak = max(gpeak, kib(f"/proc/{gateway}/status", "VmRSS:"))
        if once or stop:
            break
        time.sleep(INTERVAL)
    print(peak, total // n, n, at_peak, gpeak)


if __name__ == "__main__":
    main()
