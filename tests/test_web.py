"""The web page, end to end: Debian's headless Chromium driven by Playwright against a real
`asrd serve` (tiny.en). The first tests go through the real task API; the others answer some API
calls from the test (Playwright routes) to reach states a real server gives only by chance:
queue positions, a full queue, an expired task, a failed task, a dropped connection."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import srt

from conftest import CLIPS, SERVER_ENV, AsrdServer, decode_pcm, encode, normalise, wer

CHROMIUM = "/usr/bin/chromium"
if not shutil.which(CHROMIUM):
    pytest.skip(
        f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright not installed (pip install playwright)"
)
Browser, Page, Route, expect = sync_api.Browser, sync_api.Page, sync_api.Route, sync_api.expect

ARTIFACTS = Path(__file__).parent / "artifacts"
JFK = CLIPS["en_jfk_inaugural_1961.flac"]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
TASKS = re.compile(r"/api/v1/tasks/")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def playwright() -> Iterator[sync_api.Playwright]:
    with sync_api.sync_playwright() as instance:  # one per process: its own event loop
        yield instance


def launch(playwright: sync_api.Playwright, *extra_args: str) -> Browser:
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=[*LAUNCH_ARGS, *extra_args]
    )


@pytest.fixture(scope="module")
def browser(playwright: sync_api.Playwright) -> Iterator[Browser]:
    instance = launch(playwright)
    yield instance
    instance.close()


class Web:
    """One browser page on asrd's web page, recording every request it makes."""

    def __init__(self, page: Page, server: AsrdServer):
        self.page, self.server = page, server
        self.requests: list[tuple[float, str, str]] = []  # (time, method, url)
        self.page_errors: list[str] = []
        page.on("request", lambda r: self.requests.append((time.monotonic(), r.method, r.url)))
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))

    def open(self) -> Page:
        self.page.goto(f"{self.server.url}/")
        expect(self.page).to_have_title(re.compile("asrd"))
        return self.page

    def open_ready(self) -> Page:
        """The page, once it has offered only what the server's model can do."""
        page = self.open()
        expect(page.locator("#form")).to_have_attribute("data-capabilities", "applied")
        return page

    def polls(self, since: float = 0.0, task_id: str = "") -> list[str]:
        """GETs of `/api/v1/tasks/...` (of one task if given) made after `since`."""
        return [
            url
            for at, method, url in self.requests
            if at > since and method == "GET" and TASKS.search(url) and task_id in url
        ]

    def assert_polling_stopped(self, wait_s: float = 3.0) -> None:
        """No task is polled any more: wait longer than two poll intervals and count."""
        before = len(self.polls())
        self.page.wait_for_timeout(wait_s * 1000)
        assert len(self.polls()) == before, self.polls()

    def assert_clean(self) -> None:
        """No uncaught script error, and nothing fetched from anywhere but asrd (offline)."""
        assert self.page_errors == []
        foreign = [
            url
            for _, _, url in self.requests
            if not url.startswith((self.server.url, "blob:", "data:"))
        ]
        assert foreign == []

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / name), full_page=True)


@pytest.fixture
def web(browser: Browser, server: AsrdServer) -> Iterator[Callable[..., Web]]:
    contexts = []

    def make(viewport: dict[str, int] = DESKTOP, **options) -> Web:
        context = browser.new_context(viewport=viewport, **options)
        context.set_default_timeout(15_000)
        contexts.append(context)
        return Web(context.new_page(), server)

    yield make
    for context in contexts:
        context.close()


def segment_rows(page: Page) -> list[str]:
    return page.locator("#transcript .segment").all_text_contents()


def transcript_words(page: Page) -> str:
    return " ".join(page.locator("#transcript .segment-text").all_inner_texts())


def fake_task(task_id: str, status: str, **fields) -> dict:
    """A task as `GET /api/v1/tasks/{id}` answers it."""
    return {
        "task_id": task_id,
        "task_type": "transcribe",
        "status": status,
        "position_in_queue": None,
        "file_name": "clip.wav",
        "time_uploaded": "2025-01-01T12:00:00Z",
        "time_started": None,
        "time_finished": None,
        "processing_duration": None,
        "result": None,
        "error": None,
        "expires_at": None,
        **fields,
    }


def fulfil_json(route: Route, status: int, body: dict, headers: dict | None = None) -> None:
    route.fulfill(
        status=status,
        content_type="application/json",
        headers=headers or {},
        body=json.dumps(body),
    )


def api_error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


# ------------------------------------------------------------------ the real API


