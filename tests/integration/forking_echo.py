#!/usr/bin/env python3
"""forking_echo.py PORT: an echo server made with socketserver.ForkingTCPServer
(accept in the parent, serve each connection in a forked child), for
preload_fork.sh.  Runs until killed."""
import socketserver
import sys


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                break
            self.request.sendall(data)


class Server(socketserver.ForkingTCPServer):
    allow_reuse_address = True


with Server(("127.0.0.1", int(sys.argv[1])), Echo) as server:
    server.serve_forever()
