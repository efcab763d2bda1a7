"""FerretDB's debug server (pprof, metrics, its command line; no authentication) is on loopback, on a
private port of each instance's own, never FerretDB's well-known default 8088 (deploy/local)."""

import os
import re
import socket
import subprocess

from harness.devstack import DEPLOY

FERRETDB_DEFAULT_DEBUG_PORT = 8088


def lib_sh(script: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FERRETDB_")}
    done = subprocess.run(
        ["bash", "-c", f'source "{DEPLOY / "lib.sh"}"; {script}'],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


def test_the_debug_port_is_picked_per_instance_unless_set():
    assert lib_sh('echo "[$FERRETDB_DEBUG_PORT]"') == "[]\n"
    assert lib_sh('echo "$FERRETDB_DEBUG_PORT"', FERRETDB_DEBUG_PORT="41234") == "41234\n"
    ports = [int(p) for p in lib_sh("for _ in 1 2 3 4 5 6; do free_private_port; done").split()]
    assert len(ports) == 6
    assert len(set(ports)) > 1  # picked, not a constant
    for port in ports:
        assert 20000 <= port <= 32767  # not the ephemeral range, where client sockets take ports
        assert port != FERRETDB_DEFAULT_DEBUG_PORT


def test_a_port_someone_listens_on_counts_as_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert lib_sh(f"port_in_use {port} && echo taken") == "taken\n"


def test_ferretdb_sh_binds_the_debug_server_to_loopback_and_records_it():
    script = (DEPLOY / "ferretdb.sh").read_text()
    flags = re.findall(r"--debug-addr=\"([^\"]*)\"", script)
    assert flags == ["127.0.0.1:$debug_port"]
    assert "8088" not in script
    assert 'echo "127.0.0.1:$debug_port" >"$DEBUG_ADDR_FILE"' in script
