"""The store's verdict is read, never trusted: a malformed value is ignored with one warning and
the monitor thread keeps watching (it used to die parsing it, turning off lost-rank and hang
detection on every rank), and only a key carrying the job's token counts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from axon.runtime.health import parse_verdict
from axon.testing.processes import REPO, clean_env


@pytest.mark.parametrize("text", [
    "", "garbage", "[]", "null", json.dumps({"kind": "lost"}), json.dumps({"kind": "lost", "by": 0, "ranks": []}),
    json.dumps({"kind": "lost", "by": 0, "ranks": [4]}), json.dumps({"kind": "lost", "by": True, "ranks": [1]}),
    json.dumps({"kind": "hung", "by": 9, "reason": "x"}), json.dumps({"kind": "hung", "by": 1, "reason": 7}),
    json.dumps({"kind": "failed", "by": 1, "reason": "x" * 2001}), json.dumps({"kind": "reboot", "by": 1}),
])
def test_malformed_verdicts_are_not_verdicts(text):
    assert parse_verdict(text, world=4) is None


def test_well_formed_verdicts_read_as_posted():
    lost = {"kind": "lost", "by": 2, "ranks": [0, 3]}
    hung = {"kind": "hung", "by": 1, "reason": "all_reduce on axis col has waited 9.0 s"}
    assert parse_verdict(json.dumps(lost), world=4) == lost
    assert parse_verdict(json.dumps(hung), world=4) == hung


MONITOR = """
import sys, threading, time
import torch.distributed as dist
from axon.runtime.bootstrap import free_port
from axon.runtime.health import HealthMonitor

port = free_port()
store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
monitor = HealthMonitor(0, 2, ("127.0.0.1", port), sys.argv[1], peer_timeout_s=5, collective_timeout_s=30,
                        hosts_store=True, token="5eed").start()
store.set(monitor.prefix + "beat/1", "finished")  # the other rank is done: only the verdict is in play
forged = b'{"kind": "lost", "by": 1, "ranks": [1]}'
for key, value in ((monitor.prefix, b"not json"), (monitor.prefix, b'{"kind": "lost", "by": 5, "ranks": [0]}'),
                   (monitor.prefix, bytes([0xff, 0xfe, 0x00])), ("axon/health/0/", forged)):
    store.set(key + "verdict", value)
    time.sleep(1.25)  # two beats of the thread (0.5 s apart at peer_timeout_s 5)
    print("alive" if any(t.name == "axon-health" for t in threading.enumerate()) else "dead", flush=True)
store.set(monitor.prefix + "verdict", forged)  # with the job's token it is a verdict: the job ends
time.sleep(10)
print("still running", flush=True)
"""


@pytest.mark.timeout(60)
def test_the_monitor_ignores_a_malformed_verdict_once_and_keeps_watching(tmp_path):
    done = subprocess.run([sys.executable, "-c", MONITOR, str(tmp_path)], cwd=REPO, env=clean_env(), text=True,
                          capture_output=True, timeout=50)
    assert done.stdout.split() == ["alive"] * 4, done.stderr  # three malformed values, one without the token
    assert done.stderr.count("ignoring a malformed verdict in the job's store") == 1, done.stderr
    assert done.returncode == 3 and "lost rank 1" in done.stderr, done.stderr  # EXIT_PEER_LOST, named
