"""Hunt 25 (cb): a review of the last session's fixes (49d2fdc..9fdbfc4): is each fix complete for its whole class,
every caller and every command, and does its own new branch hold at its edges."""

from __future__ import annotations

import socket
import threading

from archive_pipeline_tests.test_hunt17_wf import _env, _events, cli


class _ProxyWantingCredentials:
    """A forward proxy that answers every request (an https endpoint's CONNECT) ``407 Proxy Authentication
    Required``, as squid or a corporate proxy does to a client that gives no credentials."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.asked: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            with client:
                head = b""
                while b"\r\n\r\n" not in head and (chunk := client.recv(4096)):
                    head += chunk
                self.asked.append(head.split(b"\r\n", 1)[0])
                client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic "
                               b"realm=\"proxy\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def __enter__(self) -> _ProxyWantingCredentials:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.close()
        self.thread.join(5)


def test_the_bucket_check_through_an_https_proxy_asking_for_credentials_says_unreachable_and_retryable(
        pg, s3, bucket, conn, schema, tmp_path):
    """Scenario: the store's endpoint is https:// (AWS S3, an R2 or MinIO with TLS) and the host reaches it through
    a forward proxy (HTTPS_PROXY) that wants credentials: its answer to the tunnel's CONNECT is ``407 Proxy
    Authentication Required``; the user runs ``archive-pipeline archive --day D``.

    Now: fix 589c4f2 taught errors.classify that a botocore ProxyConnectionError whose urllib3 error says 407 is
    _S3_PROXY_AUTH (not retryable, "put the proxy's user and password in the URL HTTPS_PROXY names"), and fix
    4e530e6 sent the bucket check's bare 407 (a plain-http endpoint's proxy page) through that table; but for an
    https endpoint the 407 comes back to the CONNECT, as ProxyConnectionError, and environment.store_from_env's
    HeadBucket check catches it in its generic ``except BotoCoreError``: "cannot reach the object store
    (ProxyConnectionError: Failed to connect to proxy URL: ...): check $ARCHIVE_S3_ENDPOINT_URL and the network",
    UnreachableError retryable, exit 3: a cron wrapper retries for ever what only the proxy's credentials fix, and
    the message points at the endpoint, not the proxy. (A Dagster run's first store request, classified by
    _wrap, says the 407 right: the two paths disagree.)

    Should: the bucket check classifies a ProxyConnectionError (as it does an SSLError) by errors.classify: a 407
    is a setting to fix (exit 2, not retryable, naming the proxy's credentials); a proxy that cannot be reached
    names the proxy settings. Fix idea: in store_from_env, ``except ProxyConnectionError as exc: found =
    classify(exc)`` before the generic BotoCoreError clause, raising UnreachableError(retryable=found.retryable)
    with found.cause and found.remedy."""
    days, table = _events(conn, schema, n_days=1)
    env = _env(pg, s3, bucket, tmp_path, [table])
    env = {k: v for k, v in env.items() if k.lower() not in ("no_proxy", "https_proxy", "http_proxy", "all_proxy")}
    with _ProxyWantingCredentials() as proxy:
        done = cli({**env, "ARCHIVE_S3_ENDPOINT_URL": "https://s3.us-east-1.amazonaws.com", "HTTPS_PROXY": proxy.url},
                   "archive", "--day", days[0].isoformat())
    said = done.stdout + done.stderr
    assert proxy.asked and proxy.asked[0].startswith(b"CONNECT "), proxy.asked  # (the 407 is the tunnel's answer)
    assert "407" in said and "proxy" in said.lower(), said
    assert done.returncode == 2, (done.returncode, said)  # a setting to fix, not "unreachable for now" (3)
