# One connection, two channels. Channel 1 gets hundreds of env, pty-req and window-change
# requests (each wanting a reply) and megabytes of data before any exec; meanwhile channel 2
# must run a command, the connection must answer a keepalive, and channel 1 must still exec.
import json, socket, sys, threading, time, logging
import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message

logging.disable(logging.CRITICAL)
# A frozen connection must fail the test, not hang it: no JSON line is printed then.
import signal
signal.alarm(60)
host, port, user, key, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
counts = {"ok": 0, "failed": 0}
lock = threading.Lock()
orig_ok = paramiko.Channel._request_success
def ok(self, m):
    with lock: counts["ok"] += 1
    return orig_ok(self, m)
def failed(self, m):
    # paramiko closes the channel on a refused request; a refusal here is expected, so count it
    # and keep the channel.
    with lock: counts["failed"] += 1
# The transport dispatches channel messages through its class-level table, not the attributes.
from paramiko.common import MSG_CHANNEL_FAILURE, MSG_CHANNEL_SUCCESS
paramiko.Transport._channel_handler_table[MSG_CHANNEL_SUCCESS] = ok
paramiko.Transport._channel_handler_table[MSG_CHANNEL_FAILURE] = failed

t = paramiko.Transport(socket.create_connection((host, port), timeout=20))
t.start_client(timeout=20)
t.auth_publickey(user, paramiko.Ed25519Key.from_private_key_file(key))
ch1 = t.open_session()

def request(kind, reply, *fields):
    m = Message()
    m.add_byte(cMSG_CHANNEL_REQUEST)
    m.add_int(ch1.remote_chanid)
    m.add_string(kind)
    m.add_boolean(reply)
    for f in fields:
        if isinstance(f, int): m.add_int(f)
        else: m.add_string(f)
    t._send_user_message(m)

for i in range(n):
    request("env", True, "LC_FLOOD%d" % i, "v")
    request("pty-req", True, "xterm", 80, 24, 0, 0, b"\x00")
    request("window-change", False, 100 + i % 50, 30, 0, 0)
ch1.sendall(b"y" * (4 * 1024 * 1024))

started = time.time()
ch2 = t.open_session()
ch2.exec_command("echo alive")
alive = ch2.makefile().read().decode().strip()
alive_after = round(time.time() - started, 2)
ka_started = time.time()
t.global_request("keepalive@openssh.com", wait=True)
keepalive = round(time.time() - ka_started, 2)
ch1.exec_command("echo late")
late = ch1.makefile().read().decode().strip()
time.sleep(0.5)
with lock:
    print(json.dumps({"alive": alive, "alive_after": alive_after, "keepalive": keepalive,
                      "late": late, "ok": counts["ok"], "failed": counts["failed"],
                      "active": t.is_active()}))
t.close()
