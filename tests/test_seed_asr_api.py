"""SaladTechnologies/asr-api's clients, unchanged, against a real `asrd serve` (real tiny.en,
real speech, loopback only): its README's curl commands with every Content-Type such clients
send, its Python snippet (`requests.post(data=f)`), `requests.post(data=json.dumps(...))`, its
benchmark client (JSON `url` of a local file, the headers it reads), a browser's `fetch`, and
its Swagger docs, which here work offline."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import CLIPS, SERVER_ENV, AsrdServer, assert_error, wer

requests = pytest.importorskip("requests")

JFK = CLIPS["en_jfk_inaugural_1961.flac"]
SHORT = CLIPS["en_cmuarctic_a0024.wav"]
SALAD = {"SALAD_MACHINE_ID": "machine-7f3a", "SALAD_CONTAINER_GROUP_ID": "group-42"}
# The headers asr-api's bench/benchmark.py reads from every answer.
BENCHMARK_HEADERS = [
    "x-gpu-name",
    "x-salad-machine-id",
    "x-salad-container-group-id",
    "x-processing-time",
    "x-audio-length",
    "x-realtime-factor",
    "x-model-id",
]
CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl not installed")


@pytest.fixture(scope="module")
def seed(allowed_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsrdServer]:
    """asrd as a SaladCloud container would run it: the Salad variables set, local files
    allowed below one directory (the benchmark posts local paths), loopback URLs allowed."""
    env = {**SERVER_ENV, **SALAD, "LOCAL_FILE_DIRS": str(allowed_dir), "ALLOW_PRIVATE_URLS": "1"}
    with AsrdServer(env, tmp_path_factory.mktemp("seed") / "asrd.log") as instance:
        yield instance


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        http.trust_env = False  # loopback only, whatever proxy the environment names
        yield http


def assert_seed_answer(status: int, headers: dict[str, str], body: str, clip, max_wer=0.2) -> dict:
    """The seed's answer: `text` and `chunks` (plus asrd's `language` and `duration`), and the
    seed's headers, with the Salad variables echoed and no GPU named on this CPU."""
    assert status == 200, body
    answer = json.loads(body)
    assert {"text", "chunks"} <= set(answer)
    assert wer(clip.transcript, answer["text"]) <= max_wer, answer["text"]
    assert answer["chunks"] and all(len(chunk["timestamp"]) == 2 for chunk in answer["chunks"])
    headers = {name.lower(): value for name, value in headers.items()}
    assert set(BENCHMARK_HEADERS) <= set(headers), headers
    assert headers["x-salad-machine-id"] == SALAD["SALAD_MACHINE_ID"]
    assert headers["x-salad-container-group-id"] == SALAD["SALAD_CONTAINER_GROUP_ID"]
    assert headers["x-gpu-name"] == ""  # the tests run on a CPU
    assert headers["x-model-id"] == "tiny.en"
    assert float(headers["x-audio-length"]) == pytest.approx(clip.duration, abs=0.05)
    assert float(headers["x-processing-time"]) > 0
    return answer


def curl(*args: str) -> tuple[int, dict[str, str], str]:
    """Run the real curl, as the seed's README does; status, headers, body."""
    done = subprocess.run(
        [CURL, "-sS", "--noproxy", "*", "-D", "-", *args],
        capture_output=True,
        check=True,
        timeout=120,
    )
    head, _, body = done.stdout.decode().partition("\r\n\r\n")
    while head.startswith("HTTP/1.1 100"):  # curl's Expect: 100-continue for big bodies
        head, _, body = body.partition("\r\n\r\n")
    status_line, *lines = head.split("\r\n")
    headers = dict(
        line.split(": ", 1) if ": " in line else (line.rstrip(":"), "") for line in lines
    )
    return int(status_line.split()[1]), headers, body


# --- the README's curl commands ---------------------------------------------------------------


@needs_curl
@pytest.mark.parametrize(
    "content_type,clip",
    [
        ("application/octet-stream", JFK),  # the README's command
        (None, JFK),  # curl's own default for --data-binary: application/x-www-form-urlencoded
        ("application/ogg", CLIPS["en_ls_1089-134686-0001_transcoded.ogg"]),
        ("binary/octet-stream", JFK),
        ("application/x-binary", JFK),
        ("text/plain", SHORT),
        ("audio/mpeg", CLIPS["en_jfk_inaugural_1961_16k.mp3"]),
        ("video/webm", CLIPS["en_ls_1089-134686-0001_transcoded.webm"]),
    ],
    ids=lambda value: value if isinstance(value, str) or value is None else "",
)
def test_readme_curl_raw_bytes_with_any_content_type(
    seed: AsrdServer, content_type: str | None, clip
) -> None:
    header = ["-H", f"Content-Type: {content_type}"] if content_type else []
    status, headers, body = curl(
        "-X", "POST", f"{seed.url}/asr", "--data-binary", f"@{clip.path}", *header
    )
    assert_seed_answer(status, headers, body, clip, max_wer=0.25)


