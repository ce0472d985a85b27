"""The transport piece by piece, value by value: error mapping, connect,
the channel's write/flush/interest bookkeeping, the reactor's loop steps,
the listener, datagrams and the server-side TLS handshake.

Fast and deterministic: loopback only (port 0), a reactor started on the
test's own thread and stepped with ``run_once``, fake sockets where an OS
error cannot be provoked, a fake clock where a value must be exact.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

import peng3dnet.transport as tr
from peng3dnet.errors import InvalidAddressError, NetworkError, TLSError
from peng3dnet.transport import (
    CORK_GAP,
    EVENT_READ,
    EVENT_WRITE,
    MARK_GAP,
    Channel,
    Datagram,
    Listener,
    Reactor,
    Timer,
    connect,
    map_oserror,
    prepare,
    wait_any,
)
from tests.certs import make_ca, make_leaf

LOG = "peng3dnet.transport"


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture(params=["epoll", "poll"])
def reactor(request: pytest.FixtureRequest) -> Iterator[Reactor]:
    """A reactor started on the test's thread (step it with run_once), once
    with the default selector (epoll: run_once calls ``epoll.poll``
    itself) and once with another (``select()`` of the selector)."""
    r = Reactor("test")
    r.start(selectors.DefaultSelector if request.param == "epoll" else selectors.PollSelector, lambda: None)
    assert (r._epoll is not None) == (request.param == "epoll")
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def tcp() -> Iterator[tuple[Listener, socket.socket, socket.socket]]:
    """A listener on 127.0.0.1, a connected client and the accepted socket."""
    listener = Listener("127.0.0.1", 0)
    client = socket.create_connection(listener.addr, timeout=5)
    listener.sock.setblocking(True)
    listener.sock.settimeout(5)
    server, _ = listener.sock.accept()
    server.setblocking(False)
    try:
        yield listener, client, server
    finally:
        client.close()
        server.close()
        listener.close()


def _recv_all(sock: socket.socket) -> bytes:
    """What is waiting on a socket now (non-blocking)."""
    sock.setblocking(False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


class FakeSock:
    """A socket stand-in: each send() consumes the next entry of ``takes``
    (an int: bytes taken, at most; an exception: raised); when they are
    used up, send() would block.  Records every call."""

    family = socket.AF_UNIX

    def __init__(self, takes: list[Any] | None = None, fd_of: socket.socket | None = None) -> None:
        self.takes = list(takes or [])
        self.sent: list[bytes] = []
        self.send_sizes: list[int] = []
        self.calls: list[tuple[Any, ...]] = []
        self.fd_of = fd_of
        self.raise_on: dict[str, BaseException] = {}

    def send(self, data: Any) -> int:
        data = bytes(data)
        self.send_sizes.append(len(data))
        if not self.takes:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        take = self.takes.pop(0)
        if isinstance(take, BaseException):
            raise take
        n = min(take, len(data))
        self.sent.append(data[:n])
        return n

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if name in self.raise_on:
            raise self.raise_on[name]

    def recv_into(self, buf: Any) -> int:
        self._call("recv_into")
        return 0

    def shutdown(self, how: int) -> None:
        self._call("shutdown", how)

    def setsockopt(self, *args: Any) -> None:
        self._call("setsockopt", *args)

    def setblocking(self, flag: bool) -> None:
        self._call("setblocking", flag)

    def close(self) -> None:
        self._call("close")

    def fileno(self) -> int:
        return self.fd_of.fileno() if self.fd_of is not None else -1


class SpyCondition(threading.Condition):
    """Counts notify_all() calls."""

    def __init__(self, lock: Any) -> None:
        super().__init__(lock)
        self.notified = 0

    def notify_all(self) -> None:
        self.notified += 1
        super().notify_all()


class FakeClock:
    """Stands in for the ``time`` module in peng3dnet.transport."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


def _key(r: Reactor, sock: Any) -> tuple[int, Any] | None:
    """(events, data) the reactor's selector has for ``sock``, None when not registered."""
    assert r.selector is not None
    key = r.selector.get_map().get(sock.fileno())
    return None if key is None else (key.events, key.data)