def test_page_and_assets_are_served(server: AsrdServer) -> None:
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for asset, kind in [("/static/app.js", "javascript"), ("/static/style.css", "text/css")]:
        assert asset in page.text
        response = httpx.get(f"{server.url}{asset}")
        assert response.status_code == 200, asset
        assert kind in response.headers["content-type"], response.headers
    assert httpx.get(f"{server.url}/static/nope.js").status_code == 404


def test_transcribes_a_file_on_a_phone(web: Callable[..., Web], server: AsrdServer) -> None:
    session = web(PHONE, permissions=["clipboard-read", "clipboard-write"])
    page = session.open_ready()
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#language")).to_have_value("en")  # tiny.en: English, nothing else
    expect(page.locator("#task")).to_have_value("transcribe")

    page.set_input_files("#file", JFK.path)
    expect(page.locator("#selected")).to_contain_text(JFK.name)
    with page.expect_response(re.compile(r"/api/v1/transcribe$")) as submitted:
        page.click("#submit")
    assert submitted.value.status == 200, submitted.value.text()  # the seed's route, its code
    task_id = submitted.value.json()["task_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", task_id)
    expect(page.locator("#status")).to_be_visible()

    expect(page.locator("#transcript .segment").first).to_be_visible(timeout=60_000)
    expect(page.locator("#status")).to_contain_text("Transcribed")
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#cancel")).to_be_hidden()

    # Every row is "[mm:ss] text", in time order, starting at the start.
    rows = segment_rows(page)
    assert rows, "no transcript rows"
    stamps = []
    for row in rows:
        match = re.fullmatch(r"\[(\d\d):(\d\d)\]\s+(\S.*)", row.strip(), re.DOTALL)
        assert match, row
        stamps.append(int(match[1]) * 60 + int(match[2]))
    assert stamps[0] == 0 and stamps == sorted(stamps) and stamps[-1] <= JFK.duration, rows
    words = transcript_words(page)
    assert wer(JFK.transcript, words) <= 0.2, words
    assert "ask not what your country can do for you" in normalise(words)
    expect(page.locator("#result-meta")).to_contain_text("English")

    # Downloads point at this task; what they serve is this transcript.
    for fmt in ("txt", "srt", "vtt"):
        href = page.get_attribute(f"#download-{fmt}", "href")
        assert href == f"/api/v1/{fmt}?task_id={task_id}"
        response = httpx.get(f"{server.url}{href}")
        assert response.status_code == 200, response.text
        assert wer(JFK.transcript, re.sub(r"\d\d:\d\d:\d\d[.,]\d+", " ", response.text)) <= 0.25
    with page.expect_download() as download:
        page.click("#download-srt")
    assert download.value.suggested_filename.endswith(".srt")
    assert "-->" in Path(download.value.path()).read_text()

    # Copy puts the plain text (no timestamps) on the clipboard.
    page.click("#copy")
    expect(page.locator("#copy-note")).to_have_text("Copied.")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert "[" not in copied and wer(JFK.transcript, copied) <= 0.2, copied

    # Fits a phone: nothing wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    session.assert_polling_stopped()
    assert session.polls(task_id=task_id), "the page never polled its task"
    session.assert_clean()
    session.screenshot("web-transcript.png")
    assert httpx.delete(f"{server.url}/api/v1/tasks/{task_id}").status_code == 200  # tidy up


def test_corrupt_file_shows_an_error_and_stops(
    web: Callable[..., Web], tmp_path: Path, server: AsrdServer
) -> None:
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    session = web()
    page = session.open()
    page.set_input_files("#file", broken)
    page.click("#submit")

    error = page.locator("#error")
    expect(error).to_be_visible(timeout=30_000)
    expect(error).to_contain_text("could not be read as audio")
    assert len(error.inner_text().strip()) > len("could not be read as audio") + 5
    expect(page.locator("#status")).to_be_hidden()
    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#cancel")).to_be_hidden()
    session.assert_polling_stopped()
    session.assert_clean()
    session.screenshot("web-error.png")


def test_too_large_upload_is_refused(web: Callable[..., Web], tmp_path: Path) -> None:
    huge = tmp_path / "huge.wav"
    huge.write_bytes(bytes(10 * 1024 * 1024))  # over the test server's MAX_UPLOAD_MB=8
    session = web()
    page = session.open()
    page.set_input_files("#file", huge)
    page.click("#submit")
    expect(page.locator("#error")).to_contain_text("too large", timeout=30_000)
    expect(page.locator("#error")).to_contain_text("MAX_UPLOAD_MB")
    session.assert_polling_stopped(1.5)
    assert session.polls() == []


