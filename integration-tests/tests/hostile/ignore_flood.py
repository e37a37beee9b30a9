# Completes the key exchange, never authenticates, and keeps the connection busy with
# SSH_MSG_IGNORE every 100 ms. Prints how long the gateway let it stay.
import json, socket, sys, time, logging
import paramiko

logging.disable(logging.CRITICAL)
host, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
started = time.time()
t = paramiko.Transport(socket.create_connection((host, port), timeout=20))
t.start_client(timeout=20)
sent = 0
try:
    while t.is_active() and time.time() - started < limit:
        t.send_ignore(64)
        sent += 1
        time.sleep(0.1)
except Exception:
    pass
print(json.dumps({"open_for": round(time.time() - started, 2), "ignores": sent,
                  "still_active": t.is_active()}))
t.close()