@contextlib.contextmanager
def _safety_wake(r: Reactor, after: float = 3.0) -> Iterator[None]:
    """Write a wake-up byte after ``after`` seconds unless the block ended:
    a run_once that would block forever (a broken timeout) returns, late."""
    done = threading.Event()
    w = r._wake_w

    def waker() -> None:
        if not done.wait(after) and w is not None:
            with contextlib.suppress(OSError):
                w.send(b"\0")

    t = threading.Thread(target=waker, daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join(10)


def _in_thread(fn: Any, *args: Any) -> Any:
    """Run ``fn(*args)`` on another thread, wait, return its result (or raise its exception)."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(("ok", fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            box.append(("err", exc))

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert box, "the thread did not finish"
    kind, value = box[0]
    if kind == "err":
        raise value
    return value


def _locked_write(ch: Channel, data: bytes, cork: bool = True) -> None:
    with ch.lock:
        ch.write(data, cork)


# --- map_oserror ----------------------------------------------------------------------------


def _ssl_error(text: str) -> ssl.SSLError:
    return ssl.SSLError(1, text)


def test_map_oserror_certificate_not_accepted_names_the_verify_message():
    exc = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    exc.verify_message = "self-signed certificate in certificate chain"
    err = map_oserror(exc, "handshake")
    assert type(err) is TLSError and err.reason == "tlserror"
    assert str(err) == "TLS: the certificate was not accepted: self-signed certificate in certificate chain"


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("[SSL: BAD_RECORD_MAC] bad record mac", ""),
        ("[SSL: WRONG_VERSION_NUMBER] wrong version number", " (does the server have TLS enabled?)"),
        ("[SSL] record layer failure (_ssl.c:1006)", " (does the server have TLS enabled?)"),
        (
            "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required",
            " (the server requires a client certificate)",
        ),
        ("alert certificate_required", " (the server requires a client certificate)"),
        # both: the first hint wins
        ("[SSL: WRONG_VERSION_NUMBER] CERTIFICATE_REQUIRED", " (does the server have TLS enabled?)"),
    ],
)
def test_map_oserror_tls_errors_and_their_hints(text, hint):
    exc = _ssl_error(text)
    err = map_oserror(exc, "op")
    assert type(err) is TLSError and err.reason == "tlserror"
    assert str(err) == f"TLS op failed: {exc}{hint}"


def test_map_oserror_resolution_and_other_errors():
    gai = socket.gaierror(-2, "Name or service not known")
    err = map_oserror(gai, "sendto x")
    assert type(err) is InvalidAddressError and not isinstance(err, NetworkError)
    assert str(err) == "cannot resolve the address for sendto x: [Errno -2] Name or service not known"
    err = map_oserror(ConnectionRefusedError(111, "Connection refused"), "op")
    assert type(err) is NetworkError and err.reason == "socketerror"
    assert str(err) == "op: [Errno 111] Connection refused"


# --- prepare --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_prepare_makes_tcp_sockets_non_blocking_without_nagle(family):
    sock = FakeSock()
    sock.family = family  # type: ignore[misc]
    prepare(sock)  # type: ignore[arg-type]
    assert sock.calls == [("setblocking", False), ("setsockopt", socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    sock = FakeSock()
    sock.family = family  # type: ignore[misc]
    sock.raise_on["setsockopt"] = OSError(95, "Operation not supported")
    prepare(sock)  # type: ignore[arg-type]  # best effort: no error
    unix = FakeSock()
    prepare(unix)  # type: ignore[arg-type]
    assert unix.calls == [("setblocking", False)]  # not TCP: no TCP option


# --- connect --------------------------------------------------------------------------------


def test_connect_passes_the_timeout_and_host_port_only(monkeypatch):
    listener = Listener("::1", 0)
    seen: list[tuple[Any, Any]] = []
    real = socket.create_connection

    def spy(address: Any, timeout: Any = "default", *args: Any, **kwargs: Any) -> socket.socket:
        seen.append((address, timeout))
        return real(address, timeout)

    monkeypatch.setattr(socket, "create_connection", spy)
    addr = listener.sock.getsockname()  # an IPv6 4-tuple, as getpeername() gives
    assert len(addr) == 4
    sock = connect(addr, timeout=0.75)
    try:
        assert seen == [(addr[:2], 0.75)]
        assert sock.getpeername()[:2] == listener.addr
        assert not sock.getblocking()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()
        listener.close()


def test_connect_errors_name_the_address(monkeypatch):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with pytest.raises(NetworkError) as ei:
        connect(("127.0.0.1", port), timeout=5)
    assert type(ei.value) is NetworkError and isinstance(ei.value.__cause__, ConnectionRefusedError)
    assert str(ei.value) == f"cannot connect to ('127.0.0.1', {port}): {ei.value.__cause__}"

    def unresolvable(*args: Any, **kwargs: Any) -> socket.socket:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unresolvable)
    with pytest.raises(InvalidAddressError) as ei2:
        connect(("nohost.invalid", 7), timeout=5)
    assert str(ei2.value) == "cannot resolve 'nohost.invalid': [Errno -2] Name or service not known"
    assert isinstance(ei2.value.__cause__, socket.gaierror)


# --- TLS: connect, wrap_tls, tls_step, pending, tls_version -----------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki"))
    ca = make_ca(d, "ca")
    other = make_ca(d, "otherca")
    server = make_leaf(d, "server", ca, dns=("localhost",))
    return {"ca": ca[2], "otherca": other[2], "server": server}


def _server_ctx(pki: dict) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*pki["server"])
    return ctx


def _client_ctx(pki: dict, ca: str = "ca") -> ssl.SSLContext:
    return ssl.create_default_context(cafile=pki[ca])  # verifies the certificate and the host name


def _tls_session(listener: Listener, sctx: ssl.SSLContext, client_fn: Any) -> tuple[Any, Any, list[int]]:
    """Accept one connection, wrap it and drive the server side's handshake
    with tls_step() (on this thread) while ``client_fn()`` runs on another.
    Returns (server channel or its exception, client result or exception,
    the tls_pending values seen)."""
    box: list[Any] = []
    t = threading.Thread(target=lambda: box.append(_catch(client_fn)))
    t.start()
    listener.sock.settimeout(5)
    try:
        sock, _ = listener.sock.accept()
    finally:
        listener.sock.setblocking(False)
    prepare(sock)
    ch = Channel(Listener.wrap_tls(sock, sctx), Reactor("t"), lambda mask: None)
    pendings: list[int] = []
    server: Any = ch
    deadline = time.monotonic() + 5
    try:
        while True:
            ch.tls_step()
            pendings.append(ch.tls_pending)
            if not ch.tls_pending:
                break
            sel = selectors.DefaultSelector()
            sel.register(ch.sock, ch.tls_pending)
            ready = sel.select(0.1)
            sel.close()
            if (not ready and not t.is_alive()) or time.monotonic() > deadline:
                server = TimeoutError("handshake not done")
                break
    except Exception as exc:  # noqa: BLE001 - returned to the test
        server = exc
    t.join(10)
    if server is not ch:
        ch.close()
    return server, box[0] if box else None, pendings


def _catch(fn: Any) -> Any:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - returned to the test
        return exc


def test_tls_connect_and_server_handshake_step_by_step(pki):
    listener = Listener("127.0.0.1", 0)
    port = listener.addr[1]
    ch, client, pendings = _tls_session(
        listener, _server_ctx(pki), lambda: connect(("localhost", port), 5, _client_ctx(pki))
    )
    try:
        assert isinstance(ch, Channel), ch
        assert isinstance(client, ssl.SSLSocket), client  # verified: certificate and host name
        # Usually a step or more waits for the client's next flight; the
        # first step may also finish alone (do_handshake() releases the GIL:
        # the client's thread can answer between the server's write and its
        # read).  The waits themselves are tested with a fake socket below.
        assert pendings[-1] == 0 and all(p == EVENT_READ for p in pendings[:-1])
        assert not client.getblocking() and client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert ch.tls_version() == client.version() and ch.tls_version() in ("TLSv1.2", "TLSv1.3")
        assert client.server_hostname == "localhost"
        buf = bytearray(5)
        assert ch.read_into(buf) == -1  # nothing decrypted, nothing on the socket: try later
        assert not ch.pending()
        client.sendall(b"hello world")  # one record of 11 bytes
        sel = selectors.DefaultSelector()
        sel.register(ch.sock, EVENT_READ)
        assert sel.select(5)
        sel.close()
        got = b""
        big = bytearray(10)
        while len(got) < 11:
            n = ch.read_into(big)
            if n > 0:
                got += bytes(big[:n])
                if len(got) == 10:  # the record's last byte is decrypted, waiting in TLS
                    assert ch.pending()
        assert got == b"hello world" and not ch.pending()
    finally:
        if isinstance(client, socket.socket):
            client.close()
        if isinstance(ch, Channel):
            ch.close()
        listener.close()


def test_plain_channel_has_no_tls_version_and_nothing_pending(pair):
    a, b = pair
    ch = Channel(a, Reactor("t"), lambda mask: None)
    b.send(b"x")
    assert ch.tls_version() is None
    assert ch.pending() is False


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_tls_connect_checks_the_host_name_it_was_given(pki, host):
    """The certificate names localhost: its host name is sent as
    server_hostname and checked (127.0.0.1 is not in it)."""
    listener = Listener("127.0.0.1", 0)
    port = listener.addr[1]
    server, client, _ = _tls_session(listener, _server_ctx(pki), lambda: connect((host, port), 5, _client_ctx(pki)))
    try:
        if host == "localhost":
            assert isinstance(client, ssl.SSLSocket), client
            assert isinstance(server, Channel), server
        else:
            assert type(client) is TLSError, client
            assert str(client).startswith("TLS: the certificate was not accepted: ")
            assert "127.0.0.1" in str(client)  # "IP address mismatch, certificate is not valid for '127.0.0.1'."
            assert isinstance(server, TLSError), server  # the client's alert ends the server's handshake
            assert str(server).startswith("TLS handshake failed: ")
    finally:
        if isinstance(client, socket.socket):
            client.close()
        if isinstance(server, Channel):
            server.close()
        listener.close()


def test_tls_connect_with_an_untrusted_certificate(pki):
    listener = Listener("127.0.0.1", 0)
    port = listener.addr[1]
    server, client, _ = _tls_session(
        listener, _server_ctx(pki), lambda: connect(("localhost", port), 5, _client_ctx(pki, "otherca"))
    )
    try:
        assert type(client) is TLSError and client.reason == "tlserror"
        assert isinstance(client.__cause__, ssl.SSLCertVerificationError)
        assert str(client) == f"TLS: the certificate was not accepted: {client.__cause__.verify_message}"
    finally:
        if isinstance(server, Channel):
            server.close()
        listener.close()


def test_tls_connect_to_a_plaintext_server_says_so(pki):
    """The server answers the ClientHello with plain text."""
    listener = Listener("127.0.0.1", 0)
    addr = ("127.0.0.1", listener.addr[1])
    box: list[Any] = []
    t = threading.Thread(target=lambda: box.append(_catch(lambda: connect(addr, 5, _client_ctx(pki)))))
    t.start()
    listener.sock.settimeout(5)
    sock, _ = listener.sock.accept()
    try:
        sock.settimeout(5)
        sock.recv(4096)  # the ClientHello
        sock.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
        t.join(10)
        err = box[0]
        assert type(err) is TLSError, err
        assert isinstance(err.__cause__, ssl.SSLError)
        assert str(err) == f"TLS handshake with {addr} failed: {err.__cause__} (does the server have TLS enabled?)"
    finally:
        sock.close()
        listener.close()


def _wrapped(pki: dict, tcp: tuple) -> Channel:
    _, _, server = tcp
    return Channel(Listener.wrap_tls(server, _server_ctx(pki)), Reactor("t"), lambda mask: None)


def test_tls_step_waiting_to_write_and_errors(pki, tcp):
    ch = _wrapped(pki, tcp)
    sock = ch.sock
    assert isinstance(sock, ssl.SSLSocket) and sock.server_side
    assert ch.tls_pending == 0

    def raiser(exc: BaseException) -> Any:
        def do_handshake() -> None:
            raise exc

        return do_handshake

    sock.do_handshake = raiser(ssl.SSLWantWriteError(3, "want write"))  # type: ignore[method-assign]
    ch.tls_step()
    assert ch.tls_pending == EVENT_WRITE
    sock.do_handshake = raiser(ssl.SSLWantReadError(2, "want read"))  # type: ignore[method-assign]
    ch.tls_step()
    assert ch.tls_pending == EVENT_READ
    # an SSL error: mapped, with the handshake named
    exc = _ssl_error("[SSL: WRONG_VERSION_NUMBER] wrong version number")
    sock.do_handshake = raiser(exc)  # type: ignore[method-assign]
    with pytest.raises(TLSError) as ei:
        ch.tls_step()
    assert str(ei.value) == f"TLS handshake failed: {exc} (does the server have TLS enabled?)"
    assert ei.value.__cause__ is exc and ch.tls_pending == 0
    # a plain socket error during the handshake is a TLS error too
    ch.tls_pending = EVENT_READ
    reset = ConnectionResetError(104, "Connection reset by peer")
    sock.do_handshake = raiser(reset)  # type: ignore[method-assign]
    with pytest.raises(TLSError) as ei:
        ch.tls_step()
    assert type(ei.value) is TLSError and ei.value.reason == "tlserror"
    assert str(ei.value) == "[Errno 104] Connection reset by peer" and ei.value.__cause__ is reset
    assert ch.tls_pending == 0
    sock.do_handshake = lambda: None  # type: ignore[method-assign]
    ch.tls_pending = EVENT_READ
    ch.tls_step()
    assert ch.tls_pending == 0
    ch.close()


def test_tls_step_holds_the_channel_lock(pki, tcp):
    ch = _wrapped(pki, tcp)
    held: list[bool] = []

    def do_handshake() -> None:
        held.append(_in_thread(lambda: not ch.lock.acquire(blocking=False)))

    ch.sock.do_handshake = do_handshake  # type: ignore[method-assign]
    ch.tls_step()
    assert held == [True]
    ch.close()


def test_tls_step_of_a_plaintext_client_fails_with_the_hint(pki, tcp):
    _, client, server = tcp
    ch = Channel(Listener.wrap_tls(server, _server_ctx(pki)), Reactor("t"), lambda mask: None)
    client.sendall(b"\x00\x00\x00\x10plain peng3dnet frame, not a ClientHello")
    with pytest.raises(TLSError) as ei:
        for _ in range(100):
            sel = selectors.DefaultSelector()
            sel.register(ch.sock, EVENT_READ)
            sel.select(5)
            sel.close()
            ch.tls_step()
    assert isinstance(ei.value.__cause__, ssl.SSLError)
    assert str(ei.value).startswith(f"TLS handshake failed: {ei.value.__cause__}")
    assert ch.tls_pending == 0
    ch.close()


def _reset_before_wrap(tcp: tuple) -> socket.socket:
    """The client resets the connection before the server wraps it."""
    _, client, server = tcp
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, tr._LINGER_RESET)
    client.close()
    sel = selectors.DefaultSelector()
    sel.register(server, EVENT_READ)
    assert sel.select(5)  # the reset arrived
    sel.close()
    return server


def _close_leaked(exc: BaseException) -> list[ssl.SSLSocket]:
    """The SSLSockets still open in the frames of ``exc``'s cause (closed now)."""
    leaked = []
    tb = exc.__cause__.__traceback__ if exc.__cause__ is not None else None
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, ssl.SSLSocket) and obj.fileno() != -1:
            leaked.append(obj)
            obj.close()
        tb = tb.tb_next
    return leaked