def options(page: Page, select: str) -> list[str]:
    """The values of a select's options a user can pick (not hidden, not disabled)."""
    return page.eval_on_selector_all(
        f"{select} option", "all => all.filter(o => !o.hidden && !o.disabled).map(o => o.value)"
    )


def test_english_only_model_offers_english_and_transcription_only(
    web: Callable[..., Web],
) -> None:
    session = web()
    page = session.open_ready()
    assert options(page, "#language") == ["en"]
    assert options(page, "#task") == ["transcribe"]
    expect(page.locator("#model-note")).to_be_visible()
    expect(page.locator("#model-note")).to_contain_text("tiny.en")
    expect(page.locator("#model-note")).to_contain_text("English-only")
    expect(page.locator("#submit")).to_have_text("Transcribe")
    session.assert_clean()


def test_multilingual_model_offers_languages_and_translation(
    browser: Browser, base_server: AsrdServer
) -> None:
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(15_000)
    try:
        session = Web(context.new_page(), base_server)
        page = session.open_ready()
        languages = options(page, "#language")
        assert languages[0] == "" and {"en", "fr", "de", "ja"} <= set(languages)
        assert options(page, "#task") == ["transcribe", "translate"]
        expect(page.locator("#model-note")).to_be_hidden()
        page.select_option("#task", "translate")
        expect(page.locator("#submit")).to_have_text("Translate")
        session.assert_clean()
    finally:
        context.close()


# ------------------------------------------------------------------ several models (MODELS)

FRENCH = CLIPS["fr_picovoice_test_fr.wav"]


@pytest.fixture(scope="module")
def pair_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsrdServer]:
    """tiny.en (MODEL_ID, the default) and the multilingual `base` (MODELS)."""
    log_path = tmp_path_factory.mktemp("logs-pair") / "asrd.log"
    with AsrdServer({**SERVER_ENV, "MODELS": "base"}, log_path) as instance:
        yield instance


@pytest.fixture
def pair_web(browser: Browser, pair_server: AsrdServer) -> Iterator[Web]:
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(15_000)
    yield Web(context.new_page(), pair_server)
    context.close()


# One multipart part: its name (after the boundary), its other headers, a blank line, its value.
FORM_PART = re.compile(rb'name="([^"]+)"[^\r]*\r\n(?:[^\r]+\r\n)*\r\n(.*?)\r\n--', re.S)


def form_fields(body: bytes | None) -> dict[str, bytes]:
    """A multipart body's fields by name, in order (a file field's value is its content)."""
    assert body
    return {match[1].decode(): match[2] for match in FORM_PART.finditer(body)}


def assert_english_only(page: Page, model: str) -> None:
    assert options(page, "#language") == ["en"]
    expect(page.locator("#language")).to_have_value("en")
    assert options(page, "#task") == ["transcribe"]
    expect(page.locator("#task")).to_have_value("transcribe")
    expect(page.locator("#submit")).to_have_text("Transcribe")
    expect(page.locator("#model-note")).to_be_visible()
    expect(page.locator("#model-note")).to_contain_text(model)
    expect(page.locator("#model-note")).to_contain_text("English-only")


