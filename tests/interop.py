"""Drives the Python ORAS SDK for the interop tests: an independent client to check that what
oras-fs pushes others can pull, and the other way round.

    python tests/interop.py push REF FILE[:TYPE]... [--annotation K=V]... [CONNECTION]
    python tests/interop.py pull REF --outdir DIR [CONNECTION]
    python tests/interop.py manifest REF [CONNECTION]

CONNECTION: --plain-http | --ca-file CA (HTTPS verified against CA); --user U --password P
(basic auth). Paths given to `push` must be relative to the current directory (the SDK's path
validation); the SDK titles each layer with the file's basename.

Prints one JSON object on stdout; exits non-zero (with the Python error on stderr) on failure.
"""

import argparse
import json
import sys

import oras.client


def make_client(args):
    kwargs = {"hostname": args.ref.split("/", 1)[0]}
    if args.plain_http:
        kwargs["insecure"] = True
    elif args.ca_file:
        kwargs["tls_verify"] = args.ca_file
    if args.user is not None:
        # The default "token" backend cannot do plain basic auth against Distribution's htpasswd.
        kwargs["auth_backend"] = "basic"
    client = oras.client.OrasClient(**kwargs)
    if args.user is not None:
        client.auth.set_basic_auth(args.user, args.password or "")
    return client


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["push", "pull", "manifest"])
    p.add_argument("ref")
    p.add_argument("files", nargs="*")
    p.add_argument("--outdir")
    p.add_argument("--annotation", action="append", default=[])
    p.add_argument("--plain-http", action="store_true")
    p.add_argument("--ca-file")
    p.add_argument("--user")
    p.add_argument("--password")
    args = p.parse_args()

    client = make_client(args)
    if args.command == "push":
        annotations = dict(a.split("=", 1) for a in args.annotation)
        resp = client.push(
            target=args.ref,
            files=args.files,
            manifest_annotations=annotations or None,
            quiet=True,
        )
        print(
            json.dumps(
                {"status": resp.status_code, "digest": resp.headers.get("Docker-Content-Digest")}
            )
        )
    elif args.command == "pull":
        # The SDK pulls every layer whatever its media type (its `allowed_media_type` is the
        # manifest Accept list), and untars tar+gzip layers into the output directory.
        files = client.pull(target=args.ref, outdir=args.outdir)
        print(json.dumps({"files": files}))
    else:
        print(json.dumps({"manifest": client.get_manifest(args.ref)}))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report any SDK failure the same way
        print(f"interop.py: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
