"""The Python client against the real daemon: a fresh vault in a temporary directory, the
`shredvault` binary of this repository ($SHREDVAULT_BIN, else .build/debug/shredvault),
real LMDB files and libsodium. Tokens live in 0600 files, never in argv."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import shredvault_client as sv  # noqa: E402

REPO = HERE.parents[2]
BIN = os.environ.get("SHREDVAULT_BIN") or str(REPO / ".build" / "debug" / "shredvault")

NOTE = {"note": "asked about invoice 77", "n": 3, "nested": {"ok": True, "list": [1, "två", None]}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """One vault and its daemon for the whole module (start-up costs a key derivation)."""

    def __init__(self) -> None:
        # Short: the socket path must fit sun_path (108 bytes).
        self.dir = Path(tempfile.mkdtemp(prefix="svpy.", dir="/tmp"))
        os.chmod(self.dir, 0o700)
        (self.dir / "keys").mkdir(mode=0o700)
        self.socket = str(self.dir / "data" / "shredvault.sock")
        self.port = free_port()
        out = subprocess.run([BIN, "init", "--data-dir", str(self.dir / "data"),
                              "--key-file", str(self.dir / "keys" / "master.key"), "--name", "python tests"],
                             check=True, capture_output=True, text=True).stdout
        self.operator_token = self._token_file("operator", json.loads(out)["operator_token"])
        del out
        self.log = open(self.dir / "daemon.log", "wb")
        self.process = subprocess.Popen([BIN, "serve", "--data-dir", str(self.dir / "data"),
                                         "--key-file", str(self.dir / "keys" / "master.key"),
                                         "--socket", self.socket, "--listen", f"127.0.0.1:{self.port}"],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        probe = sv.VaultClient(token=b"unused", socket_path=self.socket, timeout=2)
        while True:
            try:
                if probe.health():
                    break
            except sv.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the daemon did not start; see " + str(self.dir / "daemon.log"))
            time.sleep(0.1)

    def _token_file(self, name: str, token: str) -> Path:
        path = self.dir / "keys" / f"{name}.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return path

    def cli(self, *args: str) -> None:
        subprocess.run([BIN, *args, "--socket", self.socket, "--token-file", str(self.operator_token)],
                       check=True, capture_output=True)

    def tenant(self, name: str) -> tuple[Path, Path]:
        """A tenant with an agent and an admin token, each in a 0600 file."""
        self.cli("tenant", "create", name)
        files = []
        for role in ("agent", "admin"):
            path = self.dir / "keys" / f"{name}-{role}.token"
            self.cli("token", "issue", "--tenant", name, "--role", role, "--name", f"{name} {role}", "--output", str(path))
            files.append(path)
        return files[0], files[1]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


daemon: Daemon


def setUpModule() -> None:
    global daemon
    if not os.access(BIN, os.X_OK):
        raise unittest.SkipTest(f"{BIN} is not built (swift build)")
    daemon = Daemon()


def tearDownModule() -> None:
    daemon.stop()


class ClientTests(unittest.TestCase):
    tenant_count = 0

    def setUp(self) -> None:
        # A tenant per test: no test sees another's records.
        ClientTests.tenant_count += 1
        self.tenant = f"py-{ClientTests.tenant_count}"
        self.agent_file, self.admin_file = daemon.tenant(self.tenant)
        self.agent = sv.VaultClient(token_file=self.agent_file, socket_path=daemon.socket)
        self.admin = sv.VaultClient(token_file=self.admin_file, socket_path=daemon.socket)
        self.addCleanup(self.agent.close)
        self.addCleanup(self.admin.close)

    def test_write_then_read_returns_what_was_written(self) -> None:
        receipt = self.agent.write("cust-123", "personal", "phone", NOTE)
        self.assertEqual(len(receipt["id"]), 26)
        self.assertLess(receipt["created_at"], receipt["expires_at"])
        record = self.agent.read(receipt["id"])
        self.assertEqual(record["id"], receipt["id"])
        self.assertEqual(record["subject"], "cust-123")
        self.assertEqual(record["category"], "personal")
        self.assertEqual(record["channel"], "phone")
        self.assertEqual(record["version"], 1)
        self.assertEqual(record["data"], NOTE)

    def test_correct_makes_a_new_version(self) -> None:
        receipt = self.agent.write("cust-1", "non_personal", "email", {"v": 1})
        corrected = self.agent.correct(receipt["id"], {"v": 2})
        self.assertEqual(corrected["version"], 2)
        self.assertEqual(self.agent.read(receipt["id"])["data"], {"v": 2})

    def test_token_as_bytes_like_and_over_tcp(self) -> None:
        token = self.agent_file.read_bytes().strip()
        for value in (token, bytearray(token), memoryview(token)):
            with sv.VaultClient(token=value, socket_path=daemon.socket) as c:
                receipt = c.write("cust-b", "personal", "chat", {"k": "v"})
                self.assertEqual(c.read(receipt["id"])["data"], {"k": "v"})
        with sv.VaultClient(token=token, url=f"http://127.0.0.1:{daemon.port}") as c:
            receipt = c.write("cust-tcp", "personal", "web", [1, 2, 3])
            self.assertEqual(self.agent.read(receipt["id"])["data"], [1, 2, 3])

    def test_a_str_token_and_bad_arguments_are_refused(self) -> None:
        with self.assertRaises(TypeError):
            sv.VaultClient(token="svt_" + "a" * 43, socket_path=daemon.socket)  # type: ignore[arg-type]
        with self.assertRaises(ValueError):
            sv.VaultClient(socket_path=daemon.socket)
        with self.assertRaises(ValueError):
            sv.VaultClient(token=b"svt_x", token_file=self.agent_file)
        with self.assertRaises(ValueError):
            sv.VaultClient(token=b"svt_x\r\nX-Injected: 1", socket_path=daemon.socket)

    def test_close_wipes_the_token(self) -> None:
        c = sv.VaultClient(token_file=self.agent_file, socket_path=daemon.socket)
        held = c._token
        c.close()
        self.assertTrue(all(b == 0 for b in held))
        self.assertNotIn("svt_", repr(c))

    def test_a_bad_token_is_unauthorized_and_the_error_does_not_carry_it(self) -> None:
        secret = b"svt_" + b"Z" * 43
        with sv.VaultClient(token=secret, socket_path=daemon.socket) as c:
            with self.assertRaises(sv.Unauthorized) as caught:
                c.read("01KZZZZZZZZZZZZZZZZZZZZZZZ")
        e = caught.exception
        self.assertEqual(e.status, 401)
        self.assertEqual(e.type, "/problems/unauthorized")
        self.assertTrue(e.detail)
        for text in (str(e), repr(e), str(e.args)):
            self.assertNotIn("ZZZZZZZZ", text)

    def test_not_found_forbidden_bad_request_refused(self) -> None:
        with self.assertRaises(sv.NotFound) as nf:
            self.agent.read("01KZZZZZZZZZZZZZZZZZZZZZZZ")
        self.assertEqual(nf.exception.type, "/problems/not-found")
        receipt = self.agent.write("cust-f", "personal", "phone", {})
        with self.assertRaises(sv.Forbidden):
            self.agent.delete(receipt["id"])  # deleting is the client's (admin's) instruction
        with self.assertRaises(sv.BadRequest) as bad:
            self.agent.write("cust-f", "no-such-category", "phone", {})
        self.assertIn("category", bad.exception.detail)
        with self.assertRaises(sv.Refused) as refused:
            self.agent.write("cust-f", "personal", "phone", {}, retention="P400D")
        self.assertEqual(refused.exception.status, 422)
        self.admin.delete(receipt["id"])
        with self.assertRaises(sv.NotFound):
            self.agent.read(receipt["id"])
        # Every error class is a VaultError.
        self.assertTrue(issubclass(sv.Refused, sv.VaultError))

    def test_batch_one_bad_item_fails_alone(self) -> None:
        results = self.agent.batch([
            sv.record("cust-9", "personal", "sms", {"i": 0}),
            {"subject": "cust-9", "category": "personal", "channel": "pigeon", "data": {}},
            sv.record("cust-9", "privacy_related", "email", {"i": 2}, retention="P7D"),
        ])
        self.assertEqual(len(results), 3)
        self.assertIsInstance(results[1], sv.BadRequest)
        self.assertIn("channel", results[1].detail)
        for i in (0, 2):
            self.assertIsInstance(results[i], dict)
            self.assertEqual(self.agent.read(results[i]["id"])["data"], {"i": i})
        self.assertEqual(len(self.agent.records("cust-9")), 2)

    def test_export_then_erase_makes_every_record_unreadable(self) -> None:
        ids = [self.agent.write("cust-erase", "personal", "phone", {"i": i})["id"] for i in range(3)]
        other = self.agent.write("cust-keep", "personal", "phone", {"keep": True})["id"]
        exported = self.admin.export("cust-erase")
        self.assertEqual(sorted(r["id"] for r in exported), sorted(ids))
        self.assertTrue(all(r["subject"] == "cust-erase" for r in exported))
        with self.assertRaises(sv.Forbidden):
            self.agent.export("cust-erase")  # the disclosure export is the admin's
        answer = self.admin.erase("cust-erase", reference="ticket-42")
        self.assertEqual(answer["erased"], 3)
        self.assertEqual(answer["receipt"]["erased"], 3)
        self.assertRegex(answer["receipt"]["subject_tag"], r"^[0-9a-f]{32}$")
        for record_id in ids:
            with self.assertRaises(sv.NotFound):
                self.agent.read(record_id)
        self.assertEqual(self.admin.export("cust-erase"), [])
        self.assertEqual(self.agent.read(other)["data"], {"keep": True})

    def test_a_legal_hold_blocks_erasure_with_conflict(self) -> None:
        record_id = self.agent.write("cust-held", "personal", "phone", {})["id"]
        hold = self.admin.request("POST", "/v1/holds", {"subject": "cust-held", "reason": "litigation", "reference": "case-1"})
        with self.assertRaises(sv.Conflict) as conflict:
            self.admin.erase("cust-held")
        self.assertEqual(conflict.exception.status, 409)
        self.assertEqual(self.agent.read(record_id)["version"], 1)  # nothing erased
        self.admin.request("DELETE", f"/v1/holds/{hold['id']}")
        self.assertEqual(self.admin.erase("cust-held")["erased"], 1)

    def test_tenants_are_isolated(self) -> None:
        record_id = self.agent.write("cust-iso", "personal", "phone", {"secret": 1})["id"]
        other_agent, _ = daemon.tenant(self.tenant + "-other")
        with sv.VaultClient(token_file=other_agent, socket_path=daemon.socket) as other:
            with self.assertRaises(sv.NotFound):
                other.read(record_id)
            self.assertEqual(other.records("cust-iso"), [])

    def test_an_unreachable_daemon_is_a_transport_error(self) -> None:
        with sv.VaultClient(token=b"svt_x", socket_path=str(daemon.dir / "nothing.sock")) as c:
            with self.assertRaises(sv.TransportError) as caught:
                c.health()
        self.assertEqual(caught.exception.status, 0)
        self.assertNotIn("svt_x", str(caught.exception))


if __name__ == "__main__":
    unittest.main()
