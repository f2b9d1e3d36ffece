#!/usr/bin/env python3
"""Regenerate the CloudWatch Logs subscription events of the log-processor Lambda.

Readable sources are in src/ (the decoded `logEvents` JSON); each becomes
`<name>.json` = {"awslogs": {"data": base64(gzip(json))}}, as CloudWatch delivers it.
`large.json` (5,000 events) and the invalid ones are made here. gzip runs with mtime=0,
so regenerating gives the same bytes.
"""
import base64, gzip, json, os

HERE = os.path.dirname(os.path.abspath(__file__))


def wrap(data: bytes) -> dict:
    return {"awslogs": {"data": base64.b64encode(data).decode()}}


def encode(obj) -> dict:
    return wrap(gzip.compress(json.dumps(obj, separators=(",", ":")).encode(), mtime=0))


def write(name, ev):
    with open(os.path.join(HERE, name), "w") as f:
        json.dump(ev, f, indent=1)
        f.write("\n")


def main():
    for src in sorted(os.listdir(os.path.join(HERE, "src"))):
        with open(os.path.join(HERE, "src", src)) as f:
            write(src, encode(json.load(f)))
    # A large batch: 5,000 lines of one VM (PutLogEvents allows 10,000 per call).
    large = {
        "messageType": "DATA_MESSAGE", "owner": "123456789012",
        "logGroup": "lablink-cloud-init-test", "logStream": "lablink-vm-test-1",
        "subscriptionFilters": ["lablink-cloud-init-test-to-log-processor"],
        "logEvents": [
            {"id": "3793%052d" % i, "timestamp": 1795428100000 + i,
             "message": "large batch line %d: apt-get progress %d%%" % (i, i % 100)}
            for i in range(5000)
        ],
    }
    write("large.json", encode(large))
    # Refused: 64 MiB of zeros in about 64 KiB of gzip; not base64; not gzip; not log data.
    write("invalid-gzip-bomb.json", wrap(gzip.compress(b"\0" * (64 << 20), compresslevel=9, mtime=0)))
    write("invalid-not-base64.json", {"awslogs": {"data": "%%% not base64 %%%"}})
    write("invalid-not-gzip.json", wrap(b"plain text, not gzip"))
    write("invalid-not-log-data.json", encode([1, 2, 3]))


if __name__ == "__main__":
    main()
