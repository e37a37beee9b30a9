#!/usr/bin/env python3
"""A distributed password storm: THREADS paramiko clients, each connection from a different
loopback source address (127.0.0.10 ... 127.0.0.(10+SOURCES-1)), one wrong password per
connection, user names cycling over USERS (e.g. server1,server2,... — unknown servers still cost
the gateway a dummy bcrypt). Runs SECONDS seconds and prints counts as JSON.

usage: auth_storm.py PORT USERS THREADS SECONDS [SOURCES]
"""
import json, logging, random, socket, sys, threading, time
import paramiko

logging.disable(logging.CRITICAL)
port, users = int(sys.argv[1]), sys.argv[2].split(",")
threads, seconds = int(sys.argv[3]), float(sys.argv[4])
sources = int(sys.argv[5]) if len(sys.argv) > 5 else 200
stats = {"attempts": 0, "denied": 0, "refused": 0}
lock = threading.Lock()
deadline = time.time() + seconds

def worker(n):
    i = 0
    while time.time() < deadline:
        i += 1
        src = "127.0.0.%d" % (10 + random.randrange(sources))
        t = None
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(src, 0))
            t = paramiko.Transport(sock)
            t.start_client(timeout=10)
            with lock: stats["attempts"] += 1
            t.auth_password(random.choice(users), "storm-%d-%d" % (n, i), fallback=False)
        except paramiko.AuthenticationException:
            with lock: stats["denied"] += 1
        except Exception:
            with lock: stats["refused"] += 1
            time.sleep(0.01)
        finally:
            if t is not None:
                t.close()

ts = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(stats))
