"""The deployment files agree with asrd and with each other: grace periods cover
SHUTDOWN_GRACE_S, every runner is non-root with a read-only root and probes /hc the same way,
every variable they set is one asrd reads, the documented image tags are the ones the workflow
pushes. (deploy/validate.sh checks them against their schemas and tools, deploy/test-image.sh
builds and runs the image; both from .ci/run.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from asrd.config import Settings

ROOT = Path(__file__).parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
GRACE_S = Settings.model_fields["shutdown_grace_s"].default
# Read by huggingface_hub and Python; and the scale-out roles' settings, until asrd has them.
OTHER_VARIABLES = {"HOME", "HF_HOME"}
SCALE_OUT = {"QUEUE_BACKEND", "REDIS_URL", "REDIS_PREFIX", "ROLE", "SYNC_VIA_WORKERS"}
IMAGE_UID = 10001


def _compose(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def _asrd_services() -> list[tuple[str, dict]]:
    services = []
    for name in ("compose.yaml", "compose.scale.yaml"):
        for service, spec in _compose(name)["services"].items():
            if "asrd" in spec.get("image", ""):
                services.append((f"{name}:{service}", spec))
    return services


def _k8s_objects() -> list[dict]:
    objects = []
    for path in sorted((ROOT / "deploy" / "k8s").rglob("*.yaml")):
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return objects


def _asrd_pod_specs() -> list[tuple[str, dict]]:
    specs = []
    for obj in _k8s_objects():
        template = obj.get("spec", {}).get("template", {})
        if obj.get("kind") != "Deployment" or "metadata" not in template:
            continue  # not a Deployment, or a patch of one
        if template["metadata"]["labels"].get("app.kubernetes.io/name") == "asrd":
            specs.append((obj["metadata"]["name"], template["spec"]))
    assert len(specs) == 2  # the server (or API) and the worker
    return specs


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", value)
    assert match and value, value
    return int(match[1] or 0) * 60 + int(match[2] or 0)


def _dockerfile_healthcheck() -> list[str]:
    line = DOCKERFILE.split("HEALTHCHECK", 1)[1].split("CMD", 1)[1].splitlines()[0]
    return json.loads(line)


def test_every_stop_waits_for_the_shutdown_grace() -> None:
    needed = GRACE_S + 2  # asrd exits within SHUTDOWN_GRACE_S + 2 s
    unit = (ROOT / "deploy" / "systemd" / "asrd.service").read_text()
    assert float(re.search(r"^TimeoutStopSec=(\d+)", unit, re.M)[1]) >= needed
    for name, spec in _asrd_services():
        assert _seconds(spec["stop_grace_period"]) >= needed, name
    for name, pod in _asrd_pod_specs():
        pause = 0
        for container in pod["containers"]:
            command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
            if command.get("command", [""])[0] == "sleep":
                pause = float(command["command"][1])
        assert pod["terminationGracePeriodSeconds"] >= needed + pause, name


def test_never_root_and_read_only_where_it_runs() -> None:
    assert f"USER {IMAGE_UID}:{IMAGE_UID}" in DOCKERFILE
    for name, spec in _asrd_services():
        assert spec["read_only"] is True and spec["cap_drop"] == ["ALL"], name
    for name, pod in _asrd_pod_specs():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == IMAGE_UID, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
    unit = (ROOT / "deploy" / "systemd" / "asrd.service").read_text()
    for line in ("DynamicUser=yes", "ProtectSystem=strict", "StateDirectory=asrd"):
        assert f"\n{line}\n" in unit, line


def test_health_is_checked_on_hc_the_same_way_everywhere() -> None:
    command = _dockerfile_healthcheck()
    assert "/hc" in command[-1]
    for name, spec in _asrd_services():
        assert spec["healthcheck"]["test"] == ["CMD", *command], name
    for name, pod in _asrd_pod_specs():
        container = pod["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/hc", (name, probe)
        # A start-up download of a large model gets ten minutes at least.
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, name
    salad = json.loads((ROOT / "deploy" / "salad" / "container-group.json").read_text())
    for probe in ("startup_probe", "readiness_probe"):
        assert salad[probe]["http"]["path"] == "/hc"
        assert salad[probe]["http"]["port"] == salad["networking"]["port"]


def test_the_image_keeps_its_model_outside_the_volume() -> None:
    env = dict(re.findall(r"\b([A-Z_]+)=(\S+?)(?:\s|$)", DOCKERFILE.split("\nENV PATH=", 1)[1]))
    assert f"VOLUME {env['CACHE_DIR']}" in DOCKERFILE
    assert env["BAKED_MODELS_DIR"] == "/opt/asrd/models"
    assert not env["BAKED_MODELS_DIR"].startswith(env["CACHE_DIR"])
    assert f"asrd download --into {env['BAKED_MODELS_DIR']}" in DOCKERFILE


def _variables() -> list[tuple[str, str]]:
    found = []
    for name, spec in _asrd_services():
        found += [(name, key) for key in spec.get("environment", {})]
    scale = _compose("compose.scale.yaml")
    found += [("compose.scale.yaml", key) for key in scale["x-queue"]]
    for obj in _k8s_objects():
        for generator in obj.get("configMapGenerator", []):
            found += [("kustomize", item.split("=")[0]) for item in generator["literals"]]
    env_file = (ROOT / "deploy" / "systemd" / "asrd.env").read_text()
    found += [("asrd.env", key) for key in re.findall(r"^#? ?([A-Z_]+)=", env_file, re.M)]
    unit = (ROOT / "deploy" / "systemd" / "asrd.service").read_text()
    found += [("asrd.service", key) for key in re.findall(r"\b([A-Z_]+)=/", unit)]
    salad = json.loads((ROOT / "deploy" / "salad" / "container-group.json").read_text())
    found += [("salad", key) for key in salad["container"]["environment_variables"]]
    return found


@pytest.mark.parametrize(("where", "variable"), _variables())
def test_every_variable_set_is_one_asrd_reads(where: str, variable: str) -> None:
    known = {name.upper() for name in Settings.model_fields} | OTHER_VARIABLES
    if "QUEUE_BACKEND" not in known:
        known |= SCALE_OUT
    assert variable in known, f"{where}: {variable} is not an asrd setting"


def test_documented_image_tags_are_the_ones_pushed() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "images.yml").read_text())
    matrix = workflow["jobs"]["image"]["strategy"]["matrix"]["include"]
    docs = (ROOT / "docs" / "deployment.md").read_text()
    for entry in matrix:
        tag = "latest" + ("-cuda" if entry["variant"] == "cuda" else "")
        tag += f"-{entry['model']}" if entry["model"] else ""
        assert f"`asrd:{tag}`" in docs, tag
