#!/bin/sh
# Install moto's EC2 server into a venv, once. Idempotent: a second run only checks.
# The tests call this (VPC_ROUTES_MOTO_VENV overrides the location) and then start
# `$VENV/bin/moto_server` themselves on a free port.
set -eu
VENV=${VPC_ROUTES_MOTO_VENV:-/var/tmp/vpc-routes-moto}
if [ -x "$VENV/bin/moto_server" ] && "$VENV/bin/python" -c 'import moto.server, flask' 2>/dev/null; then
    exit 0
fi
# Serialise concurrent installs (cargo runs test binaries' setup from several threads).
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
if [ -x "$VENV/bin/moto_server" ] && "$VENV/bin/python" -c 'import moto.server, flask' 2>/dev/null; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check 'moto[ec2,server]>=5,<6'
"$VENV/bin/python" -c 'import moto.server, flask'