def test_model_picker_offers_each_models_languages_and_sends_the_choice(
    pair_web: Web,
) -> None:
    session = pair_web
    page = session.open_ready()
    picker = page.locator("#model")
    expect(picker).to_be_visible()
    assert page.get_by_label("Model").get_attribute("id") == "model"
    assert options(page, "#model") == ["tiny.en", "base"]  # the server's order, default first
    expect(picker).to_have_value("tiny.en")
    labels = picker.locator("option").all_text_contents()
    assert "English only" in labels[0] and "default" in labels[0], labels
    assert labels[1] == "base", labels
    assert_english_only(page, "tiny.en")

    # By keyboard: the next model is base, multilingual.
    picker.focus()
    page.keyboard.press("ArrowDown")
    expect(picker).to_have_value("base")
    languages = options(page, "#language")
    assert languages[0] == "" and {"en", "fr", "de", "ja"} <= set(languages)
    expect(page.locator("#language")).to_have_value("")  # detect: English was only forced
    assert options(page, "#task") == ["transcribe", "translate"]
    expect(page.locator("#model-note")).to_be_hidden()

    # Translation there, then tiny.en can't: back to transcription, and back again.
    page.select_option("#task", "translate")
    expect(page.locator("#submit")).to_have_text("Translate")
    page.select_option("#model", "tiny.en")
    assert_english_only(page, "tiny.en")
    page.select_option("#model", "base")
    expect(page.locator("#task")).to_have_value("translate")
    page.select_option("#task", "transcribe")

    # French with base: the request names the model, the transcript is French.
    page.select_option("#language", "fr")
    page.set_input_files("#file", FRENCH.path)
    bodies = []  # Chromium reports an upload's body only to a route: look, then let it pass

    def look(route: Route) -> None:
        bodies.append(route.request.post_data_buffer)
        route.continue_()

    page.route("**/api/v1/transcribe", look)
    with page.expect_response(re.compile(r"/api/v1/transcribe$")) as submitted:
        page.click("#submit")
    assert submitted.value.status == 200, submitted.value.text()
    assert len(bodies) == 1
    fields = form_fields(bodies[0])
    assert list(fields) == ["file", "language", "model"], list(fields)
    assert fields["model"] == b"base" and fields["language"] == b"fr"
    assert f'filename="{FRENCH.name}"'.encode() in bodies[0]  # (its bytes aren't reported)
    expect(page.locator("#transcript .segment").first).to_be_visible(timeout=120_000)
    expect(page.locator("#status")).to_contain_text("Transcribed")
    words = transcript_words(page)
    assert wer(FRENCH.transcript, words) <= 0.5, words
    expect(page.locator("#result-meta")).to_contain_text("French")
    session.screenshot("web-models.png")

    # Back to tiny.en: English only again; base keeps the French the user chose.
    page.select_option("#model", "tiny.en")
    assert_english_only(page, "tiny.en")
    page.select_option("#model", "base")
    expect(page.locator("#language")).to_have_value("fr")
    page.select_option("#model", "tiny.en")
    assert_english_only(page, "tiny.en")
    session.assert_polling_stopped()
    session.assert_clean()


def test_a_model_no_longer_served_is_explained(pair_web: Web) -> None:
    """The page picked a model the server doesn't serve (gone since the page read the list):
    the server's 404 `model_not_found` is shown in words, and the page reads the list again."""
    session = pair_web
    page = session.open_ready()
    page.eval_on_selector(
        "#model",
        """select => {
            const option = document.createElement("option");
            option.value = option.textContent = "gone";
            select.append(option);
            select.value = "gone";
        }""",
    )
    page.set_input_files("#file", CLIPS["en_timit_LDC93S1.wav"].path)
    with page.expect_response(re.compile(r"/api/v1/transcribe$")) as submitted:
        page.click("#submit")
    assert submitted.value.status == 404, submitted.value.text()
    assert submitted.value.json()["error"]["code"] == "model_not_found"
    error = page.locator("#error")
    expect(error).to_contain_text("model isn't available")
    assert len(error.inner_text().strip()) > len("The chosen model isn't available") + 20
    expect(page.locator("#status")).to_be_hidden()
    expect(page.locator("#model option[value=gone]")).to_have_count(0)  # the list, read again
    assert options(page, "#model") == ["tiny.en", "base"]
    expect(page.locator("#model")).to_have_value("tiny.en")
    assert_english_only(page, "tiny.en")
    assert session.polls() == []
    session.assert_clean()


def test_one_model_has_no_picker_and_sends_no_model(
    web: Callable[..., Web], tmp_path: Path
) -> None:
    session = web()
    page = session.open_ready()
    expect(page.locator("#model-field")).to_be_hidden()
    bodies = []

    def record(request: sync_api.Request) -> None:
        if request.method == "POST" and "/api/v1/" in request.url:
            bodies.append(request.post_data_buffer)

    page.on("request", record)
    page.route("**/api/v1/transcribe", accept_submit)
    page.route(TASKS, lambda route: fulfil_json(route, 200, fake_task(FAKE_ID, "pending")))
    submit_fake_file(page, tmp_path)
    expect(page.locator("#status")).to_contain_text("Pending")
    assert len(bodies) == 1
    fields = form_fields(bodies[0])
    assert list(fields) == ["file", "language"], list(fields)  # as before MODELS existed
    assert fields["language"] == b"en"
    page.click("#cancel")
    session.assert_polling_stopped()


def test_another_language_is_refused_if_offered_anyway(web: Callable[..., Web]) -> None:
    """A page that missed the model's status (here: told it is multilingual) still gets the
    server's refusal, shown in words."""
    session = web()
    page = session.page

    def multilingual(route: Route) -> None:
        status = route.fetch().json()
        status.update(multilingual=True, languages=["en", "fr"], tasks=["transcribe"])
        fulfil_json(route, 200, status)

    page.route("**/api/v1/decoder_status", multilingual)
    session.open_ready()
    page.set_input_files("#file", JFK.path)
    page.select_option("#language", "fr")
    page.click("#submit")
    expect(page.locator("#error")).to_contain_text("language", timeout=30_000)
    expect(page.locator("#error")).to_contain_text("English-only")
    session.assert_polling_stopped()


