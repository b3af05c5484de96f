"""An S3 emulator for tests: moto's server on a free port of 127.0.0.1, with one bucket.

Prints the port once the bucket exists and serves until its standard input closes (the test
process holding the pipe ends), so it never outlives the test.
"""

import sys
import urllib.request

from moto.server import ThreadedMotoServer

bucket = sys.argv[1]
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
port = server._server.server_port  # the port the OS picked for port 0
urllib.request.urlopen(
    urllib.request.Request(f"http://127.0.0.1:{port}/{bucket}", method="PUT")
).read()
print(port, flush=True)
sys.stdin.read()
server.stop()
