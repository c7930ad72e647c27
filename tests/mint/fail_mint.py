#!/usr/bin/python3
"""Mint commands that fail on purpose, configured directly as [mint] command in the
failure tests (they need not go through sudo).

    fail_mint.py exit N                exit with status N (after a line on stderr)
    fail_mint.py signal                die by SIGKILL
    fail_mint.py sleep --pidfile F     start a child in the same process group, write
                                       "<pid> <child pid>" to F, then both sleep forever
    fail_mint.py big N                 print N bytes (a JSON string that never ends in time)
    fail_mint.py print TEXT            print TEXT verbatim and exit 0
    fail_mint.py not-json              print text that is not JSON, exit 0
    fail_mint.py no-credential         print JSON without /credential, exit 0
    fail_mint.py credential-not-string print {"credential": 12345}, exit 0
    fail_mint.py empty-credential      print {"credential": ""}, exit 0
    fail_mint.py weird-credential      a credential that needs escaping in JSON and in a form
Options for every mode: --count FILE appends a line per run to FILE; --delay-ms N waits first.
    fail_mint.py leaky --out F         print a fresh credential on stdout AND stderr (exit 0),
                                       and write it to F for the test's secret grep
    fail_mint.py stderr-forge          print a log-injection attempt and a lot of junk on
                                       stderr, then exit 3
"""

import os
import signal
import sys
import time


def main(argv):
    # options for every mode: --count FILE (append a line per run), --delay-ms N (first)
    if "--count" in argv:
        i = argv.index("--count")
        fd = os.open(argv[i + 1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, b"%d\n" % os.getpid())
        os.close(fd)
        argv = argv[:i] + argv[i + 2:]
    if "--delay-ms" in argv:
        i = argv.index("--delay-ms")
        time.sleep(int(argv[i + 1]) / 1000.0)
        argv = argv[:i] + argv[i + 2:]
    mode = argv[1] if len(argv) > 1 else ""
    if mode == "exit":
        sys.stderr.write("fail_mint: failing on purpose with status %s\n" % argv[2])
        return int(argv[2])
    if mode == "signal":
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "sleep":
        pidfile = argv[argv.index("--pidfile") + 1]
        child = os.fork()
        if child == 0:
            while True:
                time.sleep(3600)
        tmp = pidfile + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d %d\n" % (os.getpid(), child))
        os.rename(tmp, pidfile)
        while True:
            time.sleep(3600)
    if mode == "big":
        n = int(argv[2])
        out = sys.stdout.buffer
        out.write(b'{"credential":"')
        chunk = b"x" * 65536
        left = n
        while left > 0:
            out.write(chunk[:min(left, len(chunk))])
            left -= len(chunk)
        out.write(b'"}\n')
        out.flush()
        return 0
    if mode == "print":
        sys.stdout.write(argv[2])
        sys.stdout.flush()
        return 0
    canned = {"not-json": "credential: not-json-at-all\n",
              "no-credential": '{"token": "tok-0123456789abcdef", "data": {}}\n',
              "credential-not-string": '{"credential": 12345}\n',
              "empty-credential": '{"credential": ""}\n',
              # needs escaping in a JSON string: quote, backslash, control char, non-ASCII
              "weird-credential": '{"credential": "we\\"ird\\\\cr\\u0001ed/\\u00e9+&="}\n'}
    if mode in canned:
        sys.stdout.write(canned[mode])
        return 0
    if mode == "leaky":
        import secrets
        cred = "leaky-" + secrets.token_urlsafe(24)
        out = argv[argv.index("--out") + 1]
        with open(out + ".tmp", "w") as f:
            f.write(cred + "\n")
        os.rename(out + ".tmp", out)
        sys.stderr.write("minted credential %s for you\n" % cred)
        sys.stdout.write('{"credential": "%s"}\n' % cred)
        return 0
    if mode == "stderr-forge":
        sys.stderr.write("first line\nevent=audit reason=forged status=200 detail=injected\n"
                         "\x1b[31mred\x1b[0m \x00 nul \r carriage\n")
        sys.stderr.write("junk " * 20000 + "\n")
        return 3
    sys.stderr.write("fail_mint: unknown mode %r\n" % mode)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