def test_records_from_the_microphone(playwright: sync_api.Playwright, server: AsrdServer) -> None:
    """Chromium's fake microphone plays a speech clip (looped); the page records it as WebM,
    uploads it as recording.webm and shows its transcript."""
    speech = CLIPS["en_timit_LDC93S1.wav"]
    microphone = [
        "--use-fake-ui-for-media-stream",  # grant the microphone without asking
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={speech.path}",
    ]
    browser = launch(playwright, *microphone)
    try:
        session = Web(browser.new_page(viewport=DESKTOP), server)
        page = session.open()
        expect(page.locator("#record")).to_be_enabled()
        page.click("#record")
        expect(page.locator("#record")).to_have_attribute("aria-pressed", "true")
        expect(page.locator("#record-time")).to_be_visible()
        page.wait_for_timeout((speech.duration + 0.5) * 1000)
        page.click("#record")
        expect(page.locator("#record")).to_have_attribute("aria-pressed", "false")
        expect(page.locator("#selected")).to_contain_text("recording.webm")
        with page.expect_response(re.compile(r"/api/v1/transcribe$")) as submitted:
            page.click("#submit")
        assert submitted.value.status == 200, submitted.value.text()
        expect(page.locator("#transcript .segment").first).to_be_visible(timeout=60_000)
        task_url = f"{server.url}/api/v1/tasks/{submitted.value.json()['task_id']}"
        assert httpx.get(task_url).json()["file_name"] == "recording.webm"
        words = normalise(transcript_words(page))
        # The fake microphone loops the clip from wherever it happens to be when recording
        # starts, so the cut falls anywhere: ask for most of the sentence's words, not all.
        expected = {"she", "had", "your", "dark", "suit", "greasy", "wash", "water", "year"}
        assert len(expected & set(words.split())) >= 6, words
        session.assert_clean()
        assert httpx.delete(task_url).status_code == 200  # tidy up
    finally:
        browser.close()


# The font style of the first partial caption with words in it (null while there is none).
LIVE_PARTIAL_STYLE = """() => {
  const nodes = [...document.querySelectorAll("#live-captions p.partial")];
  const node = nodes.find((p) => /\\w/.test(p.textContent));
  return node ? getComputedStyle(node).fontStyle : null;
}"""


def test_live_captions_show_the_words_as_they_are_spoken(
    playwright: sync_api.Playwright, server: AsrdServer, tmp_path: Path
) -> None:
    """Live mode: Chromium's fake microphone plays a speech clip then a pause (looped, from a
    WAV written here: 16-bit PCM, as Chromium reads it); partial words show greyed while the
    sentence is spoken, then its final text; the session can be copied and downloaded."""
    clip = CLIPS["en_ls_1272-128104-0000.wav"]
    samples = np.concatenate([decode_pcm(clip.read()), np.zeros(int(1.5 * 16_000), np.float32)])
    wav = tmp_path / "speech.wav"
    wav.write_bytes(encode(samples, "wav"))
    microphone = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    browser = launch(playwright, *microphone)
    try:
        context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
        session = Web(context.new_page(), server)
        page = session.open()
        page.click("#live-toggle")
        expect(page.locator("#live-toggle")).to_have_attribute("aria-pressed", "true")
        expect(page.locator("#live-status")).to_have_text("Listening…", timeout=15_000)
        # Partial words first, shown as not final yet...
        style = page.wait_for_function(LIVE_PARTIAL_STYLE, timeout=30_000).json_value()
        assert style == "italic"  # partial words look different from final text
        # ...then a whole sentence's final text (the loop may begin mid-sentence: the first
        # final may be a part of it; the next one is all of it).
        finals = page.locator("#live-captions p.final")

        def best() -> float:
            texts = finals.all_text_contents()
            return min((wer(clip.transcript, text) for text in texts), default=1.0)

        deadline = time.monotonic() + 45
        while best() > 0.25 and time.monotonic() < deadline:
            page.wait_for_timeout(500)
        assert best() <= 0.25, finals.all_text_contents()
        page.click("#live-toggle")
        expect(page.locator("#live-status")).to_have_text("Stopped.", timeout=15_000)
        with page.expect_download() as download:
            page.click("#live-download")
        saved = Path(download.value.path()).read_text().splitlines()
        assert min(wer(clip.transcript, line) for line in saved) <= 0.25, saved
        session.assert_clean()
    finally:
        browser.close()