def test_wrap_tls_of_a_connection_reset_first_raises_tls_error_and_closes_it(pki, tcp):
    # (a library bug found by these tests: it raised NetworkError, which the
    # server's accept path does not catch, and left the descriptor open in a
    # half-made SSLSocket)
    server = _reset_before_wrap(tcp)
    with pytest.raises(TLSError) as ei:
        Listener.wrap_tls(server, _server_ctx(pki))
    assert str(ei.value) == "wrap: [Errno 104] Connection reset by peer"
    assert isinstance(ei.value.__cause__, ConnectionResetError)
    assert _close_leaked(ei.value) == []  # nothing left open
    assert server.fileno() == -1


class _NoSockopt(FakeSock):
    def getsockopt(self, *args: Any) -> int:
        raise OSError(9, "Bad file descriptor")


def test_wrap_tls_failure_closes_the_socket(pki):
    sock = _NoSockopt()
    with pytest.raises(TLSError) as ei:
        Listener.wrap_tls(sock, _server_ctx(pki))  # type: ignore[arg-type]
    assert str(ei.value) == "wrap: [Errno 9] Bad file descriptor"
    assert sock.calls == [("close",)]


def test_wrap_tls_of_a_closed_socket_fails_mapped(pki):
    sock = socket.socket()
    sock.close()
    with pytest.raises(TLSError) as ei:
        Listener.wrap_tls(sock, _server_ctx(pki))
    assert str(ei.value) == f"wrap: {ei.value.__cause__}"
    assert sock.fileno() == -1


# --- Channel.write --------------------------------------------------------------------------


def test_fresh_channel_state(pair):
    a, _ = pair
    ch = Channel(a, Reactor("t"), print)
    assert ch.sock is a and ch.on_ready is print and ch.mask == 0
    assert ch.paused is False and ch.closing is False and ch.closed is False and ch.shut is False
    assert ch.throttled is False and ch.error is None and ch.linger is None
    assert ch.tls_pending == 0 and ch.head == 0 and not ch.marks and ch.out == bytearray()
    assert ch.drain_waiters == 0 and ch.low_water == 0
    assert ch.last_write == 0.0 and type(ch.last_write) is float
    assert isinstance(ch.drained, threading.Condition)


def test_write_to_a_closed_channel_or_of_nothing_does_nothing(reactor):
    sock = FakeSock([100])
    seen: list[int] = []
    ch = Channel(sock, reactor, seen.append)  # type: ignore[arg-type]
    _in_thread(_locked_write, ch, b"")
    assert sock.send_sizes == [] and ch.last_write == 0.0
    ch.close()
    _locked_write(ch, b"data")
    assert sock.send_sizes == [] and ch.out == b"" and ch.error is None
    reactor.run_once(0)
    assert seen == []


def test_write_appends_behind_what_is_buffered(reactor):
    sock = FakeSock([3, 100])  # the first send takes 3 bytes, the next would take all
    ch = Channel(sock, reactor, lambda mask: None)  # type: ignore[arg-type]
    _locked_write(ch, b"hello")
    assert sock.sent == [b"hel"] and ch.out == b"lo" and ch.head == 3 and list(ch.marks) == [5]
    _locked_write(ch, b"world")  # never before "lo"
    assert sock.sent == [b"hel"] and ch.out == b"loworld" and ch.head == 3
    assert list(ch.marks) == [5]  # less than MARK_GAP after the last mark
    assert type(ch.out) is bytearray


def test_write_after_an_error_only_buffers(reactor):
    sock = FakeSock([100])
    ch = Channel(sock, reactor, lambda mask: None)  # type: ignore[arg-type]
    ch.error = NetworkError("send: broken")
    _locked_write(ch, b"abc")
    assert sock.send_sizes == [] and ch.out == b"abc" and list(ch.marks) == [3]


def test_write_send_error_is_stored_and_handed_to_the_network_thread(reactor):
    sock = FakeSock([BrokenPipeError(32, "Broken pipe")])
    seen: list[int] = []
    ch = Channel(sock, reactor, seen.append)  # type: ignore[arg-type]
    _locked_write(ch, b"abc")
    assert type(ch.error) is NetworkError and str(ch.error) == "send: [Errno 32] Broken pipe"
    assert ch.out == b"" and ch.last_write == 0.0
    assert seen == []  # not called from write() itself ...
    reactor.run_once(0)
    assert seen == [EVENT_WRITE]  # ... but from the loop, with the write event


def test_write_partial_send_on_the_network_thread_updates_interest_at_once(reactor, pair):
    a, _ = pair
    sock = FakeSock([2], fd_of=a)
    ch = Channel(sock, reactor, lambda mask: None)  # type: ignore[arg-type]
    _locked_write(ch, b"hello")
    assert ch.out == b"llo" and ch.head == 2 and list(ch.marks) == [5]
    assert ch.mask == EVENT_READ | EVENT_WRITE and _key(reactor, sock) == (EVENT_READ | EVENT_WRITE, ch.on_ready)
    assert ch.last_write == 0.0  # only writes from other threads count for corking
    # the rest goes, then a second partial write: head counts every byte through ``out``
    sock.takes = [100, 3]
    with ch.lock:
        assert ch.flush() is True
    assert ch.head == 5 and not ch.marks
    _locked_write(ch, b"abcdef")
    assert ch.head == 8 and ch.out == b"def" and list(ch.marks) == [11]
    assert sock.sent == [b"he", b"llo", b"abc"]


def test_write_partial_send_from_another_thread_asks_the_loop(reactor, pair):
    a, _ = pair
    sock = FakeSock([2], fd_of=a)
    ch = Channel(sock, reactor, lambda mask: None)  # type: ignore[arg-type]
    t0 = time.monotonic()
    _in_thread(_locked_write, ch, b"hello")
    assert ch.out == b"llo" and ch.head == 2
    assert isinstance(ch.last_write, float) and t0 <= ch.last_write <= time.monotonic()
    assert ch.mask == 0  # the network thread does it
    reactor.run_once(0)
    assert ch.mask == EVENT_READ | EVENT_WRITE and _key(reactor, sock) == (EVENT_READ | EVENT_WRITE, ch.on_ready)


def test_write_from_another_thread_within_cork_gap_is_buffered(reactor, pair, monkeypatch):
    a, b = pair
    clock = FakeClock(1000.0)
    monkeypatch.setattr(tr, "time", clock)
    seen: list[int] = []
    ch = Channel(a, reactor, seen.append)
    # exactly CORK_GAP after the last write: not a burst, sent at once
    ch.last_write = 0.0
    clock.now = CORK_GAP
    _in_thread(_locked_write, ch, b"lone")
    assert ch.out == b"" and _recv_all(b) == b"lone" and ch.last_write == CORK_GAP
    # less than CORK_GAP: buffered (two writes, one buffer), flushed by the loop
    clock.now = CORK_GAP * 1.5
    _in_thread(_locked_write, ch, b"one")
    _in_thread(_locked_write, ch, b"two")
    assert ch.out == b"onetwo" and type(ch.out) is bytearray and _recv_all(b) == b""
    assert list(ch.marks) == [3]  # where the first buffered write ended
    _in_thread(_locked_write, ch, b"now", False)  # fan-out: not corked, but behind the buffer
    assert ch.out == b"onetwonow"
    reactor.run_once(0)
    assert _recv_all(b) == b"onetwonow" and ch.out == b""
    assert ch.last_write == 0.0  # the burst is over
    assert seen == [] and ch.mask == EVENT_READ  # no error: just the interest


def test_a_burst_counts_per_connection_one_write_to_each_of_two_goes_out_at_once(reactor, monkeypatch):
    """One answer to each of many clients (a batch of handlers) is no burst:
    the gap is measured from the last write to the same connection."""
    clock = FakeClock(1000.0)
    monkeypatch.setattr(tr, "time", clock)
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        chans = []
        for a, _ in pairs:
            a.setblocking(False)
            chans.append(Channel(a, reactor, lambda mask: None))
        one, two = chans
        _in_thread(_locked_write, one, b"to one")
        assert one.out == b"" and one.last_write == 1000.0 and two.last_write == 0.0
        _in_thread(_locked_write, two, b"to two")  # at the same time, another connection: sent
        assert two.out == b"" and two.last_write == 1000.0
        assert _recv_all(pairs[0][1]) == b"to one" and _recv_all(pairs[1][1]) == b"to two"
        _in_thread(_locked_write, one, b"again")  # the same connection at once: a burst, corked
        assert one.out == b"again" and two.out == b""
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_corked_write_whose_flush_fails_hands_the_error_to_on_ready(reactor, pair, monkeypatch):
    a, _ = pair
    clock = FakeClock(1000.0)
    monkeypatch.setattr(tr, "time", clock)
    sock = FakeSock([ConnectionResetError(104, "Connection reset by peer")], fd_of=a)
    seen: list[int] = []
    ch = Channel(sock, reactor, seen.append)  # type: ignore[arg-type]
    ch.last_write = 1000.0
    _in_thread(_locked_write, ch, b"data")
    assert ch.out == b"data" and sock.send_sizes == []
    reactor.run_once(0)
    assert str(ch.error) == "send: [Errno 104] Connection reset by peer"
    assert seen == [EVENT_WRITE] and ch.mask == 0 and ch.last_write == 0.0


# --- _mark, drop_unsent ---------------------------------------------------------------------


def test_marks_are_at_least_mark_gap_apart(reactor):
    ch = Channel(FakeSock(), reactor, lambda mask: None)  # type: ignore[arg-type]
    ch.error = NetworkError("x")  # writes only buffer
    half = MARK_GAP // 2
    _locked_write(ch, b"a" * half)
    assert list(ch.marks) == [half]
    _locked_write(ch, b"b")
    assert list(ch.marks) == [half]  # 1 byte after the last mark
    _locked_write(ch, b"c" * (MARK_GAP - 1))
    assert list(ch.marks) == [half, half + MARK_GAP]  # exactly MARK_GAP after it