@needs_curl
@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "text/plain", "application/octet-stream"],
    ids=["curl-d-form-type", "json", "text-plain", "octet-stream"],
)
def test_readme_curl_json_url_with_any_content_type(
    seed: AsrdServer, file_server: str, content_type: str | None
) -> None:
    # `curl -d '{"url": ...}'` sends application/x-www-form-urlencoded unless told otherwise.
    header = ["-H", f"Content-Type: {content_type}"] if content_type else []
    payload = json.dumps({"url": f"{file_server}/{JFK.name}"})
    status, headers, body = curl("-X", "POST", f"{seed.url}/asr", "-d", payload, *header)
    assert_seed_answer(status, headers, body, JFK)


@needs_curl
def test_readme_curl_local_path(seed: AsrdServer, allowed_dir: Path) -> None:
    # The README's `{"url": "/path/to/local/audio.mp3"}`, for a file below LOCAL_FILE_DIRS.
    payload = json.dumps({"url": str(allowed_dir / "jfk.flac")})
    status, headers, body = curl("-X", "POST", f"{seed.url}/asr", "-d", payload)
    assert_seed_answer(status, headers, body, JFK)


# --- Python clients -----------------------------------------------------------------------------


def test_readme_python_snippet_posts_the_open_file(
    seed: AsrdServer, session: requests.Session
) -> None:
    # The README: `requests.post(base_url + "/asr", data=f).json()` (no Content-Type).
    with JFK.path.open("rb") as f:
        response = session.post(seed.url + "/asr", data=f, timeout=120)
    assert "Content-Type" not in response.request.headers
    assert_seed_answer(response.status_code, response.headers, response.text, JFK)


@pytest.mark.parametrize("content_type", [None, "text/plain;charset=UTF-8"])
def test_requests_data_json_dumps(
    seed: AsrdServer, session: requests.Session, file_server: str, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    payload = json.dumps({"url": f"{file_server}/{SHORT.name}"})
    response = session.post(seed.url + "/asr", data=payload, headers=headers, timeout=120)
    assert response.request.headers.get("Content-Type") == content_type
    assert_seed_answer(response.status_code, response.headers, response.text, SHORT)


def test_benchmark_client(seed: AsrdServer, session: requests.Session, allowed_dir: Path) -> None:
    """bench/benchmark.py's loop, step by step: wait for /hc, post `{"url": local path}`
    with `json=`, read its headers, compute its realtime factor from its own clip length."""
    for _ in range(100):
        if session.get(seed.url + "/hc", timeout=5).status_code == 200:
            break
        time.sleep(1)
    metadata = {"downloaded_file_path": str(allowed_dir / "jfk.flac"), "clip_length": 11.0}
    response = session.post(
        seed.url + "/asr", json={"url": metadata["downloaded_file_path"]}, timeout=120
    )
    assert response.status_code == 200, response.text
    body = response.json()
    result = {"word_count": len(body["text"].split())}
    for header in BENCHMARK_HEADERS:
        result[header.replace("x-", "")] = response.headers.get(header)
    result["realtime-factor"] = metadata["clip_length"] / float(
        response.headers["x-processing-time"]
    )
    assert result["word_count"] == pytest.approx(len(JFK.transcript.split()), abs=3)
    assert result["gpu-name"] == "" and result["model-id"] == "tiny.en"
    assert result["salad-machine-id"] == "machine-7f3a"
    assert result["salad-container-group-id"] == "group-42"
    assert float(result["audio-length"]) == pytest.approx(11.0, abs=0.05)
    assert result["realtime-factor"] > 1  # tiny.en on two cores: faster than real time
    assert_seed_answer(response.status_code, response.headers, response.text, JFK)


# --- what the seed answered with a 500, and its edges -------------------------------------------


def test_json_objects_and_lookalikes_with_any_content_type(
    seed: AsrdServer, file_server: str
) -> None:
    with httpx.Client(base_url=seed.url, timeout=60) as client:
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": content_type} if content_type else {}
            # An object without a usable `url` is a clear 422 (the seed: a 500 from ffmpeg).
            for payload in ({"foo": 1}, {"url": 42}, {"url": ["a", "b"]}):
                response = client.post("/asr", content=json.dumps(payload), headers=headers)
                assert_error(response, 422)
            # The README's own example has a trailing comma: not JSON, so audio, refused.
            readme = b'{\n"url": "https://example.com/audio.mp3",\n}'
            assert_error(client.post("/asr", content=readme, headers=headers), 400)
        # Leading whitespace and a byte-order mark are still JSON.
        url = f"{file_server}/{SHORT.name}".encode()
        response = client.post("/asr", content=b'\xef\xbb\xbf \n{"url": "' + url + b'"}')
        assert response.status_code == 200, response.text
        # A JSON-looking body over 64 KB is audio, and the decoder refuses it.
        padded = json.dumps({"url": url.decode(), "pad": "x" * 70_000})
        big = client.post("/asr", content=padded, headers={"Content-Type": "text/plain"})
        assert_error(big, 400)
        assert big.json()["error"]["code"] in ("invalid_audio", "unsupported_format")
        # With a JSON Content-Type, over 64 KB is 413 as before.
        assert_error(
            client.post("/asr", content=padded, headers={"Content-Type": "application/json"}), 413
        )


def test_trailing_slashes(seed: AsrdServer) -> None:
    with httpx.Client(base_url=seed.url, timeout=60) as client:
        assert client.get("/hc/").json()["status"] == "ok"
        response = client.post("/asr/", content=SHORT.read())
        assert_seed_answer(response.status_code, response.headers, response.text, SHORT)


# --- /docs and /redoc, offline ------------------------------------------------------------------

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/docs/", "/redoc/"])
def test_docs_pages_load_only_local_assets(seed: AsrdServer, page: str) -> None:
    with httpx.Client(base_url=seed.url, timeout=30) as client:
        response = client.get(page)
        assert response.status_code == 200 and "text/html" in response.headers["content-type"]
        html = response.text
        assert "http://" not in html and "https://" not in html  # no CDN, no web font
        assets = ASSET.findall(html)
        assert len(assets) >= 2, html  # a script and a favicon at least
        for asset in [*assets, "/openapi.json"]:
            assert asset.startswith("/") and not asset.startswith("//"), asset
            served = client.get(asset)
            assert served.status_code == 200, asset
            assert len(served.content) > 0
            assert b"cdn." not in served.content, asset  # Redoc's logo, from a CDN
        assert "/openapi.json" in html


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update"],
        )  # fmt: skip
        yield instance
        instance.close()


