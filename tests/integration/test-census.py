#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""test-census.py: the grpcio side of test-census.sh.

  deks --tenant T --envs FILE --certs DIR --out FILE
      Service certificates for every environment named in FILE (one a
      line; 16 per certificate, made once in DIR from the PKI in $KBT_PKI);
      every one's DEK read through GetDataKey and written to --out as
      "NAME BASE64-DEK" lines (kb-seed --deks-out's form), sorted. Prints
      "ok"/"FAIL" lines; exits 1 when a read failed.
"""
import argparse
import base64
import os
import sys

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kbt_grpc  # noqa: E402

report = kbt_grpc.report


def cmd_deks(a):
    with open(a.envs) as f:
        envs = sorted(line.strip() for line in f if line.strip())
    if not os.path.exists(os.path.join(a.certs, "certs", "index.json")):
        kbt_grpc.service_certs(os.environ["KBT_PKI"], os.path.join(a.certs, "certs"),
                               a.tenant, envs)
    readers = kbt_grpc.Readers(a.tenant, a.certs)
    res = readers.read_all(envs)
    failed = [e for e in envs if res[e][0] != grpc.StatusCode.OK]
    report(not failed, "GetDataKey answers for each of the %d environments of %s"
           % (len(envs), a.tenant),
           "%d failed, e.g. %s" % (len(failed), [(e, str(res[e][0]), res[e][1])
                                                 for e in failed[:3]]))
    with open(a.out, "w") as f:
        for e in envs:
            if res[e][0] == grpc.StatusCode.OK:
                f.write("%s %s\n" % (e, base64.b64encode(res[e][1].dek).decode()))
    return 1 if failed else 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("deks")
    d.add_argument("--tenant", required=True)
    d.add_argument("--envs", required=True)
    d.add_argument("--certs", required=True)
    d.add_argument("--out", required=True)
    a = p.parse_args()
    return cmd_deks(a)


if __name__ == "__main__":
    sys.exit(main())
