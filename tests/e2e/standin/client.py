"""HTTP client for the end-to-end scenarios, run with `kubectl exec` in a client Pod of
the test namespace (the same way on the local node and on kind, where pod IPs are not
reachable from the machine running the tests).

    client.py METHOD URL [SID] [LOGIN]

Prints one JSON line: {"status": int, "body": {...}, "sid": "<session_id cookie or null>"}.
"""

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from http.cookies import SimpleCookie


def main(argv):
    if len(argv) < 3:
        sys.exit("usage: client.py METHOD URL [SID] [LOGIN]")
    method, url = argv[1], argv[2]
    sid = argv[3] if len(argv) > 3 and argv[3] not in ("", "-") else None
    data = urllib.parse.urlencode({"login": argv[4]}).encode() if len(argv) > 4 else None
    req = urllib.request.Request(url, data=data, method=method)
    if sid:
        req.add_header("Cookie", f"session_id={sid}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, headers, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        status, headers, raw = err.code, err.headers, err.read()
    except OSError as err:
        print(json.dumps({"status": 0, "body": {"error": str(err)}, "sid": None}))
        return
    jar = SimpleCookie()
    for value in headers.get_all("Set-Cookie") or []:
        jar.load(value)
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        body = {"raw": raw[:300].decode("utf-8", "replace")}
    new_sid = jar["session_id"].value if "session_id" in jar else None
    print(json.dumps({"status": status, "body": body, "sid": new_sid}))


if __name__ == "__main__":
    main(sys.argv)