def test_drop_unsent_keeps_the_frame_partly_sent():
    sock = FakeSock([4])
    ch = Channel(sock, Reactor("t"), lambda mask: None)  # type: ignore[arg-type]
    with ch.lock:
        ch.write(b"a" * 10)
        ch.write(b"b" * 20)
        assert ch.head == 4 and ch.out == b"a" * 6 + b"b" * 20 and list(ch.marks) == [10]
        assert ch.drop_unsent() == 20
        assert ch.out == b"a" * 6 and list(ch.marks) == [10]


def test_drop_unsent_when_every_mark_was_sent():
    sock = FakeSock([])  # would block
    ch = Channel(sock, Reactor("t"), lambda mask: None)  # type: ignore[arg-type]
    with ch.lock:
        ch.write(b"a" * 10)
        ch.write(b"b" * 10)
        assert list(ch.marks) == [10]
        sock.takes = [15]
        assert ch.flush() is False
        assert ch.head == 15 and not ch.marks and ch.out == b"b" * 5
        assert ch.drop_unsent() == 0  # all of it is the frame partly sent
        assert ch.out == b"b" * 5 and list(ch.marks) == [20]


# --- flush ----------------------------------------------------------------------------------


def _buffered(data: bytes, takes: list[Any]) -> tuple[Channel, FakeSock]:
    sock = FakeSock([])
    ch = Channel(sock, Reactor("t"), lambda mask: None)  # type: ignore[arg-type]
    with ch.lock:
        ch.write(data)  # would block: all buffered
    sock.takes = takes
    sock.send_sizes.clear()
    return ch, sock


def test_flush_sends_everything_it_can():
    ch, sock = _buffered(b"hello", [2, 2, 2])
    with ch.lock:
        assert ch.flush() is True
    assert sock.sent == [b"he", b"ll", b"o"] and sock.send_sizes == [5, 3, 1]  # no empty send
    assert ch.out == b"" and ch.head == 5 and not ch.marks
    with ch.lock:
        assert ch.flush() is True  # nothing to do
    assert sock.send_sizes == [5, 3, 1]


def test_flush_stops_when_the_socket_would_block():
    ch, sock = _buffered(b"hello", [2, 1])
    with ch.lock:
        assert ch.flush() is False
    assert ch.out == b"lo" and ch.head == 3 and list(ch.marks) == [5] and ch.error is None


def test_flush_stops_when_send_takes_nothing():
    ch, sock = _buffered(b"hello", [0])
    with ch.lock:
        assert ch.flush() is False
    assert ch.out == b"hello" and ch.head == 0


def test_flush_send_error_is_stored():
    ch, sock = _buffered(b"hello", [3, BrokenPipeError(32, "Broken pipe")])
    with ch.lock:
        assert ch.flush() is False
    assert type(ch.error) is NetworkError and str(ch.error) == "send: [Errno 32] Broken pipe"
    assert ch.out == b"lo" and ch.head == 3
    sock.takes = [100]
    with ch.lock:
        assert ch.flush() is False  # a broken channel sends no more
    assert sock.sent == [b"hel"] and ch.out == b"lo"


@pytest.mark.parametrize(("waiters", "low_water", "notified"), [(0, 2, 0), (1, 2, 1), (1, 1, 0), (1, 3, 1)])
def test_flush_notifies_drain_waiters_at_low_water(waiters, low_water, notified):
    ch, sock = _buffered(b"hello", [3])  # leaves 2 bytes
    ch.drained = SpyCondition(ch.lock)
    ch.drain_waiters = waiters
    ch.low_water = low_water
    with ch.lock:
        ch.flush()
    assert ch.out == b"lo" and ch.drained.notified == notified


@pytest.mark.parametrize("how", ["flush", "close"])
def test_a_sender_waiting_for_the_drain_is_woken_by_flush_and_close(how):
    ch, sock = _buffered(b"hello", [100])
    woke: list[bool] = []
    waiting = threading.Event()

    def waiter() -> None:
        with ch.lock:
            ch.drain_waiters += 1
            waiting.set()
            woke.append(ch.drained.wait_for(lambda: not ch.out or ch.closed, 5))
            ch.drain_waiters -= 1

    t = threading.Thread(target=waiter)
    t.start()
    assert waiting.wait(5)
    with ch.lock:  # the waiter is in wait() once we hold the lock
        if how == "flush":
            assert ch.flush() is True
        else:
            ch.close()
    t.join(5)
    assert woke == [True]


# --- read_into ------------------------------------------------------------------------------


def test_read_into_counts_bytes_eof_and_nothing_yet(pair):
    a, b = pair
    ch = Channel(a, Reactor("t"), lambda mask: None)
    buf = bytearray(16)
    assert ch.read_into(buf) == -1
    b.send(b"abc")
    assert ch.read_into(buf) == 3 and buf[:3] == b"abc"
    b.close()
    assert ch.read_into(buf) == 0


class _RecvFails(FakeSock):
    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc

    def recv_into(self, buf: Any) -> int:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "cls", "message"),
    [
        (ConnectionResetError(104, "Connection reset by peer"), NetworkError, "recv: [Errno 104] Connection reset by peer"),
        (_ssl_error("[SSL: DECRYPTION_FAILED] bad"), TLSError, "TLS recv failed: {exc}"),
        # not a network error when mapped: still raised as one
        (socket.gaierror(-3, "Temporary failure in name resolution"), NetworkError,
         "[Errno -3] Temporary failure in name resolution"),
    ],
)
def test_read_into_raises_the_mapped_error(exc, cls, message):
    ch = Channel(_RecvFails(exc), Reactor("t"), lambda mask: None)  # type: ignore[arg-type]
    with pytest.raises(NetworkError) as ei:
        ch.read_into(bytearray(4))
    assert type(ei.value) is cls and str(ei.value) == message.format(exc=exc) and ei.value.__cause__ is exc


# --- shutdown_write, close, reset ------------------------------------------------------------


def test_shutdown_write_once_and_not_after_close():
    sock = FakeSock()
    ch = Channel(sock, Reactor("t"), lambda mask: None)  # type: ignore[arg-type]
    ch.shutdown_write()
    assert ch.shut is True and sock.calls == [("shutdown", socket.SHUT_WR)]
    ch.shutdown_write()
    assert sock.calls == [("shutdown", socket.SHUT_WR)]
    sock = FakeSock()
    sock.raise_on["shutdown"] = OSError(107, "Transport endpoint is not connected")
    ch = Channel(sock, Reactor("t"), lambda mask: None)  # type: ignore[arg-type]
    ch.shutdown_write()  # best effort
    assert ch.shut is True
    sock = FakeSock()
    ch = Channel(sock, Reactor("t"), lambda mask: None)  # type: ignore[arg-type]
    ch.close()
    ch.shutdown_write()
    assert ch.shut is False and ("shutdown", socket.SHUT_WR) not in sock.calls


def test_shutdown_write_the_peer_sees_eof(pair):
    a, b = pair
    ch = Channel(a, Reactor("t"), lambda mask: None)
    ch.shutdown_write()
    assert b.recv(10) == b""


def test_close_releases_everything(reactor, pair):
    a, b = pair
    fd = a.fileno()
    seen: list[int] = []
    ch = Channel(a, reactor, seen.append)
    ch.update_interest()
    assert _key(reactor, a) == (EVENT_READ, seen.append)
    ch.linger = linger = reactor.call_later(10, lambda: None)
    ch.out += b"unsent"
    ch.marks.append(6)
    ch.close()
    assert ch.closed is True and ch.linger is None and linger.cancelled is True
    assert ch.mask == 0 and fd not in reactor.selector.get_map()  # type: ignore[union-attr]
    assert a.fileno() == -1 and b.recv(10) == b""
    assert ch.out == bytearray() and type(ch.out) is bytearray and not ch.marks
    assert ch.on_ready is not seen.append
    ch.on_ready(EVENT_READ)  # a call queued before the close is harmless
    assert seen == []
    ch.close()  # idempotent
    assert ch.closed is True


def test_close_when_the_socket_close_fails():
    sock = FakeSock()
    sock.raise_on["close"] = OSError(9, "Bad file descriptor")
    ch = Channel(sock, Reactor("t"), lambda mask: None)  # type: ignore[arg-type]
    ch.close()
    assert ch.closed is True and sock.calls == [("close",)]


def test_reset_breaks_the_connection(tcp):
    _, client, server = tcp
    ch = Channel(server, Reactor("t"), lambda mask: None)
    client.settimeout(5)
    ch.reset()
    assert ch.closed is True and server.fileno() == -1
    with pytest.raises(ConnectionResetError):
        client.recv(10)
    ch.reset()  # idempotent


def test_reset_of_a_closed_channel_does_nothing():
    sock = FakeSock()
    ch = Channel(sock, Reactor("t"), lambda mask: None)  # type: ignore[arg-type]
    ch.close()
    ch.reset()
    assert sock.calls == [("close",)]


def test_reset_when_the_option_cannot_be_set():
    sock = FakeSock()
    sock.raise_on["setsockopt"] = OSError(9, "Bad file descriptor")
    ch = Channel(sock, Reactor("t"), lambda mask: None)  # type: ignore[arg-type]
    ch.reset()
    assert ch.closed is True
    assert sock.calls == [("setsockopt", socket.SOL_SOCKET, socket.SO_LINGER, tr._LINGER_RESET), ("close",)]


# --- update_interest ------------------------------------------------------------------------


