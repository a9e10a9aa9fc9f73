"""The Python ORAS SDK as a benchmark peer: one push or pull per process, as a user's
script would do it (run with the venv's python; see scripts/bench.sh).

    oras_py.py pull REGISTRY REFERENCE OUTDIR
    oras_py.py push REGISTRY REFERENCE DIR FILE...   # FILEs relative to DIR
"""

import logging
import os
import sys

import oras.client


def main(argv):
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    op, registry, reference = argv[1:4]
    # Plain HTTP: the benchmark registry (or the latency proxy) is on 127.0.0.1. ORAS_PY_HTTPS=1:
    # HTTPS (the TLS rows), trusting the CA in REQUESTS_CA_BUNDLE.
    https = os.environ.get("ORAS_PY_HTTPS") == "1"
    client = oras.client.OrasClient(hostname=registry, insecure=not https)
    logging.getLogger("oras").setLevel(logging.WARNING)
    if op == "pull" and len(argv) == 5:
        files = client.pull(target=reference, outdir=argv[4])
        if not files:
            print("oras_py: pulled nothing", file=sys.stderr)
            return 1
        return 0
    if op == "push" and len(argv) >= 6:
        # The SDK titles layers with the basename and wants paths under the cwd.
        os.chdir(argv[4])
        resp = client.push(files=argv[5:], target=reference, quiet=True)
        if resp.status_code not in (200, 201):
            print(f"oras_py: manifest push answered {resp.status_code}", file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
