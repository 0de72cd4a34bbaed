"""The checks deploy/test-image.sh runs against containers, in plain Python (no packages: the
host needs none, and `cuda-libs` runs inside the image).

    checks.py wait URL [--timeout S] [--container NAME]   /hc answers 200
    checks.py asr URL CLIP [--max-wer W] [--sent FILE]    POST /asr: the words of tests/data/CLIP
    checks.py task URL CLIP [--max-wer W] [--timeout S]   the same through the task API
    checks.py cuda-libs                                   (in the CUDA image) CUDA's libraries
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def wait(url: str, timeout: float, container: str | None) -> None:
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        if container and not _running(container):
            sys.exit(f"checks.py: container {container} exited while starting")
        try:
            with urllib.request.urlopen(f"{url}/hc", timeout=3) as response:
                print(f"{url}/hc: {response.status} {response.read().decode()}")
                return
        except urllib.error.HTTPError as exc:
            last = f"{exc.code} {exc.read().decode(errors='replace')}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    sys.exit(f"checks.py: {url}/hc not 200 after {timeout:g} s (last: {last})")


def _running(container: str) -> bool:
    state = subprocess.run(
        ["podman", "container", "inspect", "-f", "{{.State.Running}}", container],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return state.stdout.strip() == "true"


def asr(url: str, clip: str, max_wer: float, sent: Path | None = None) -> None:
    """POST /asr; `sent` (a file) is created once the whole body is sent, before the answer."""
    address = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    connection.request("POST", "/asr", body=(DATA / clip).read_bytes())
    if sent is not None:
        sent.touch()
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        sys.exit(f"checks.py: /asr {response.status}: {body.decode(errors='replace')}")
    _check_words(clip, json.loads(body)["text"], max_wer)


def task(url: str, clip: str, max_wer: float, timeout: float) -> None:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{clip}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + (DATA / clip).read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{url}/api/v1/transcribe", data=body, method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        task_id = json.load(response)["task_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/api/v1/status?task_id={task_id}", timeout=10) as r:
            state = json.load(r)
        if state["status"] == "finished":
            _check_words(clip, state["transcript"], max_wer)
            return
        if state["status"] == "failed":
            sys.exit(f"checks.py: task failed: {state}")
        time.sleep(0.5)
    sys.exit(f"checks.py: task {task_id} not finished after {timeout:g} s: {state}")


def _check_words(clip: str, text: str, max_wer: float) -> None:
    with (DATA / "manifest.tsv").open(newline="") as file:
        rows = csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
        reference = next(row["transcript"] for row in rows if row["file"] == clip)
    error = word_error_rate(reference, text)
    print(f"{clip}: WER {error:.3f}: {text.strip()}")
    if error > max_wer:
        sys.exit(f"checks.py: WER {error:.3f} > {max_wer} (expected: {reference})")


def word_error_rate(reference: str, hypothesis: str) -> float:
    def words(text: str) -> list[str]:
        return re.sub(r"[^\w\s']", " ", text.lower()).replace("'", "").split()

    ref, hyp = words(reference), words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        current = [i]
        for j, other in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (word != other)))  # fmt: skip
        previous = current
    return previous[-1] / max(len(ref), 1)


def cuda_libs() -> None:
    """CTranslate2 opens cuBLAS and cuDNN by name on its first GPU call: asrd loads the pip
    wheels' copies first (no LD_LIBRARY_PATH), so those lookups find them. Checked without a
    GPU: every library is there, nothing they need is missing but the driver's libcuda (which
    the NVIDIA container toolkit mounts), and all that don't need it load and resolve by
    name."""
    import ctypes
    import os

    import ctranslate2

    from asrd.cuda_libraries import LIBRARIES, load_pip_cuda_libraries, pip_library_paths

    assert "LD_LIBRARY_PATH" not in os.environ, os.environ["LD_LIBRARY_PATH"]
    expected = [name for names in LIBRARIES.values() for name in names]
    found = pip_library_paths()
    missing = sorted(set(expected) - {path.name for path in found})
    assert not missing, f"not installed: {missing}"
    needs_driver = set()
    for path in found:
        ldd = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=True)
        unresolved = [line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line]
        assert set(unresolved) <= {"libcuda.so.1"}, f"{path.name} needs {unresolved}"
        if unresolved:
            needs_driver.add(path)
    loaded = load_pip_cuda_libraries()
    not_loaded = set(found) - set(loaded) - needs_driver
    assert not not_loaded, f"not loaded: {sorted(path.name for path in not_loaded)}"
    for path in loaded:
        ctypes.CDLL(path.name)  # by name, as CTranslate2 opens them
    total = sum(path.stat().st_size for path in found) / 1e9
    print(f"CUDA libraries ({total:.2f} GB): {len(loaded)} loaded and found by name: "
          f"{', '.join(path.name for path in loaded)}")  # fmt: skip
    print(
        "loaded once the driver's libcuda.so.1 is there (no GPU here): "
        f"{', '.join(sorted(path.name for path in needs_driver)) or 'none'}"
    )
    print(f"ctranslate2 {ctranslate2.__version__}: "
          f"{ctranslate2.get_cuda_device_count()} CUDA device(s) here")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    wait_p = commands.add_parser("wait")
    wait_p.add_argument("url")
    wait_p.add_argument("--timeout", type=float, default=180)
    wait_p.add_argument("--container")
    for name in ("asr", "task"):
        sub = commands.add_parser(name)
        sub.add_argument("url")
        sub.add_argument("clip")
        sub.add_argument("--max-wer", type=float, default=0.15)
        sub.add_argument("--timeout", type=float, default=180)
        sub.add_argument("--sent", type=Path, help="a file to create once the body is sent")
    commands.add_parser("cuda-libs")
    args = parser.parse_args()
    if args.command == "wait":
        wait(args.url, args.timeout, args.container)
    elif args.command == "asr":
        asr(args.url, args.clip, args.max_wer, args.sent)
    elif args.command == "task":
        task(args.url, args.clip, args.max_wer, args.timeout)
    else:
        cuda_libs()


if __name__ == "__main__":
    main()