def test_update_interest_registers_modifies_and_unregisters(reactor, pair):
    a, _ = pair
    cb = print
    ch = Channel(a, reactor, cb)
    ch.update_interest()
    assert ch.mask == EVENT_READ and _key(reactor, a) == (EVENT_READ, cb)
    ch.out += b"x"
    ch.update_interest()
    assert ch.mask == EVENT_READ | EVENT_WRITE and _key(reactor, a) == (EVENT_READ | EVENT_WRITE, cb)
    ch.out.clear()
    ch.update_interest()
    assert ch.mask == EVENT_READ and _key(reactor, a) == (EVENT_READ, cb)
    ch.out += b"x"
    ch.paused = True
    ch.update_interest()
    assert ch.mask == EVENT_WRITE and _key(reactor, a) == (EVENT_WRITE, cb)
    ch.out.clear()
    ch.update_interest()
    assert ch.mask == 0 and _key(reactor, a) is None
    ch.paused = False
    ch.update_interest()
    assert ch.mask == EVENT_READ and _key(reactor, a) == (EVENT_READ, cb)
    ch.throttled = True
    ch.update_interest()
    assert ch.mask == 0 and _key(reactor, a) is None
    ch.closing = True  # closing: read (and discard) until the peer's EOF, paused or not
    ch.update_interest()
    assert ch.mask == EVENT_READ and _key(reactor, a) == (EVENT_READ, cb)
    ch.closing = ch.throttled = False
    ch.held = True  # the process queues' total: not read either
    ch.update_interest()
    assert ch.mask == 0 and _key(reactor, a) is None
    ch.held = False
    ch.update_interest()
    assert ch.mask == EVENT_READ
    ch.out += b"x"
    ch.error = NetworkError("send: x")  # a broken channel waits for nothing to write
    ch.update_interest()
    assert ch.mask == EVENT_READ and _key(reactor, a) == (EVENT_READ, cb)
    ch.tls_pending = EVENT_WRITE  # a handshake waits for exactly its event
    ch.update_interest()
    assert ch.mask == EVENT_WRITE and _key(reactor, a) == (EVENT_WRITE, cb)
    ch.tls_pending = EVENT_READ
    ch.update_interest()
    assert ch.mask == EVENT_READ and _key(reactor, a) == (EVENT_READ, cb)
    ch.close()


def test_update_interest_does_nothing_without_a_running_reactor_or_when_closed(reactor, pair, caplog):
    a, b = pair
    ch = Channel(a, Reactor("not started"), print)
    ch.update_interest()
    assert ch.mask == 0
    closed = Reactor("closed")
    closed.start(selectors.DefaultSelector, lambda: None)
    closed.close()
    ch = Channel(a, closed, print)
    ch.update_interest()
    assert ch.mask == 0
    caplog.set_level(logging.DEBUG, LOG)
    ch = Channel(b, reactor, print)
    ch.close()
    ch.update_interest()
    assert ch.mask == 0 and not caplog.records


def test_update_interest_failure_is_logged(reactor, pair, caplog):
    a, _ = pair
    caplog.set_level(logging.DEBUG, LOG)
    ch = Channel(a, reactor, print)
    a.close()  # under the channel: registering fails
    ch.update_interest()
    assert ch.mask == EVENT_READ  # what it asked for (the close that follows unregisters nothing harmful)
    (rec,) = [r for r in caplog.records if r.name == LOG]
    assert rec.levelno == logging.DEBUG and rec.msg == "! interest update failed: %r"
    assert len(rec.args) == 1 and isinstance(rec.args[0], ValueError)  # type: ignore[arg-type]
    assert rec.getMessage() == f"! interest update failed: {rec.args[0]!r}"  # type: ignore[index]


# --- Reactor --------------------------------------------------------------------------------


def test_fresh_reactor_state():
    r = Reactor()
    assert r.name == "peng3dnet" and r.selector is None and r.thread_id is None
    assert r.running is False and r.stopping is False and r.closed is False and not r.in_loop()
    assert type(r.read_buffer) is bytearray and len(r.read_buffer) == 256 * 1024
    assert r.read_view.obj is r.read_buffer and len(r.read_view) == 256 * 1024
    assert Timer(1.0, print).cancelled is False
    r.close()  # never started: nothing to release
    assert r.closed is True and r.selector is None


def test_start_makes_this_the_network_thread_once():
    r = Reactor("t")
    started: list[bool] = []
    r.start(selectors.DefaultSelector, lambda: started.append(r.running))
    try:
        assert started == [True] and r.running is True and r.in_loop()
        assert r.thread_id == threading.get_ident()
        assert r._wake_r is not None and r._wake_w is not None
        assert not r._wake_r.getblocking() and not r._wake_w.getblocking()
        assert _in_thread(r.in_loop) is False
        with pytest.raises(RuntimeError, match="^a reactor runs only once$"):
            r.start(selectors.DefaultSelector, lambda: None)
    finally:
        r.close()
    with pytest.raises(RuntimeError, match="^a reactor runs only once$"):
        r.start(selectors.DefaultSelector, lambda: None)
    never = Reactor("t")
    never.close()
    with pytest.raises(RuntimeError, match="^a reactor runs only once$"):
        never.start(selectors.DefaultSelector, lambda: None)


def test_start_whose_on_start_fails():
    r = Reactor("t")

    def boom() -> None:
        raise ValueError("on_start")

    with pytest.raises(ValueError, match="on_start"):
        r.start(selectors.DefaultSelector, boom)
    assert r.running is False
    r.close()


def test_close_releases_the_selector_and_the_wake_pair():
    r = Reactor("t")
    r.start(selectors.DefaultSelector, lambda: None)
    sel, wr, ww = r.selector, r._wake_r, r._wake_w
    r.close()
    assert r.closed is True and r.thread_id is None and not r.in_loop()
    assert sel is not None and sel.get_map() is None  # closed
    assert wr is not None and ww is not None and wr.fileno() == -1 and ww.fileno() == -1
    assert r._wake_r is None and r._wake_w is None
    r.close()  # idempotent
    assert r.closed is True


def test_run_until_stop():
    r = Reactor("t")
    seen: list[bool] = []
    r.run(selectors.DefaultSelector, lambda: (seen.append(r.running), r.stop()))
    assert seen == [True] and r.running is False and r.stopping is True
    r.close()
    r = Reactor("t")
    ran = threading.Event()
    started = threading.Event()
    t = threading.Thread(target=r.run, args=(selectors.DefaultSelector, started.set))
    t.start()
    try:
        assert started.wait(5)
        r.call_soon(ran.set)
        assert ran.wait(5) and r.running is True and t.is_alive()
    finally:
        r.stop()
        t.join(5)
        r.close()
    assert not t.is_alive() and r.running is False


def _elapsed(fn: Any, *args: Any) -> float:
    t0 = time.monotonic()
    fn(*args)
    return time.monotonic() - t0


def test_run_once_does_not_wait_when_there_is_work(reactor):
    assert _elapsed(reactor.run_once) < 0.5  # the default timeout: 0
    ran: list[str] = []
    reactor.call_soon(ran.append, "call")  # from the loop: no wake-up byte
    with _safety_wake(reactor):
        assert _elapsed(reactor.run_once, 2.0) < 0.5 and ran == ["call"]
        reactor.after_io(lambda: ran.append("after"))
        assert _elapsed(reactor.run_once, 2.0) < 0.5 and ran == ["call", "after"]
    reactor.interrupt()  # on the loop thread: the next select() does not wait
    with _safety_wake(reactor):
        assert _elapsed(reactor.run_once, 2.0) < 0.5
    reactor.stop()
    with _safety_wake(reactor):
        assert _elapsed(reactor.run_once, 2.0) < 0.5


def test_run_once_waits_for_the_next_timer_within_the_timeout(reactor):
    ran: list[str] = []
    reactor.call_later(0.05, lambda: ran.append("soon"))
    reactor.run_once(0)  # adds the timer
    with _safety_wake(reactor):
        dt = _elapsed(reactor.run_once, 5.0)  # waits for the timer only
    assert ran == ["soon"] and dt < 1.0
    far = reactor.call_later(10, lambda: ran.append("far"))
    reactor.run_once(0)
    with _safety_wake(reactor):
        dt = _elapsed(reactor.run_once, 0.2)  # waits for the timeout only
    assert 0.15 <= dt < 1.0 and ran == ["soon"]
    far.cancel()


def test_the_wait_handed_to_select(reactor, monkeypatch):
    """What run_once() asks select() (or epoll.poll(): -1 is "no limit")
    to wait, on a fake clock: the timeout, the next timer within it, 0
    when a timer is overdue or work is queued."""
    clock = FakeClock(100.0)
    monkeypatch.setattr(tr, "time", clock)
    waits: list[Any] = []
    if reactor._epoll is not None:
        real_poll = reactor._epoll
        monkeypatch.setattr(reactor, "_epoll", lambda t, n: (waits.append(t), real_poll(0, n))[1])
        forever = -1
    else:
        real = reactor.selector.select  # type: ignore[union-attr]
        monkeypatch.setattr(reactor.selector, "select", lambda t=None: (waits.append(t), real(0))[1])
        forever = None
    reactor.run_once(0.25)
    reactor.run_once(None)
    t = reactor.call_later(2.0, lambda: None)
    reactor.run_once(0)  # (queued: 0, and adds the timer)
    reactor.run_once(None)
    reactor.run_once(0.5)
    reactor.run_once(3.0)
    clock.now = 103.0  # overdue: it runs in this round, which does not wait
    reactor.run_once(None)
    assert waits == [0.25, forever, 0, 2.0, 0.5, 2.0, 0]
    assert t.fn is not None


@pytest.mark.parametrize("registered, ready, expected", [
    (EVENT_READ, "in", EVENT_READ),
    (EVENT_READ | EVENT_WRITE, "in", EVENT_READ),
    (EVENT_READ | EVENT_WRITE, "out", EVENT_WRITE),
    (EVENT_READ | EVENT_WRITE, "in+out", EVENT_READ | EVENT_WRITE),
    (EVENT_READ, "hup", EVENT_READ),  # an error or hang-up wakes both, within what was asked for
    (EVENT_WRITE, "hup", EVENT_WRITE),
])
def test_epoll_events_become_the_selector_masks(registered, ready, expected):
    import select as _select
    bits = {"in": _select.EPOLLIN, "out": _select.EPOLLOUT, "in+out": _select.EPOLLIN | _select.EPOLLOUT,
            "hup": _select.EPOLLHUP}[ready]
    r = Reactor("test")
    r.start(selectors.DefaultSelector, lambda: None)
    a, b = socket.socketpair()
    try:
        seen: list[int] = []
        r.register(a, registered, seen.append)
        r._epoll = lambda t, n: [(a.fileno(), bits)]
        r.run_once(0)
        assert seen == [expected]
    finally:
        r.close()
        a.close()
        b.close()


