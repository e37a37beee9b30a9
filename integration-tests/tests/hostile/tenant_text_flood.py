# One authenticated connection sends text the gateway logs and audits: N direct-tcpip opens to
# a huge host name full of control characters (each refused: not the tenant's container), then
# M env and M subsystem requests with huge names on one session channel, then runs `true` on it
# (so every request before it has been handled). Prints what came back as one JSON line.
import json, socket, sys, logging
import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message

logging.disable(logging.CRITICAL)
import signal
signal.alarm(300)
host, port, user, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
n_forwards, n_requests = int(sys.argv[5]), int(sys.argv[6])

t = paramiko.Transport(socket.create_connection((host, port), timeout=20))
t.start_client(timeout=20)
t.auth_publickey(user, paramiko.Ed25519Key.from_private_key_file(key))

refused = opened = 0
for i in range(n_forwards):
    target = "\x1b[31m\x1b]0;owned\x07" + "h" * 30000 + "\nforged log line %d" % i
    try:
        ch = t.open_channel("direct-tcpip", dest_addr=(target, 80), src_addr=("127.0.0.1", 1),
                            timeout=30)
        opened += 1
        ch.close()
    except paramiko.ChannelException:
        refused += 1

ch = t.open_session()
def request(kind, *fields):
    m = Message()
    m.add_byte(cMSG_CHANNEL_REQUEST)
    m.add_int(ch.remote_chanid)
    m.add_string(kind)
    m.add_boolean(False)
    for f in fields:
        m.add_string(f)
    t._send_user_message(m)

for i in range(n_requests):
    request("env", "\x1b[2J" + "E" * 30000 + "\n%d" % i, "v")
    request("subsystem", "\x1b[2J" + "S" * 30000 + "\n%d" % i)
ch.exec_command("true")
status = ch.recv_exit_status()
print(json.dumps({"refused": refused, "opened": opened, "exit": status,
                  "active": t.is_active()}))
t.close()
