"""`serve` in front of people: malformed requests answered without a console full of tracebacks,
HEAD on the stream like everywhere else, and URLs that other machines can use."""

from __future__ import annotations

import ipaddress
import logging
import socket
from urllib.parse import urlsplit

from streamer.sinks.web import WebSink, machine_addresses
from streamer.views import PictureSettings

from test_web import request, result, serving

OVERSIZED = [
    b"GET /stats?" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # a 100 kB query
    b"GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * 8192 + b"\r\n\r\n",  # an 8 kB header
]


def raw_status(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(data)
        return conn.recv(64).split(b"\r\n", 1)[0]


def test_oversized_requests_get_400_and_one_quiet_line(caplog):
    caplog.set_level(logging.INFO)
    with serving(WebSink(PictureSettings(), port=0)) as sink:
        caplog.clear()
        for data in OVERSIZED * 3:
            assert b" 400 " in raw_status(sink.port, data)
        assert request(sink.port, "/stats")[0] == 200  # and the server goes on
    served = [r for r in caplog.records if r.name.startswith("aiohttp") or "malformed" in r.getMessage()]
    assert len(served) == 1 and served[0].levelno == logging.INFO, [r.getMessage() for r in served]
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)


def test_debug_keeps_aiohttp_full_report(caplog):
    caplog.set_level(logging.DEBUG)
    with serving(WebSink(PictureSettings(), port=0)) as sink:
        assert b" 400 " in raw_status(sink.port, OVERSIZED[0])
    assert any(r.exc_info for r in caplog.records if r.name == "aiohttp.server")


def test_head_of_the_stream_answers_like_get_without_a_body():
    with serving(WebSink(PictureSettings(), port=0)) as sink:
        sink.write(result(0))
        status, headers, body = request(sink.port, "/stream.mjpg", "HEAD")
        assert status == 200 and headers["Content-Type"].startswith("multipart/x-mixed-replace") and body == b""
        assert sink.clients == 0
        for path in ("/", "/stats", "/snapshot.png"):
            assert request(sink.port, path, "HEAD")[0] == 200, path


def test_all_networks_prints_this_machines_addresses_not_the_wildcard():
    sink = WebSink(PictureSettings(), host="0.0.0.0", port=8080)
    hosts = [urlsplit(url).hostname for url in sink.urls]
    assert "0.0.0.0" not in sink.url and urlsplit(sink.url).hostname == hosts[0]
    assert hosts[-1] == "127.0.0.1" and all(f"token={sink.token}" in url for url in sink.urls)
    for host in hosts:
        assert ipaddress.ip_address(host).version == 4 and not ipaddress.ip_address(host).is_unspecified
    assert set(machine_addresses("::")) >= {"127.0.0.1", "::1"}
    with serving(WebSink(PictureSettings(), host="0.0.0.0", port=0)) as served:
        for url in served.urls:  # every printed address reaches this server
            if ipaddress.ip_address(urlsplit(url).hostname).version == 4:
                with socket.create_connection((urlsplit(url).hostname, served.port), timeout=5):
                    pass