@pytest.mark.parametrize(
    "page,rendered",
    [("/docs", ".swagger-ui .info .title"), ("/redoc", "h1")],
    ids=["swagger", "redoc"],
)
def test_docs_render_in_a_browser_offline(
    browser, seed: AsrdServer, page: str, rendered: str
) -> None:
    """The pages render in Chromium with every request served by asrd; anything that would
    leave the machine is blocked and fails the test."""
    context = browser.new_context()
    requested: list[str] = []
    failed: list[str] = []

    def route(route) -> None:
        requested.append(route.request.url)
        if route.request.url.startswith(seed.url + "/"):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", route)
    tab = context.new_page()
    tab.on("requestfailed", lambda request: failed.append(request.url))
    tab.goto(seed.url + page)
    title = tab.wait_for_selector(rendered, timeout=30_000)
    assert "asrd" in title.inner_text()
    # The operations are listed, from /openapi.json: /asr's summary, for one.
    tab.get_by_text("Transcribe audio: raw bytes").first.wait_for(state="attached", timeout=10_000)
    context.close()
    assert requested and all(url.startswith(seed.url + "/") for url in requested), requested
    assert not failed, failed


def test_browser_fetch_with_string_and_blob_bodies(
    browser, seed: AsrdServer, file_server: str
) -> None:
    """A page's `fetch('/asr', {body: JSON.stringify({url})})` sends text/plain, and a Blob of
    audio bytes without a type sends no Content-Type: both are served."""
    context = browser.new_context()
    tab = context.new_page()
    tab.goto(seed.url + "/docs")
    answer = tab.evaluate(
        """async (url) => {
            const response = await fetch('/asr', {method: 'POST', body: JSON.stringify({url})});
            return {status: response.status, body: await response.json()};
        }""",
        f"{file_server}/{SHORT.name}",
    )
    assert answer["status"] == 200, answer
    assert wer(SHORT.transcript, answer["body"]["text"]) <= 0.2
    answer = tab.evaluate(
        """async (audio) => {
            const bytes = Uint8Array.from(atob(audio), (c) => c.charCodeAt(0));
            const response = await fetch('/asr', {method: 'POST', body: new Blob([bytes])});
            return {status: response.status, body: await response.json()};
        }""",
        base64.b64encode(SHORT.read()).decode(),
    )
    context.close()
    assert answer["status"] == 200, answer
    assert wer(SHORT.transcript, answer["body"]["text"]) <= 0.2


# --- X-GPU-Name on a GPU: the driver library's calls, against a stand-in driver ---------------

FAKE_LIBCUDA = r"""
#include <string.h>
int cuInit(unsigned int flags) { return flags == 0 ? 0 : 1; }
int cuDeviceGet(int *device, int ordinal) {
    if (ordinal != 0) return 101; /* CUDA_ERROR_INVALID_DEVICE */
    *device = 7;
    return 0;
}
int cuDeviceGetName(char *name, int len, int device) {
    if (device != 7 || len < 32) return 101;
    strncpy(name, "NVIDIA H200 (stand-in)", len);
    return 0;
}
"""


def test_gpu_name_from_the_cuda_driver_library(tmp_path: Path) -> None:
    """X-GPU-Name comes from libcuda's cuDeviceGetName (no GPU here: a stand-in library with
    the driver's signatures checks the calls); without a driver it is empty."""
    from asrd.api.asr import gpu_name

    assert gpu_name(0, str(tmp_path / "missing.so")) == ""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler for the stand-in driver library")
    source, library = tmp_path / "cuda.c", tmp_path / "libcuda-standin.so"
    source.write_text(FAKE_LIBCUDA)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    assert gpu_name(0, str(library)) == "NVIDIA H200 (stand-in)"
    assert gpu_name(1, str(library)) == ""  # no such device