# ------------------------------------------------------------------ whisper_api's page

# A page written here that calls asrd as whisper_api's own page does (its script.js): POST the
# file as the form field `file` to /api/v1/transcribe, take `task_id` from the JSON (no status
# code is looked at), poll /api/v1/status?task_id= every second until `status` is "finished",
# show `transcript` with innerText, and open /api/v1/srt?task_id= in a new tab for the srt.
SEED_STYLE_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>whisper_api-style page</title></head>
<body>
  <input type="file" id="audioFile">
  <button type="button" id="transcribe">Transcribe</button>
  <p>Task: <span id="taskId"></span></p>
  <div id="result"></div>
  <button type="button" id="downloadSrt">Download .srt file</button>
  <script>
    let currentTask = "";
    document.getElementById("transcribe").addEventListener("click", async () => {
      const chosen = document.getElementById("audioFile").files[0];
      const body = new FormData();
      body.append("file", chosen, chosen.name);
      const queued = await (await fetch("/api/v1/transcribe", { method: "POST", body })).json();
      currentTask = queued.task_id;
      document.getElementById("taskId").innerText = currentTask;
      const poller = setInterval(async () => {
        const reply = await fetch(`/api/v1/status?task_id=${currentTask}`);
        const task = await reply.json();
        if (task.status === "finished") {
          clearInterval(poller);
          document.getElementById("result").innerText = task.transcript;
        }
      }, 1000);
    });
    document.getElementById("downloadSrt").addEventListener("click", () => {
      window.open(`/api/v1/srt?task_id=${currentTask}`, "_blank");
    });
  </script>
</body></html>
"""


def test_a_page_written_for_whisper_api_works_unchanged(
    web: Callable[..., Web], server: AsrdServer
) -> None:
    """The page is served from asrd's origin (as whisper_api served its own), by the test."""
    session = web()
    page = session.page
    address = f"{server.url}/whisper_api_page.html"
    page.route(
        address,
        lambda route: route.fulfill(status=200, content_type="text/html", body=SEED_STYLE_PAGE),
    )
    answers: list[tuple[str, str, int]] = []
    page.context.on("response", lambda r: answers.append((r.request.method, r.url, r.status)))
    page.goto(address)
    page.set_input_files("#audioFile", JFK.path)
    page.click("#transcribe")
    expect(page.locator("#taskId")).to_have_text(re.compile(r"^[0-9a-f]{32}$"))
    task_id = page.inner_text("#taskId")
    expect(page.locator("#result")).not_to_be_empty(timeout=60_000)
    shown = page.inner_text("#result")
    assert shown != "undefined" and wer(JFK.transcript, shown) <= 0.2, shown

    # Its srt button opens a tab on the download (which the browser then saves).
    srt_url = f"{server.url}/api/v1/srt?task_id={task_id}"
    with page.expect_popup():
        page.click("#downloadSrt")
    deadline = time.monotonic() + 10
    while srt_url not in [url for _, url, _ in answers] and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert ("GET", srt_url, 200) in answers
    download = httpx.get(srt_url)
    assert download.headers["content-disposition"].startswith("attachment;")
    cues = list(srt.parse(download.text))
    assert wer(JFK.transcript, " ".join(cue.content for cue in cues)) <= 0.25

    api = [(method, url, status) for method, url, status in answers if "/api/v1/" in url]
    assert api[0] == ("POST", f"{server.url}/api/v1/transcribe", 200)
    polls = [url for method, url, status in api if "/api/v1/status?" in url and status == 200]
    assert polls and polls == [url for _, url, _ in api if "/api/v1/status?" in url]
    assert set(polls) == {f"{server.url}/api/v1/status?task_id={task_id}"}
    page.wait_for_timeout(2500)  # its poller stopped at `finished`
    assert len([url for _, url, _ in answers if "/api/v1/status?" in url]) == len(polls)
    assert session.page_errors == []
    assert httpx.delete(f"{server.url}/api/v1/tasks/{task_id}").status_code == 200  # tidy up


# ------------------------------------------------------------------ states from fake answers

FAKE_ID = "f" * 32


def submit_fake_file(page: Page, tmp_path: Path) -> None:
    audio = tmp_path / "clip.wav"
    audio.write_bytes(JFK.read())
    page.set_input_files("#file", audio)
    page.click("#submit")


def accepted(task_id: str = FAKE_ID) -> dict:
    return {"task_id": task_id, "status": "pending", "position_in_queue": 3}


