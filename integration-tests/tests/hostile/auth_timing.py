# Times only the password step of SSH authentication (the key exchange is done first), for one
# user name and password, from one source address. Prints the seconds of each attempt.
import json, socket, sys, time, logging
import paramiko

logging.disable(logging.CRITICAL)
host, port, source, user, pw, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
times = []
for _ in range(rounds):
    sock = socket.create_connection((host, port), timeout=20, source_address=(source, 0))
    t = paramiko.Transport(sock)
    t.start_client(timeout=20)
    started = time.time()
    try:
        t.auth_password(user, pw, fallback=False)
        outcome = "accepted"
    except paramiko.AuthenticationException:
        outcome = "denied"
    times.append(time.time() - started)
    t.close()
print(json.dumps({"outcome": outcome, "times": times}))
