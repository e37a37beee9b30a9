# A client that ignores the SSH channel window: authenticates, runs a command that never reads
# stdin, then writes CHANNEL_DATA packets straight onto the transport (paramiko's own send
# would wait for window). Prints how much it got out and whether the connection survived.
import json, socket, sys, time, logging
import paramiko
from paramiko.common import cMSG_CHANNEL_DATA
from paramiko.message import Message

logging.disable(logging.CRITICAL)
host, port, user, key, total = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
t = paramiko.Transport(socket.create_connection((host, port), timeout=20))
t.start_client(timeout=20)
t.auth_publickey(user, paramiko.Ed25519Key.from_private_key_file(key))
ch = t.open_session()
ch.exec_command("sleep 600")
chunk = b"x" * 32768
sent, error = 0, None
started = time.time()
try:
    while sent < total and t.is_active():
        m = Message()
        m.add_byte(cMSG_CHANNEL_DATA)
        m.add_int(ch.remote_chanid)
        m.add_string(chunk)
        t._send_user_message(m)
        sent += len(chunk)
except Exception as e:  # the gateway cut us off: expected
    error = repr(e)
# Give the transport a moment to notice the disconnect if the last write still succeeded.
for _ in range(50):
    if not t.is_active():
        break
    time.sleep(0.1)
print(json.dumps({"sent": sent, "active": t.is_active(), "error": error,
                  "seconds": round(time.time() - started, 2)}))
t.close()
