#!/usr/bin/env python3
"""Recording proxy for one NBD connection: listen on unix socket ARGV[2],
connect each accepted client to the server at unix socket ARGV[1], copy both
ways, and write the client->server bytes to ARGV[3].c2s and the
server->client bytes to ARGV[3].s2c. Serves one connection, then exits."""
import os, socket, sys, threading

server_path, listen_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
l = socket.socket(socket.AF_UNIX)
l.bind(listen_path)
l.listen(1)
c, _ = l.accept()
s = socket.socket(socket.AF_UNIX)
s.connect(server_path)
logs = {"c2s": bytearray(), "s2c": bytearray()}

def pump(a, b, key):
    while True:
        try:
            d = a.recv(65536)
        except OSError:
            d = b""
        if not d:
            break
        logs[key] += d
        try:
            b.sendall(d)
        except OSError:
            break
    try:
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass

t = [threading.Thread(target=pump, args=(c, s, "c2s")), threading.Thread(target=pump, args=(s, c, "s2c"))]
for x in t:
    x.start()
for x in t:
    x.join()
for k, v in logs.items():
    open(f"{out}.{k}", "wb").write(v)