def test_a_socket_unregistered_by_an_earlier_callback_of_the_round_is_not_called():
    r = Reactor("test")
    r.start(selectors.DefaultSelector, lambda: None)
    (a, b), (c, d), (e, f) = socket.socketpair(), socket.socketpair(), socket.socketpair()
    try:
        seen: list[str] = []
        r.register(a, EVENT_READ, lambda m: (seen.append("a"), r.unregister(c)))
        r.register(c, EVENT_READ, lambda m: seen.append("c"))
        r.register(e, EVENT_READ, lambda m: seen.append("e"))
        import select as _select
        r._epoll = lambda t, n: [(a.fileno(), _select.EPOLLIN), (c.fileno(), _select.EPOLLIN),
                                 (e.fileno(), _select.EPOLLIN)]
        r.run_once(0)
        assert seen == ["a", "e"]  # c skipped, the round goes on
    finally:
        r.close()
        for s_ in (a, b, c, d, e, f):
            s_.close()


@pytest.mark.parametrize("cls", [tr.EpollSelector, selectors.EpollSelector], ids=["ours", "stdlib"])
def test_our_epoll_selector_behaves_as_the_stdlib_one(cls):
    """Register, modify, unregister, select, get_map, close: the same
    results and errors as selectors.EpollSelector (run on both)."""
    sel = cls()
    (a, b), (c, d) = socket.socketpair(), socket.socketpair()
    try:
        key = sel.register(a, EVENT_READ, "A")
        assert (key.fileobj, key.fd, key.events, key.data) == (a, a.fileno(), EVENT_READ, "A")
        with pytest.raises(KeyError):
            sel.register(a, EVENT_READ)
        with pytest.raises(KeyError):
            sel.register(a.fileno(), EVENT_WRITE)  # the same descriptor as an int
        for bad in (0, 4, EVENT_READ | 8):
            with pytest.raises(ValueError):
                sel.register(c, bad)
        assert sel.get_map()[a.fileno()] == key and len(sel.get_map()) == 1
        assert sel.select(0) == []
        b.send(b"x")
        assert sel.select(1) == [(key, EVENT_READ)]
        key2 = sel.modify(a, EVENT_READ | EVENT_WRITE, "A2")
        assert (key2.events, key2.data) == (EVENT_READ | EVENT_WRITE, "A2") and sel.get_map()[a.fileno()] == key2
        assert sel.select(1) == [(key2, EVENT_READ | EVENT_WRITE)]
        key3 = sel.modify(a, EVENT_WRITE, "A3")  # (events changed: the kernel is told)
        assert sel.select(1) == [(key3, EVENT_WRITE)]
        with pytest.raises(KeyError):
            sel.modify(c, EVENT_READ)
        with pytest.raises(KeyError):
            sel.unregister(c)
        sel.register(c, EVENT_READ, "C")
        c.close()  # a closed socket is still found (by identity) and forgotten
        assert sel.unregister(c).data == "C"
        e, f = socket.socketpair()
        sel.register(e, EVENT_READ, "E")
        fd = e.fileno()
        e.close()
        with pytest.raises(OSError):
            sel.modify(e, EVENT_WRITE)  # the kernel refuses: the key is dropped too
        assert fd not in sel.get_map()
        f.close()
        assert sel.unregister(a) == key3 and len(sel.get_map()) == 0
        with pytest.raises(KeyError):
            sel.unregister(a)
        sel.close()
        assert sel.get_map() is None
    finally:
        for s_ in (a, b, c, d):
            s_.close()


@pytest.mark.parametrize("registered, ready, expected", [
    (EVENT_READ, "in", EVENT_READ),
    (EVENT_READ | EVENT_WRITE, "in", EVENT_READ),
    (EVENT_READ | EVENT_WRITE, "out", EVENT_WRITE),
    (EVENT_READ | EVENT_WRITE, "in+out", EVENT_READ | EVENT_WRITE),
    (EVENT_READ, "hup", EVENT_READ),
    (EVENT_WRITE, "hup", EVENT_WRITE),
])
def test_our_selectors_select_maps_epoll_events_as_the_stdlib_does(registered, ready, expected):
    import select as _select
    bits = {"in": _select.EPOLLIN, "out": _select.EPOLLOUT, "in+out": _select.EPOLLIN | _select.EPOLLOUT,
            "hup": _select.EPOLLHUP}[ready]
    sel = tr.EpollSelector()
    a, b = socket.socketpair()
    try:
        key = sel.register(a, registered)
        sel.poll = lambda t, n: [(a.fileno(), bits), (9999, _select.EPOLLIN)]  # (an fd not registered: skipped)
        assert sel.select(0) == [(key, expected)]
    finally:
        sel.close()
        a.close()
        b.close()


def test_our_selectors_select_hands_epoll_the_timeout_and_room_for_every_key():
    sel = tr.EpollSelector()
    (a, b), (c, d) = socket.socketpair(), socket.socketpair()
    asked: list[tuple[Any, int]] = []
    try:
        sel.poll = lambda t, n: (asked.append((t, n)), [])[1]
        sel.select(None)
        sel.select(0)
        sel.select(-3)
        sel.select(0.25)
        sel.register(a, EVENT_READ)
        sel.register(c, EVENT_WRITE)
        sel.select(1.5)
        assert asked == [(-1, 1), (0, 1), (0, 1), (0.25, 1), (1.5, 2)]  # (-1: no limit; at least room for 1)
    finally:
        sel.close()
        for s_ in (a, b, c, d):
            s_.close()


@pytest.mark.parametrize("cls", [tr.EpollSelector, selectors.EpollSelector], ids=["ours", "stdlib"])
def test_our_epoll_selector_asks_the_kernel_for_what_was_registered_only(cls):
    """A socket registered for writing only, readable but not writable (its
    send buffer full): no event, although it has bytes to read."""
    sel = cls()
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with contextlib.suppress(BlockingIOError):
            while True:
                a.send(b"x" * 4096)
        b.send(b"y")
        sel.register(a, EVENT_WRITE)
        assert sel.select(0) == []
        sel.modify(a, EVENT_READ)
        assert [mask for _, mask in sel.select(0)] == [EVENT_READ]
    finally:
        sel.close()
        a.close()
        b.close()


@pytest.mark.parametrize("cls", [tr.EpollSelector, selectors.EpollSelector], ids=["ours", "stdlib"])
def test_our_epoll_selector_takes_descriptors_and_says_what_is_wrong_as_the_stdlib_does(cls):
    sel = cls()
    a, b = socket.socketpair()
    try:
        with pytest.raises(ValueError, match=r"^Invalid events: 0$"):
            sel.register(a, 0)
        closed = socket.socket()
        closed.close()
        with pytest.raises(ValueError, match=r"^Invalid file descriptor: -1$"):
            sel.register(closed, EVENT_READ)
        key = sel.register(a.fileno(), EVENT_READ, "by number")  # a descriptor, not a socket
        with pytest.raises(KeyError, match=r"is already registered"):
            sel.register(a, EVENT_READ)
        assert sel.modify(a.fileno(), EVENT_WRITE, "changed").fileobj == a.fileno()
        assert sel.get_map()[a.fileno()].data == "changed"
        assert sel.unregister(a.fileno()).fd == key.fd and a.fileno() not in sel.get_map()
        key = sel.register(a, EVENT_READ)
        assert sel.modify(a, EVENT_READ, "same events").fileobj is a  # (the kernel not asked: the key still whole)
        thing = object()
        with pytest.raises(ValueError, match=r"^Invalid file object: <object object at "):
            sel.unregister(thing)  # no fileno(): looked for among the keys, not found
        with pytest.raises(ValueError, match=r"^Invalid file object: "):
            sel.modify(thing, EVENT_READ)
        with pytest.raises(KeyError, match=r"^'.*(FD|fd=)?.* is not registered'$"):
            sel.unregister(b)  # open, never registered
        with pytest.raises(KeyError, match=r" is not registered"):
            sel.modify(b, EVENT_READ)
        with pytest.raises(ValueError, match=r"^Invalid file descriptor: -1$"):
            sel.unregister(closed)  # closed and never registered
    finally:
        sel.close()
        a.close()
        b.close()


def test_the_default_selector_is_ours_on_linux():
    r = Reactor("test")
    r.start(selectors.DefaultSelector, lambda: None)
    try:
        assert type(r.selector) is tr.EpollSelector and r._epoll == r.selector.poll and r._fd_keys is r.selector.keys
    finally:
        r.close()


def test_only_the_stdlib_epoll_selector_itself_is_bypassed():
    class Mine(selectors.EpollSelector):
        selects = 0

        def select(self, timeout=None):
            Mine.selects += 1
            return super().select(timeout)

    r = Reactor("test")
    r.start(Mine, lambda: None)
    try:
        assert r._epoll is None
        r.run_once(0)
        assert Mine.selects == 1
    finally:
        r.close()


def test_a_timer_runs_when_its_time_has_come_not_before(reactor, monkeypatch):
    clock = FakeClock(100.0)
    monkeypatch.setattr(tr, "time", clock)
    ran: list[str] = []
    t = reactor.call_later(0.5, lambda: ran.append("later"))
    assert t.when == 100.5 and not t.cancelled
    reactor.call_at(100.0, lambda: ran.append("now"))
    reactor.run_once(0)
    assert ran == ["now"]
    clock.now = 100.5
    reactor.run_once(0)
    assert ran == ["now", "later"]


def test_a_cancelled_timer_does_not_run_and_lets_go_of_its_callable(reactor):
    class Job:
        ran = False

        def run(self) -> None:
            Job.ran = True

    job = Job()
    ref = weakref.ref(job)
    t = reactor.call_later(0, job.run)
    assert t.fn == job.run
    del job
    t.cancel()
    assert t.cancelled is True and ref() is None
    assert t.fn() is None  # what a cancelled timer would call: nothing
    reactor.run_once(0)
    reactor.run_once(0)
    assert Job.ran is False


