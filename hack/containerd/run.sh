#!/bin/sh
# Private containerd for tests: run.sh start|stop|env|purge DIR  (see private_containerd.py)
exec python3 "$(dirname "$0")/private_containerd.py" "$@"