def accept_submit(route: Route) -> None:
    fulfil_json(route, 202, accepted())


def test_shows_queue_states_then_a_timestamped_transcript(
    web: Callable[..., Web], tmp_path: Path
) -> None:
    session = web(PHONE, color_scheme="dark")
    page = session.open()
    result = {
        "text": "Hello there. <b>not bold</b>",
        "segments": [
            {"start": 0.0, "end": 2.5, "text": " Hello there."},
            {"start": 3665.2, "end": 3667.0, "text": " <b>not bold</b>"},
        ],
        "language": "en",
        "duration": 3667.0,
    }
    answers = iter(
        [
            fake_task(FAKE_ID, "pending", position_in_queue=2),
            fake_task(FAKE_ID, "pending", position_in_queue=1),
            fake_task(FAKE_ID, "processing", position_in_queue=0),
            fake_task(FAKE_ID, "finished", result=result, processing_duration=1.5),
        ]
    )
    page.route("**/api/v1/transcribe", accept_submit)
    page.route(TASKS, lambda route: fulfil_json(route, 200, next(answers)))
    submit_fake_file(page, tmp_path)

    status = page.locator("#status")
    expect(status).to_have_text(re.compile(r"position 3 in queue"))
    expect(status).to_have_text(re.compile(r"position 2 in queue"))
    expect(status).to_have_text(re.compile(r"position 1 in queue"))
    expect(status).to_have_text(re.compile(r"Processing"))
    expect(status).to_have_text(re.compile(r"Transcribed"))
    assert segment_rows(page) == ["[00:00] Hello there.", "[1:01:05] <b>not bold</b>"]
    assert page.locator("#transcript b").count() == 0  # server text is text, never markup
    session.assert_polling_stopped()
    assert len(session.polls()) == 4
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(17, 19, 24)"  # the dark theme
    session.screenshot("web-dark.png")


def test_labels_and_visible_focus(web: Callable[..., Web]) -> None:
    page = web().open()
    assert page.get_by_label("Spoken language").get_attribute("id") == "language"
    assert page.get_by_label("Task").get_attribute("id") == "task"
    assert page.get_by_label("Choose an audio file").get_attribute("id") == "file"
    outline = "el => getComputedStyle(el).outlineStyle"
    page.keyboard.press("Tab")  # the first stop is the (hidden) file input, in its drop zone
    assert page.evaluate("document.activeElement.id") == "file"
    assert page.locator("#dropzone").evaluate(outline) == "solid"
    page.focus("#task")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "submit"
    assert page.locator("#submit").evaluate(outline) == "solid"


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (429, api_error("queue_full", "the queue is full (8 tasks)"), {"Retry-After": "7"},
         ["queue is full", "Try again in 7 seconds", "The queue is full (8 tasks)."]),
        (413, api_error("too_large", "the upload is over MAX_UPLOAD_MB=8"), {},
         ["too large", "The upload is over MAX_UPLOAD_MB=8."]),
        (503, api_error("model_not_ready", "the model is not loaded yet"), {"Retry-After": "5"},
         ["still loading", "Try again in 5 seconds"]),
        (500, {"detail": "not JSON we know"}, {}, ["HTTP 500"]),
    ],
    ids=["queue-full", "too-large", "model-not-ready", "unknown"],
)  # fmt: skip
def test_rejected_submit_shows_the_reason(
    web: Callable[..., Web], tmp_path: Path, status, body, headers, expected
) -> None:
    session = web()
    page = session.open()
    page.route("**/api/v1/transcribe", lambda route: fulfil_json(route, status, body, headers))
    submit_fake_file(page, tmp_path)
    error = page.locator("#error")
    for text in expected:
        expect(error).to_contain_text(text)
    expect(page.locator("#status")).to_be_hidden()
    session.assert_polling_stopped(1.5)
    assert session.polls() == []


def test_network_error_on_submit(web: Callable[..., Web], tmp_path: Path) -> None:
    session = web()
    page = session.open()
    page.route("**/api/v1/transcribe", lambda route: route.abort("connectionrefused"))
    submit_fake_file(page, tmp_path)
    expect(page.locator("#error")).to_contain_text("Could not reach the server")
    assert session.polls() == []


def test_expired_task_stops_polling(web: Callable[..., Web], tmp_path: Path) -> None:
    session = web()
    page = session.open()
    page.route("**/api/v1/transcribe", accept_submit)
    page.route(TASKS, lambda route: fulfil_json(route, 404, api_error("task_not_found", "gone")))
    submit_fake_file(page, tmp_path)
    expect(page.locator("#error")).to_contain_text("expired or was deleted")
    session.assert_polling_stopped()
    assert len(session.polls()) == 1