def test_interrupt_from_another_thread_ends_select(caplog):
    r = Reactor("t")
    started = threading.Event()
    done = threading.Event()

    def loop() -> None:
        r.start(selectors.DefaultSelector, started.set)
        r.run_once(None)
        done.set()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        assert started.wait(5)
        r.interrupt()
        assert done.wait(5)
        assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    finally:
        if not done.is_set() and r._wake_w is not None:
            r._wake_w.send(b"\0")
        t.join(5)
        r.close()


def test_register_modify_unregister(reactor, pair):
    a, b = pair
    reactor.register(a, EVENT_READ, print)
    assert _key(reactor, a) == (EVENT_READ, print)
    reactor.modify(a, EVENT_WRITE, repr)
    assert _key(reactor, a) == (EVENT_WRITE, repr)
    reactor.unregister(a)
    assert _key(reactor, a) is None
    reactor.unregister(a)  # not registered: KeyError, ignored
    c = socket.socket()
    c.close()
    reactor.unregister(c)  # closed, not registered: ValueError, ignored
    Reactor("not started").unregister(a)  # no selector: nothing


def test_unregister_ignores_an_os_error(reactor, pair, monkeypatch):
    a, _ = pair

    def fails(sock: Any) -> None:
        raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr(reactor.selector, "unregister", fails)
    reactor.unregister(a)


def test_io_callback_gets_the_mask(reactor, pair):
    a, b = pair
    seen: list[int] = []
    reactor.register(a, EVENT_READ, seen.append)
    b.send(b"x")
    reactor.run_once(5)
    assert seen == [EVENT_READ]
    reactor.unregister(a)


def test_select_interrupted_is_an_empty_round(reactor, monkeypatch):
    calls: list[Any] = []

    def interrupted(*args: Any) -> Any:
        calls.append(args)
        raise InterruptedError(4, "Interrupted system call")

    if reactor._epoll is not None:
        monkeypatch.setattr(reactor, "_epoll", interrupted)
    else:
        monkeypatch.setattr(reactor.selector, "select", interrupted)
    ran: list[str] = []
    reactor.call_soon(ran.append, "call")
    reactor.run_once(0)
    assert len(calls) == 1 and ran == ["call"] and reactor._selecting is False


def test_wake_writes_one_byte_while_someone_selects(reactor):
    assert reactor._wake_r is not None
    reactor.run_once(0)
    _in_thread(reactor.wake)  # nobody in select(): nothing written
    assert _recv_all(reactor._wake_r) == b"" and reactor._wake_pending is False
    reactor._selecting = True  # as run_once() sets it while in select()
    reactor.wake()
    reactor.wake()  # coalesced
    reactor._selecting = False
    assert reactor._wake_pending is True
    reactor.run_once(0)  # the wake-up socket is served: drained, the flag cleared
    assert reactor._wake_pending is False and _recv_all(reactor._wake_r) == b""
    reactor._selecting = True
    reactor.wake()
    reactor.wake()
    reactor._selecting = False
    assert _recv_all(reactor._wake_r) == b"\0"  # one byte for both


def _boom() -> None:
    raise ValueError("boom")


@pytest.mark.parametrize("selector", [selectors.DefaultSelector, selectors.PollSelector], ids=["epoll", "poll"])
def test_errors_in_callbacks_calls_timers_and_after_io_are_logged(pair, caplog, selector):
    a, b = pair
    r = Reactor()  # the default name is in the messages
    r.start(selector, lambda: None)
    try:
        r.register(a, EVENT_READ, lambda mask: _boom())
        b.send(b"x")
        r.call_soon(_boom)
        r.call_at(0.0, _boom)
        r.after_io(_boom)
        with caplog.at_level(logging.ERROR, LOG):
            r.run_once(5)
        r.unregister(a)
    finally:
        r.close()
    recs = [rec for rec in caplog.records if rec.name == LOG]
    assert [rec.getMessage() for rec in recs] == [
        "! peng3dnet: unexpected error in I/O callback",
        f"! peng3dnet: unexpected error in queued call {_boom!r}",
        "! peng3dnet: unexpected error in timer",
        f"! peng3dnet: unexpected error in after-I/O call {_boom!r}",
    ]
    for rec in recs:
        assert rec.levelno == logging.ERROR and rec.exc_info is not None and str(rec.exc_info[1]) == "boom"


# --- Listener -------------------------------------------------------------------------------


class SpySocket(socket.socket):
    """Records setsockopt() and listen() calls."""

    log: list[tuple[Any, ...]] = []

    def setsockopt(self, *args: Any) -> None:  # type: ignore[override]
        SpySocket.log.append(("setsockopt", *args))
        super().setsockopt(*args)

    def listen(self, *args: Any) -> None:
        SpySocket.log.append(("listen", *args))
        super().listen(*args)


@pytest.fixture
def spy_socket(monkeypatch) -> list[tuple[Any, ...]]:
    SpySocket.log = []
    monkeypatch.setattr(socket, "socket", SpySocket)
    return SpySocket.log


@pytest.mark.parametrize("dualstack", [False, True])
def test_listener_ipv6_options(spy_socket, dualstack):
    listener = (Listener("::1", 0, dualstack=True) if dualstack else Listener("::1", 0))
    try:
        assert spy_socket == [
            ("setsockopt", socket.SOL_SOCKET, socket.SO_REUSEADDR, 1),
            ("setsockopt", socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dualstack else 1),
            ("listen", 128),
        ]
        if not dualstack:  # (binding ::1 makes the kernel set it anyway: only the call above shows dualstack)
            assert listener.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert listener.addr == ("::1", listener.sock.getsockname()[1]) and listener.addr[1] > 0
        assert listener.sock.family == socket.AF_INET6 and listener.sock.proto == socket.IPPROTO_TCP
        assert not listener.sock.getblocking()
    finally:
        listener.close()


def test_listener_ipv4(spy_socket):
    listener = Listener("127.0.0.1", 0, backlog=5)
    try:
        assert spy_socket == [("setsockopt", socket.SOL_SOCKET, socket.SO_REUSEADDR, 1), ("listen", 5)]
        assert listener.addr == ("127.0.0.1", listener.sock.getsockname()[1])
        assert listener.sock.type == socket.SOCK_STREAM and listener.sock.proto == socket.IPPROTO_TCP
    finally:
        listener.close()


