#!/usr/bin/env python3
"""Keystroke echo latency on an open interactive session.

Spawns the real OpenSSH client `ssh -tt HOST cat` (remote PTY, cooked mode: the remote line
discipline echoes each byte) and measures, for N single keystrokes, the time from writing the
byte to reading its echo. Prints p50/p90/p99/max in milliseconds as one JSON line.

usage: auth_echo.py PORT USER KEY [samples] [gap_ms]
"""
import json, os, select, subprocess, sys, time

port, user, key = sys.argv[1], sys.argv[2], sys.argv[3]
samples = int(sys.argv[4]) if len(sys.argv) > 4 else 400
gap = (int(sys.argv[5]) if len(sys.argv) > 5 else 20) / 1000.0
cmd = ["ssh", "-tt", "-p", port, "-i", key, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
       "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
       "-o", "LogLevel=ERROR", "-o", "ControlMaster=no", "-o", "ControlPath=none",
       "-o", "Ciphers=chacha20-poly1305@openssh.com", "-o", "KexAlgorithms=curve25519-sha256",
       "-o", "GSSAPIAuthentication=no", f"{user}@127.0.0.1", "cat"]
p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
out = p.stdout.fileno()

def roundtrip(ch, timeout=30.0):
    t0 = time.perf_counter()
    os.write(p.stdin.fileno(), ch)
    seen = b""
    while ch not in seen:
        r, _, _ = select.select([out], [], [], timeout)
        if not r:
            raise SystemExit(f"no echo within {timeout}s")
        data = os.read(out, 4096)
        if not data:
            raise SystemExit("session closed")
        seen += data
    return time.perf_counter() - t0

# Wait until the session echoes (login + exec start).
roundtrip(b"s", timeout=60)
lat = []
letters = b"abcdefghijklmnopqrstuvwxyz"
for i in range(samples):
    lat.append(roundtrip(letters[i % 26:i % 26 + 1]))
    if i % 60 == 59:
        roundtrip(b"\n")  # keep the line short
    time.sleep(gap)
os.write(p.stdin.fileno(), b"\x04\x04")
p.terminate()
lat.sort()
q = lambda f: round(lat[min(len(lat) - 1, int(f * len(lat)))] * 1000, 3)
print(json.dumps({"samples": len(lat), "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99),
                  "max_ms": round(lat[-1] * 1000, 3)}))