def test_failed_task_shows_the_server_message(web: Callable[..., Web], tmp_path: Path) -> None:
    session = web()
    page = session.open()
    failed = fake_task(
        FAKE_ID,
        "failed",
        error={"code": "internal_error", "message": "the worker ran out of memory"},
    )
    page.route("**/api/v1/transcribe", accept_submit)
    page.route(TASKS, lambda route: fulfil_json(route, 200, failed))
    submit_fake_file(page, tmp_path)
    expect(page.locator("#error")).to_contain_text("The transcription failed.")
    expect(page.locator("#error")).to_contain_text("The worker ran out of memory.")
    session.assert_polling_stopped()
    assert len(session.polls()) == 1


def test_lost_connection_while_polling_retries_then_gives_up(
    web: Callable[..., Web], tmp_path: Path
) -> None:
    session = web()
    page = session.open()
    calls = []

    def flaky(route: Route) -> None:
        calls.append(route)
        if len(calls) == 1:
            route.abort("connectionreset")  # one blip: the page retries and carries on
        else:
            fulfil_json(route, 200, fake_task(FAKE_ID, "processing", position_in_queue=0))

    page.route("**/api/v1/transcribe", accept_submit)
    page.route(TASKS, flaky)
    submit_fake_file(page, tmp_path)
    expect(page.locator("#status")).to_contain_text("retrying")
    expect(page.locator("#status")).to_contain_text("Processing", timeout=10_000)
    expect(page.locator("#error")).to_be_hidden()

    page.unroute(TASKS)
    page.route(TASKS, lambda route: route.abort("connectionrefused"))
    expect(page.locator("#error")).to_contain_text("Could not reach the server", timeout=30_000)
    session.assert_polling_stopped()


def test_a_new_job_cancels_the_previous_one(web: Callable[..., Web], tmp_path: Path) -> None:
    session = web()
    page = session.open()
    first, second = "a" * 32, "b" * 32
    ids = iter([first, second])
    deleted = []

    def tasks(route: Route) -> None:
        if route.request.method == "DELETE":
            deleted.append(route.request.url)
            fulfil_json(route, 200, fake_task(first, "failed"))
        else:
            task_id = route.request.url.rsplit("/", 1)[-1]
            fulfil_json(route, 200, fake_task(task_id, "pending", position_in_queue=1))

    page.route("**/api/v1/transcribe", lambda route: fulfil_json(route, 202, accepted(next(ids))))
    page.route(TASKS, tasks)
    submit_fake_file(page, tmp_path)
    expect(page.locator("#cancel")).to_be_visible()
    page.wait_for_event("request", lambda request: first in request.url)
    resubmitted = time.monotonic()
    with page.expect_request(lambda request: second in request.url):
        page.click("#submit")
    page.wait_for_timeout(3000)
    assert session.polls(resubmitted, first) == []
    assert len(session.polls(resubmitted, second)) >= 2
    assert deleted == [f"{session.server.url}/api/v1/tasks/{first}"]

    # Cancel stops the second one too, and tells the server.
    page.click("#cancel")
    expect(page.locator("#status")).to_have_text("Cancelled.")
    session.assert_polling_stopped()
    assert deleted[-1].endswith(second)
    session.assert_clean()


def test_api_key_is_asked_for_and_used(browser: Browser, tmp_path: Path) -> None:
    key = "page-key-0123456789"
    secured = AsrdServer({**SERVER_ENV, "API_KEYS": key}, tmp_path / "asrd.log")
    try:
        secured.wait_ready()  # /hc stays open
        context = browser.new_context(viewport=DESKTOP)
        context.set_default_timeout(15_000)
        session = Web(context.new_page(), secured)
        page = session.open()
        page.once("dialog", lambda dialog: dialog.accept(key))
        page.set_input_files("#file", JFK.path)
        page.click("#submit")
        expect(page.locator("#error")).to_contain_text("API key")  # the first try had none
        page.click("#submit")  # now with the key the page kept
        expect(page.locator("#transcript .segment").first).to_be_visible(timeout=60_000)
        assert wer(JFK.transcript, transcript_words(page)) <= 0.2
        with page.expect_download() as download:  # a download carries the key too
            page.click("#download-srt")
        assert "ask not what your country" in Path(download.value.path()).read_text().lower()
        session.assert_clean()
        context.close()
    finally:
        secured.stop()