def test_listener_resolves_a_passive_stream_address(monkeypatch):
    seen: list[tuple[Any, ...]] = []
    real = socket.getaddrinfo

    def spy(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((host, port, args, kwargs))
        if host is None:  # every interface: not bound in a test
            raise socket.gaierror(-2, "Name or service not known")
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", spy)
    listener = Listener("127.0.0.1", 0)
    listener.close()
    with pytest.raises(InvalidAddressError) as ei:
        Listener("", 8)
    assert str(ei.value) == "cannot resolve '': [Errno -2] Name or service not known"
    passive = {"type": socket.SOCK_STREAM, "flags": socket.AI_PASSIVE}
    assert seen == [("127.0.0.1", 0, (), passive), (None, 8, (), passive)]


def test_listener_bind_error():
    first = Listener("127.0.0.1", 0)
    port = first.addr[1]
    try:
        with pytest.raises(NetworkError) as ei:
            Listener("127.0.0.1", port)
        assert type(ei.value) is NetworkError and isinstance(ei.value.__cause__, OSError)
        assert str(ei.value) == f"cannot bind '127.0.0.1':{port}: {ei.value.__cause__}"
    finally:
        first.close()


def test_accept_waiting_takes_at_most_limit_and_prepares_them():
    listener = Listener("127.0.0.1", 0)
    clients = []
    try:
        for _ in range(70):
            clients.append(socket.create_connection(listener.addr, timeout=5))
        got = listener.accept_waiting()
        assert len(got) == 64  # the default limit
        more = listener.accept_waiting(limit=4)
        assert len(more) == 4
        rest = listener.accept_waiting()
        assert len(rest) == 2
        assert listener.accept_waiting() == []
        accepted = got + more + rest
        assert sorted(addr for _, addr in accepted) == sorted(c.getsockname() for c in clients)
        for sock, _ in accepted:
            assert not sock.getblocking() and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            sock.close()
    finally:
        for c in clients:
            c.close()
        listener.close()


class _AcceptSock:
    def __init__(self, real: socket.socket, results: list[Any]) -> None:
        self.real = real
        self.results = results

    def accept(self) -> Any:
        r = self.results.pop(0)
        if isinstance(r, BaseException):
            raise r
        return self.real.accept()


@pytest.mark.parametrize("err", [24, 23, 105, 12])  # EMFILE, ENFILE, ENOBUFS, ENOMEM
def test_an_accept_out_of_descriptors_or_memory_ends_the_round_as_starved(caplog, err):
    """Out of descriptors or memory: the round ends, the error is kept in
    ``starved`` (the server pauses listening; no log here), and the next
    round starts with ``starved`` cleared."""
    listener = Listener("127.0.0.1", 0)
    real = listener.sock
    c1 = socket.create_connection(listener.addr, timeout=5)
    c2 = socket.create_connection(listener.addr, timeout=5)
    try:
        assert listener.starved is None
        listener.sock = _AcceptSock(real, ["ok", OSError(err, "starved"), "ok"])  # type: ignore[assignment]
        with caplog.at_level(logging.WARNING, LOG):
            got = listener.accept_waiting()
        assert len(got) == 1
        got[0][0].close()
        assert isinstance(listener.starved, OSError) and listener.starved.errno == err
        assert not [r for r in caplog.records if r.name == LOG]
        listener.sock = _AcceptSock(real, [InterruptedError(4, "Interrupted system call")])  # type: ignore[assignment]
        assert listener.accept_waiting() == [] and listener.starved is None and not caplog.records
    finally:
        c1.close()
        c2.close()
        real.close()


def test_another_accept_error_is_logged_and_ends_the_round(caplog):
    listener = Listener("127.0.0.1", 0)
    real = listener.sock
    c1 = socket.create_connection(listener.addr, timeout=5)
    c2 = socket.create_connection(listener.addr, timeout=5)
    try:
        listener.sock = _AcceptSock(real, ["ok", OSError(103, "Software caused connection abort"), "ok"])  # type: ignore[assignment]
        with caplog.at_level(logging.WARNING, LOG):
            got = listener.accept_waiting()
        assert len(got) == 1
        got[0][0].close()
        (rec,) = [r for r in caplog.records if r.name == LOG]
        assert rec.levelno == logging.WARNING
        assert rec.getMessage() == "! accept failed: [Errno 103] Software caused connection abort"
        assert listener.starved is None
    finally:
        c1.close()
        c2.close()
        real.close()


def test_refuse_sends_the_last_word_and_closes(tcp):
    _, client, server = tcp
    Listener.refuse(server, b"server full")
    assert server.fileno() == -1
    client.settimeout(5)
    data = b""
    while chunk := client.recv(64):
        data += chunk
    assert data == b"server full"


def test_refuse_a_dead_connection_still_closes(pair):
    a, b = pair
    b.close()
    Listener.refuse(a, b"x")  # the send fails (broken pipe): ignored
    assert a.fileno() == -1


# --- Datagram -------------------------------------------------------------------------------


def test_datagram_socket_error(monkeypatch):
    def no_socket(*args: Any, **kwargs: Any) -> Any:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(socket, "socket", no_socket)
    with pytest.raises(NetworkError) as ei:
        Datagram()
    assert type(ei.value) is NetworkError and str(ei.value) == "socket: [Errno 24] Too many open files"


def test_datagram_options_are_set_to_one(spy_socket):
    d = Datagram("127.0.0.1", 0, reuseaddr=True, broadcast=True)
    try:
        assert spy_socket == [
            ("setsockopt", socket.SOL_SOCKET, socket.SO_REUSEADDR, 1),
            ("setsockopt", socket.SOL_SOCKET, socket.SO_BROADCAST, 1),
        ]
        assert d.addr == ("127.0.0.1", d.sock.getsockname()[1])
    finally:
        d.close()


def test_datagram_bind_error_message():
    first = Datagram("127.0.0.1")
    port = first.addr[1]
    try:
        with pytest.raises(NetworkError) as ei:
            Datagram("127.0.0.1", port)
        assert str(ei.value) == f"bind '127.0.0.1':{port}: {ei.value.__cause__}"
        assert isinstance(ei.value.__cause__, OSError)
    finally:
        first.close()


def test_datagram_recv_from_bounds_and_timeouts():
    a, b = Datagram("127.0.0.1"), Datagram("127.0.0.1")
    try:
        with pytest.raises(ValueError, match=r"^max_bytes must be positive, not 0$"):
            b.recv_from(0)
        with pytest.raises(ValueError, match=r"^max_bytes must be positive, not -1$"):
            b.recv_from(-1)
        a.send_to(b"xy", b.addr)
        assert b.recv_from(1, timeout=5) == (b"x", a.addr)  # one byte is a valid bound
        assert b.sock.gettimeout() == 0.0
        a.send_to(b"z", b.addr)
        assert b.recv_from(8, timeout=0.5) == (b"z", a.addr)  # a short wait, then non-blocking again
        assert b.sock.gettimeout() == 0.0
        assert _elapsed(b.recv_from, 8) < 0.5  # timeout 0: no wait at all
    finally:
        a.close()
        b.close()


class _DgramFake:
    def __init__(self, recv_exc: BaseException | None = None, send_exc: BaseException | None = None) -> None:
        self.recv_exc = recv_exc
        self.send_exc = send_exc
        self.timeouts: list[Any] = []

    def settimeout(self, t: Any) -> None:
        self.timeouts.append(t)

    def setblocking(self, flag: bool) -> None:
        self.timeouts.append(("setblocking", flag))
        raise OSError(9, "Bad file descriptor")

    def recvfrom(self, n: int) -> Any:
        assert self.recv_exc is not None
        raise self.recv_exc

    def sendto(self, data: bytes, addr: Any) -> int:
        assert self.send_exc is not None
        raise self.send_exc


def test_datagram_fake_socket_errors():
    d = Datagram()
    real = d.sock
    try:
        d.sock = _DgramFake(recv_exc=TimeoutError("timed out"))  # type: ignore[assignment]
        assert d.recv_from(8, timeout=0.1) is None  # the restore failing is ignored
        assert d.sock.timeouts == [0.1, ("setblocking", False)]  # type: ignore[attr-defined]
        d.sock.timeouts.clear()  # type: ignore[attr-defined]
        assert d.recv_from(8) is None  # timeout 0: the socket's mode is left alone
        assert d.sock.timeouts == []  # type: ignore[attr-defined]
        d.sock = _DgramFake(send_exc=BlockingIOError(11, "Resource temporarily unavailable"))  # type: ignore[assignment]
        assert d.send_to(b"x", ("127.0.0.1", 9)) is False  # buffer full: dropped
    finally:
        real.close()


def test_datagram_errors_on_a_closed_socket():
    d = Datagram("127.0.0.1")
    d.close()
    with pytest.raises(NetworkError) as ei:
        d.recv_from(8)
    assert str(ei.value) == f"recvfrom: {ei.value.__cause__}" and isinstance(ei.value.__cause__, OSError)
    with pytest.raises(NetworkError) as ei:
        d.send_to(b"x", ("127.0.0.1", 9))
    assert str(ei.value) == f"sendto ('127.0.0.1', 9): {ei.value.__cause__}"


# --- wait_any: one wait for the reactors a polling thread runs --------------------------------


@pytest.fixture
def two_reactors() -> Iterator[tuple[Reactor, Reactor]]:
    a, b = Reactor("a"), Reactor("b")
    a.start(selectors.DefaultSelector, lambda: None)
    b.start(selectors.DefaultSelector, lambda: None)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_wait_any_returns_when_any_reactor_has_io(two_reactors, pair):
    a, b = two_reactors
    x, y = pair
    got = []
    b.register(y, tr.EVENT_READ, got.append)
    x.send(b"!")  # ready before the wait: the wait returns at once, nothing run yet
    t0 = time.monotonic()
    wait_any([a, b], 30.0)
    assert time.monotonic() - t0 < 5.0 and got == []  # (not the 30 s)
    b.run_once(0)
    assert got == [tr.EVENT_READ]
    assert not a._selecting and not b._selecting  # (a waker writes again only inside a wait)


def test_wait_any_is_woken_from_another_thread(two_reactors):
    a, b = two_reactors
    ran = []
    waker = threading.Timer(0.05, lambda: b.call_soon(ran.append, 1))
    waker.start()
    t0 = time.monotonic()
    wait_any([a, b], 30.0)
    assert time.monotonic() - t0 < 5.0  # woken, not the 30 s
    waker.join()
    b.run_once(0)
    assert ran == [1]


def test_wait_any_waits_no_longer_than_the_first_due_timer_or_a_queued_call(two_reactors):
    a, b = two_reactors
    fired = []
    b.call_later(0.05, lambda: fired.append(True))
    b.run_once(0)  # (the timer is queued as a call, then set)
    assert fired == []
    t0 = time.monotonic()
    wait_any([a, b], 30.0)
    assert 0.04 <= time.monotonic() - t0 < 5.0  # until the timer, not the 30 s
    b.run_once(0)
    assert fired == [True]
    a.call_soon(fired.append, False)  # something to do now: no wait at all
    t0 = time.monotonic()
    wait_any([a, b], 30.0)
    assert time.monotonic() - t0 < 5.0
    a.run_once(0)
    assert fired == [True, False]


def test_a_tls_channel_counts_what_went_out_a_record_at_a_time_and_drops_only_whole_sends(pki):
    """A TLS socket's send() writes all it is given or raises WantWrite
    (having written part: OpenSSL holds it): flushing the whole buffer
    moved nothing until it had all gone (2 MB read by the peer, 4.9 MB
    still "queued"), so the caps and the close linger saw no progress, and
    drop_unsent() then cut under what OpenSSL held: the next send failed
    with BAD_LENGTH and the closeconn never went.  A record at a time:
    progress counted, the stream whole, the closeconn out last."""
    from peng3dnet.protocol.framing import FrameDecoder, encode_frame
    from peng3dnet.transport import TLS_SEND_MAX

    listener = Listener("127.0.0.1", 0)
    port = listener.addr[1]
    ch, client, _ = _tls_session(listener, _server_ctx(pki), lambda: connect(("localhost", port), 5, _client_ctx(pki)))
    try:
        assert isinstance(ch, Channel) and ch.tls_chunk == TLS_SEND_MAX
        client.setblocking(False)
        frames = [encode_frame(64, 0, bytes([i % 251]) * 3000) for i in range(3000)]  # 9 MB
        got: list = []
        dec = FrameDecoder(1 << 20)
        read = 0

        def drain_peer(limit: int) -> None:
            nonlocal read
            while read < limit:
                try:
                    data = client.recv(1 << 16)
                except ssl.SSLWantReadError:
                    return
                read += len(data)
                dec.feed(data, got)

        with ch.lock:
            for f in frames:
                ch.write(f)
            deadline = time.monotonic() + 10
            while read < 2_000_000 and time.monotonic() < deadline:
                drain_peer(2_000_000)
                ch.flush()
            assert read >= 2_000_000
            assert ch.head > 0  # what went out through the buffer is counted (it stayed 0)
            ch.drop_unsent()
            ch.write(encode_frame(16, 0, b"\x81\xa6reason\xacslowconsumer"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with ch.lock:
                empty = ch.flush()
            before = read
            drain_peer(1 << 40)
            if (empty or ch.error is not None) and read == before and got and got[-1][0] == 16:
                break
        assert ch.error is None
        assert got[-1][0] == 16 and all(pid == 64 for pid, _, _ in got[:-1])  # whole frames, then closeconn
    finally:
        if isinstance(ch, Channel):
            ch.close()
        if isinstance(client, ssl.SSLSocket):
            client.close()
        listener.close()
