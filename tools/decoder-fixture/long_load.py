"""Long-text load on a large decoder, with the systemd watchdog watched (issue #12's check).

    target/pyenv/bin/python -I tools/decoder-fixture/long_load.py MODEL_DIR

Starts target/release/akidbd on MODEL_DIR (e.g. the export of `make.py --full-size`) with a NOTIFY_SOCKET this
script reads and WatchdogSec 30 s; then 2 clients x 2 rounds x 8 passages of ~180 tokens and one ~3,000-token
input at once (cache bypassed). Prints READY time, each request's outcome and time, the watchdog pings during the
load and their widest gap, restarts, errors and peak RSS.
"""
import os, socket, subprocess, sys, threading, time
from akidb_client import Client
ns = "/tmp/q6-notify.sock"
if os.path.exists(ns): os.remove(ns)
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.bind(ns); d.settimeout(0.5)
pings = []; stop = False
def listen():
    while not stop:
        try:
            m = d.recv(4096).decode()
            if "WATCHDOG=1" in m: pings.append(time.monotonic())
        except socket.timeout: pass
threading.Thread(target=listen, daemon=True).start()
env = dict(os.environ, NOTIFY_SOCKET=ns, WATCHDOG_USEC="30000000")
t0 = time.monotonic()
p = subprocess.Popen(["target/release/akidbd", "--model", sys.argv[1], "--socket", "/tmp/q6.sock"], env=env, stderr=open("/tmp/q6-load.log", "w"))
while True:
    try:
        c = Client("/tmp/q6.sock", timeout=900)
        if c.health() == "ready": break
    except Exception: pass
    time.sleep(0.1)
print(f"ready {time.monotonic()-t0:.1f} s")
passage = "The mobile manipulator scans the warehouse shelves, plans a path around people and forklifts, grasps boxes of unknown weight and reports each step to the fleet manager. "
results = []; peak = [0]
def rss():
    while not stop:
        for line in open(f"/proc/{p.pid}/status"):
            if line.startswith("VmRSS"): peak[0] = max(peak[0], int(line.split()[1]))
        time.sleep(0.5)
threading.Thread(target=rss, daemon=True).start()
def client(k):
    cl = Client("/tmp/q6.sock", timeout=900)
    for r in range(2):
        t = time.monotonic()
        try:
            cl.embed([passage * 5 + f" client {k} round {r} text {i}" for i in range(8)], cache=False); results.append(("ok", time.monotonic()-t))
        except Exception as e: results.append((repr(e), time.monotonic()-t))
def huge():
    cl = Client("/tmp/q6.sock", timeout=900)
    t = time.monotonic()
    try:
        rep = cl.result_reply(cl.submit([passage * 55], cache=False)); results.append((f"ok huge {rep['tokens']} tokens", time.monotonic()-t))
    except Exception as e: results.append((repr(e), time.monotonic()-t))
load_start = time.monotonic()
ts = [threading.Thread(target=client, args=(k,)) for k in range(2)] + [threading.Thread(target=huge)]
for t in ts: t.start()
for t in ts: t.join()
load_end = time.monotonic()
s = Client("/tmp/q6.sock").status()  # a fresh connection: the first one may have idled out during the load
print(f"load {load_end-load_start:.0f} s; results: {[(r, round(x)) for r, x in results]}")
w = [x for x in pings if load_start <= x <= load_end]
edges = [load_start] + w + [load_end]
print(f"watchdog pings during load: {len(w)}, widest gap {max(b-a for a, b in zip(edges, edges[1:])):.1f} s (WatchdogSec 30 s)")
print("restarts:", [dd["restarts"] for dd in s["devices"]], "errors:", s["counters"]["errors"], f"peak RSS {peak[0]/1024/1024:.2f} GiB")
stop = True; p.terminate(); p.wait()
