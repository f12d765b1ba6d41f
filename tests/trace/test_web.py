"""The viewer's server and HTML file without a browser: what they serve and write."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from click.testing import CliRunner

from rlm.cli import cli
from rlm.trace.fixtures import fixture_path
from rlm.trace.web import TraceServer, read_lines, render_html


@pytest.fixture
def cli_runner() -> CliRunner:
    return CliRunner()


def test_read_lines_returns_complete_lines_only(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')
    lines, nxt, reset = read_lines(path, 0)
    assert lines == ['{"a": 1}', '{"b": 2}'] and nxt == 18 and not reset
    assert read_lines(path, nxt) == ([], 18, False)  # the half line waits
    with path.open("ab") as handle:
        handle.write(b'3}\n')
    assert read_lines(path, nxt) == (['{"c": 3}'], 27, False)


def test_read_lines_of_a_rewritten_or_missing_file(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"x": 1}\n')
    assert read_lines(path, 500) == (['{"x": 1}'], 9, True)  # shorter than before: restart
    assert read_lines(tmp_path / "none.jsonl", 0) == ([], 0, False)


def test_read_lines_reads_a_line_longer_than_the_chunk(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("x" * 50 + "\ny\n")
    assert read_lines(path, 0, limit=10) == (["x" * 50], 51, False)


def test_the_server_serves_the_page_assets_and_lines():
    lines = fixture_path("batch").read_text().splitlines()
    with TraceServer(fixture_path("batch")) as server:
        assert server.url.startswith("http://127.0.0.1:")
        page = httpx.get(server.url)
        assert page.status_code == 200 and 'id="rlm-config"' in page.text
        config = json.loads(page.text.split('type="application/json">')[1].split("</script>")[0])
        assert config == {"name": "batch.jsonl", "source": "trace", "follow": False,
                          "interval_ms": 1000}
        assert "function" in httpx.get(server.url + "viewer.js").text
        assert httpx.get(server.url + "viewer.css").headers["content-type"].startswith("text/css")
        body = httpx.get(server.url + "trace", params={"from": 0}).json()
        assert body["lines"] == lines and not body["reset"]
        assert httpx.get(server.url + "trace", params={"from": body["next"]}).json()["lines"] == []
        assert httpx.get(server.url + "trace", params={"from": "x"}).status_code == 400
        assert httpx.get(server.url + "secrets.txt").status_code == 404


def test_the_html_file_cannot_be_broken_out_of_by_the_trace(tmp_path):
    path = tmp_path / "t.jsonl"
    text = fixture_path("budget").read_text().replace("Count forever.",
                                                      "</script><script>alert(1)</script>")
    path.write_text(text)
    html = render_html(path)
    assert "</script><script>alert(1)" not in html
    assert html.count("<script") == 2  # the config and the viewer
    assert "<link" not in html and "http" not in html.split("<body>")[0]


def test_cli_trace_html_writes_one_file(cli_runner, tmp_path):
    out = tmp_path / "shared" / "run.html"
    result = cli_runner.invoke(cli, ["trace", "html", str(fixture_path("tree")), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stderr and "survey north" in out.read_text()


def test_cli_trace_html_refuses_a_file_that_is_not_a_trace(cli_runner, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "run_start"}\n')
    result = cli_runner.invoke(cli, ["trace", "html", str(bad), "-o", str(tmp_path / "o.html")])
    assert result.exit_code == 1 and "bad.jsonl:1: not a trace event" in result.stderr
    assert not (tmp_path / "o.html").exists()


@pytest.mark.parametrize("follow", [False, True])
def test_cli_trace_view_prints_the_url_and_serves(tmp_path, follow):
    path = tmp_path / "later.jsonl" if follow else fixture_path("session")
    args = [sys.executable, "-m", "rlm.cli", "trace", "view", str(path), "--no-open"]
    with subprocess.Popen([*args, *(["--follow"] if follow else [])], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as process:
        try:
            url = process.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:") and url.endswith("/")
            body = httpx.get(url + "trace", params={"from": 0}).json()
            assert len(body["lines"]) == (0 if follow else 10)
            assert f'"follow": {json.dumps(follow)}' in httpx.get(url).text
        finally:
            process.terminate()
