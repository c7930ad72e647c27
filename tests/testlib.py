"""Helpers every Python test suite of Usher shares (tests/<suite>/ put tests/ on sys.path):
polling, the dispatcher's logfmt lines, a free loopback port."""

import re
import socket
import time


def wait_for(predicate, timeout=5.0, interval=0.01, what="condition", error=TimeoutError):
    """Polls `predicate` until it returns something truthy; returns that value. Raises
    `error` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise error("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def free_port():
    """A loopback TCP port nobody listens on (right now)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --- logfmt ----------------------------------------------------------------------------------

_LOGFMT_TOKEN = re.compile(r'\s*([^\s=]+)=("(?:[^"\\]|\\.)*"|[^\s]*)')


def parse_logfmt(line):
    """Parses one of the dispatcher's logfmt lines into a dict; None when it is not one (no
    event=). A repeated key (a forged field) is listed in "_dupes"."""
    out = {}
    pos = 0
    line = line.rstrip("\n")
    while pos < len(line):
        if line[pos:].strip() == "":
            break
        m = _LOGFMT_TOKEN.match(line, pos)
        if not m:
            return None
        key, value = m.group(1), m.group(2)
        if value.startswith('"'):
            value = _unescape(value[1:-1])
        if key in out:
            out.setdefault("_dupes", []).append(key)
        out[key] = value
        pos = m.end()
    return out if "event" in out else None


def _unescape(s):
    out = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            n = s[i + 1]
            if n == "x" and i + 3 < len(s):
                out.append(chr(int(s[i + 2:i + 4], 16)))
                i += 4
                continue
            out.append({"n": "\n", "r": "\r", "t": "\t"}.get(n, n))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)
