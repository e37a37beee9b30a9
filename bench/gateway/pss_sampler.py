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


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def pss(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
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


def descendants(root):
    kids = {}
    for p in pids():
        try:
            with open(f"/proc/{p}/stat") as f:
                # the name may hold spaces and parentheses: the ppid follows the last ')'
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
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
    for p in pids():
        c = comm(p)
        if c in ("dockerd", "containerd") or c.startswith("containerd-shim"):
            s.add(p)
    return s


def sshd_set(sshd):
    s = descendants(sshd)
    for p in pids():
        if comm(p) in ("sshd", "sshd-session"):
            s.add(p)
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
        v = sum(pss(p) for p in s)
        n += 1
        total += v
        if v > peak:
            peak, at_peak = v, len(s)
        if gateway is not None:
            gpeak = max(gpeak, rss(gateway))
        if once or stop:
            break
        time.sleep(INTERVAL)
    print(peak, total // n, n, at_peak, gpeak)


if __name__ == "__main__":
    main()
