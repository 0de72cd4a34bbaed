#!/usr/bin/env bash
# Builds asrd's container images and runs them for real, with podman and no container
# registry (CI runs it from .ci/run, as root):
#   1. deploy/validate.sh: kustomize, compose, workflow, systemd, nginx, Salad files;
#   2. a Debian bookworm + Python base made with mmdebstrap, imported with `podman import`;
#   3. the CPU image with tiny.en baked in, run read-only as a container: /hc 200, the right
#      words from /asr, not root, its HEALTHCHECK passes, no model in the /data volume, no
#      compiler/torch/pip inside, and SIGTERM during a request: the request finishes, exit 0;
#   4. the CUDA image (no model): CUDA 12's cuBLAS and cuDNN 9 load and resolve by name;
#   5. the systemd unit, for real: systemd booted in a (privileged) container of the CPU image,
#      asrd.service serving /asr as a dynamic user, stopping cleanly;
#   6. the scale-out roles (1 Redis, 1 API, 2 workers, a task and a sync request through
#      them), where the image has `asrd worker`; else it says so and skips;
# and prints both image sizes (the CPU image must stay under 1 GB, the CUDA one under 4 GB).
#
# Environment: ASRD_IMAGE_CACHE=DIR keeps the base tarball and podman's layers there between
# runs (default: a temporary folder, removed); ASRD_SKIP_CUDA=1 skips step 4 (local runs).
# Podman here runs with runc and no default ulimits (crun fails on this kind of machine's
# cgroups; setting rlimits is refused): a containers.conf of its own (CONTAINERS_CONF), and
# storage of its own (CONTAINERS_STORAGE_CONF), so nothing of the host's podman is touched.
# Builds reach PyPI with the host's CA certificates, lent to RUN steps only (-v), never baked.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STARTED=$SECONDS
say() { printf '\n== [%ds] %s\n' $((SECONDS - STARTED)) "$*"; }
fail() { printf '\ntest-image.sh: FAILED: %s\n' "$*" >&2; exit 1; }
PASSED=0 SKIPPED=0
ok() { PASSED=$((PASSED + 1)); echo "ok: $*"; }
[ "$(id -u)" -eq 0 ] || fail "run as root (podman, mmdebstrap)"

bash deploy/validate.sh
ok "deployment files valid"

say "podman, mmdebstrap"
bash deploy/apt-install.sh podman mmdebstrap runc ca-certificates || fail "apt-get install"
podman --version

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/asrd-image.XXXXXX")
# podman records its storage's paths at first use: keep them all within the cache.
CACHE=${ASRD_IMAGE_CACHE:-$WORK/cache}
mkdir -p "$CACHE/storage"
# Its own state and file locks too: nothing shared with another podman on this machine.
mkdir -p "$CACHE/storage/tmp"
cat > "$WORK/containers.conf" <<EOF
[containers]
default_ulimits = []
[engine]
runtime = "runc"
tmp_dir = "$CACHE/storage/tmp"
lock_type = "file"
EOF
cat > "$WORK/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$CACHE/storage/graph"
runroot = "$CACHE/storage/run"
EOF
export CONTAINERS_CONF=$WORK/containers.conf CONTAINERS_STORAGE_CONF=$WORK/storage.conf
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$WORK/pip.conf"
REDIS_PID=""
cleanup() {
  set +e
  podman rm -f -t 0 -a > /dev/null 2>&1
  podman volume rm -f asrd-test-data > /dev/null 2>&1
  [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2> /dev/null
  [ -n "${ASRD_IMAGE_CACHE:-}" ] || podman rmi -a -f > /dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
size_of() { podman image inspect -f '{{.Size}}' "$1"; }
human() { python3 -c "print(f'{$1 / 1e9:.2f} GB')"; }
check() { python3 deploy/checks.py "$@"; }
# One-off containers, without the image's HEALTHCHECK (podman would ask systemd for a timer).
once() { podman run --rm --no-healthcheck "$@"; }

say "base image: Debian bookworm + Python, with mmdebstrap"
BASE_TAR=$CACHE/debian-bookworm-python.tar
if [ ! -s "$BASE_TAR" ]; then
  mmdebstrap --quiet --format=tar --variant=minbase --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$BASE_TAR.partial" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  mv "$BASE_TAR.partial" "$BASE_TAR"
fi
BASE=localhost/asrd-base:bookworm
podman import -q --change 'CMD ["/bin/bash"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  "$BASE_TAR" "$BASE" > /dev/null
echo "$BASE: $(human "$(size_of "$BASE")")"

BUILD=(podman build --format docker --network host --pull=never
  -v /etc/ssl/certs:/etc/ssl/certs:ro -v "$WORK/pip.conf:/etc/pip.conf:ro"
  --build-arg "BASE_IMAGE=$BASE")

say "CPU image with tiny.en baked in"
CPU=localhost/asrd:test-tiny.en
"${BUILD[@]}" --build-arg MODEL_ID=tiny.en -t "$CPU" . > "$WORK/build-cpu.log" 2>&1 \
  || { tail -40 "$WORK/build-cpu.log"; fail "podman build (cpu)"; }
CPU_SIZE=$(size_of "$CPU")
echo "$CPU: $(human "$CPU_SIZE")"
[ "$CPU_SIZE" -lt 1000000000 ] || fail "the CPU image with tiny.en is over 1 GB"
ok "CPU image built, under 1 GB"

say "CPU image: nothing to build with inside (no compiler, torch or pip)"
once --network none "$CPU" sh -c \
  '! command -v gcc && ! command -v cc && ! python3 -m pip --version 2>/dev/null &&
   python3 -c "import importlib.util as u, sys; sys.exit(u.find_spec(\"torch\") is not None)"' \
  || fail "build tools in the image"
ok "no compiler, torch or pip in the image"

say "CPU image: run it read-only, /hc, /asr, user, healthcheck, no download"
PORT=$(free_port)
podman volume rm -f asrd-test-data > /dev/null 2>&1 || true
podman volume create asrd-test-data > /dev/null
podman run -d --name asrd-test --network host --read-only -v asrd-test-data:/data \
  -e PORT="$PORT" -e CPU_THREADS=2 -e HF_HUB_OFFLINE=1 "$CPU" > /dev/null
show_log() { podman logs "$1" 2>&1 | tail -40; }
# Whether a container's log has a line (read whole first: `grep -q` on a pipe would end the
# writer early, which pipefail counts as a failure).
log_has() { local log; log=$(podman logs "$1" 2>&1); grep -q -- "$2" <<< "$log"; }
check wait "http://127.0.0.1:$PORT" --timeout 180 --container asrd-test \
  || { show_log asrd-test; fail "/hc"; }
ok "/hc 200"
check asr "http://127.0.0.1:$PORT" en_jfk_inaugural_1961.flac || { show_log asrd-test; fail "/asr"; }
ok "/asr: the words of real speech"
PID=$(podman inspect -f '{{.State.Pid}}' asrd-test)
USER_ID=$(awk '/^Uid:/ {print $2}' "/proc/$PID/status")
echo "the server's user id: $USER_ID"
[ "$USER_ID" != 0 ] || fail "the server runs as root"
ok "not root"
podman healthcheck run asrd-test || fail "healthcheck"
ok "HEALTHCHECK healthy"
log_has asrd-test "loading model tiny.en from /opt/asrd/models/tiny.en" \
  || { show_log asrd-test; fail "the baked model was not used"; }
VOLUME=$(podman volume inspect -f '{{.Mountpoint}}' asrd-test-data)
[ -z "$(find "$VOLUME" -name model.bin)" ] || fail "a model was written into the /data volume"
ok "baked model used from /opt/asrd/models; /data holds no model"

say "CPU image: SIGTERM during a request"
check asr "http://127.0.0.1:$PORT" en_jfk_inaugural_1961.flac --sent "$WORK/sent" \
  > "$WORK/inflight.out" 2>&1 &
REQUEST=$!
for _ in $(seq 100); do [ -e "$WORK/sent" ] && break; sleep 0.1; done
[ -e "$WORK/sent" ] || fail "the request was not sent"
STOP_AT=$SECONDS
podman kill --signal TERM asrd-test > /dev/null
EXIT=$(podman wait asrd-test)
echo "exit status $EXIT, $((SECONDS - STOP_AT)) s after SIGTERM"
wait "$REQUEST" || { cat "$WORK/inflight.out"; show_log asrd-test; fail "the request cut by SIGTERM"; }
cat "$WORK/inflight.out"
[ "$EXIT" = 0 ] || { show_log asrd-test; fail "exit status $EXIT after SIGTERM"; }
# The request was in progress when SIGTERM came: its log line follows the shutdown's.
AFTER_SIGTERM=$(podman logs asrd-test 2>&1 | sed -n '/shutting down/,$p')
grep -q "POST /asr 200" <<< "$AFTER_SIGTERM" \
  || { show_log asrd-test; fail "the request was not in progress at SIGTERM"; }
[ $((SECONDS - STOP_AT)) -le 32 ] || fail "took longer than SHUTDOWN_GRACE_S + 2 to stop"
ok "SIGTERM: the request in progress finished, exit 0"
podman rm -f asrd-test > /dev/null

if [ "${ASRD_SKIP_CUDA:-}" = 1 ]; then
  say "CUDA image: skipped (ASRD_SKIP_CUDA=1)"
  SKIPPED=$((SKIPPED + 1))
else
  say "CUDA image (no model)"
  CUDA=localhost/asrd:test-cuda
  "${BUILD[@]}" --build-arg VARIANT=cuda -t "$CUDA" . > "$WORK/build-cuda.log" 2>&1 \
    || { tail -40 "$WORK/build-cuda.log"; fail "podman build (cuda)"; }
  CUDA_SIZE=$(size_of "$CUDA")
  echo "$CUDA: $(human "$CUDA_SIZE")"
  [ "$CUDA_SIZE" -lt 4000000000 ] || fail "the CUDA image is over 4 GB"
  ok "CUDA image built, under 4 GB"
  once --network none -v "$ROOT/deploy/checks.py:/tmp/checks.py:ro" "$CUDA" \
    python3 /tmp/checks.py cuda-libs || fail "CUDA libraries in the CUDA image"
  ok "CUDA image: cuBLAS and cuDNN load and resolve"
fi

say "systemd: the hardened unit runs asrd (systemd booted in a container)"
# The CPU image's venv is at the unit's path (/opt/asrd/venv); its own user is removed, so
# DynamicUser allocates one. Privileged: systemd builds the unit's sandbox (namespaces,
# seccomp), as on a host.
mkdir -p "$WORK/systemd"
cp deploy/systemd/asrd.service "$WORK/systemd/"
SYSTEMD_PORT=$(free_port)
{ grep -v -e '^#' -e '^$' -e '^PORT=' -e '^MODEL_ID=' deploy/systemd/asrd.env
  printf 'PORT=%s\nMODEL_ID=tiny.en\nBAKED_MODELS_DIR=/opt/asrd/models\nCPU_THREADS=2\n' \
    "$SYSTEMD_PORT"; } > "$WORK/systemd/asrd.env"
cat > "$WORK/systemd/Containerfile" <<EOF
FROM $CPU
USER 0
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \\
      --no-install-recommends systemd systemd-sysv > /dev/null \\
    && rm -rf /var/lib/apt/lists/* && userdel asrd
COPY asrd.service /etc/systemd/system/asrd.service
COPY asrd.env /etc/asrd/asrd.env
RUN systemctl enable asrd.service
STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
EOF
podman build --format docker --network host --pull=never -t localhost/asrd:test-systemd \
  "$WORK/systemd" > "$WORK/build-systemd.log" 2>&1 \
  || { tail -20 "$WORK/build-systemd.log"; fail "podman build (systemd)"; }
podman run -d --name asrd-systemd --network host --privileged --systemd=always \
  --no-healthcheck localhost/asrd:test-systemd > /dev/null
unit_status() { podman exec asrd-systemd systemctl status asrd --no-pager 2>&1 | tail -20; }
check wait "http://127.0.0.1:$SYSTEMD_PORT" --container asrd-systemd \
  || { unit_status; fail "the systemd unit's /hc"; }
check asr "http://127.0.0.1:$SYSTEMD_PORT" en_jfk_inaugural_1961.flac \
  || { unit_status; fail "the systemd unit's /asr"; }
MAIN_PID=$(podman exec asrd-systemd systemctl show -p MainPID --value asrd)
UNIT_UID=$(podman exec asrd-systemd awk '/^Uid:/ {print $2}' "/proc/$MAIN_PID/status")
echo "the unit's user id: $UNIT_UID (dynamic users: 61184-65519)"
{ [ "$UNIT_UID" -ge 61184 ] && [ "$UNIT_UID" -le 65519 ]; } || fail "not a dynamic user"
STOP_AT=$SECONDS
podman exec asrd-systemd systemctl stop asrd
UNIT_END=$(podman exec asrd-systemd systemctl show asrd -p Result -p ExecMainStatus)
echo "$(tr '\n' ' ' <<< "$UNIT_END")after $((SECONDS - STOP_AT)) s"
{ grep -q "Result=success" <<< "$UNIT_END" && grep -q "ExecMainStatus=0" <<< "$UNIT_END"; } \
  || { unit_status; fail "the unit did not stop cleanly"; }
podman rm -f -t 0 asrd-systemd > /dev/null
ok "systemd: the hardened unit serves /asr as a dynamic user and stops cleanly"

say "scale-out: Redis, 1 API, 2 workers, a task through them"
if ! once --network none "$CPU" asrd worker --help > /dev/null 2>&1; then
  echo "skipped: no worker role (\`asrd worker\`) in this asrd"
  SKIPPED=$((SKIPPED + 1))
else
  command -v redis-server > /dev/null || bash deploy/apt-install.sh redis-server \
    || fail "apt-get install redis-server"
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    > "$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  # The containers of compose.scale.yaml, on the host's network (ports of their own).
  QUEUE=(-e QUEUE_BACKEND=redis -e "REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
    -e REDIS_PREFIX=asrd-test -e CPU_THREADS=1 -e HF_HUB_OFFLINE=1)
  API_PORT=$(free_port)
  podman run -d --name asrd-api --network host --read-only -v asrd-test-data:/data \
    -e PORT="$API_PORT" -e SYNC_VIA_WORKERS=1 "${QUEUE[@]}" "$CPU" asrd serve --no-worker \
    > /dev/null
  WORKER_PORTS=()
  for n in 1 2; do
    WORKER_PORTS+=("$(free_port)")
    podman run -d --name "asrd-worker-$n" --network host --read-only -v asrd-test-data:/data \
      -e PORT="${WORKER_PORTS[-1]}" "${QUEUE[@]}" "$CPU" asrd worker > /dev/null
  done
  check wait "http://127.0.0.1:$API_PORT" --container asrd-api || { show_log asrd-api; fail "api /hc"; }
  for n in 1 2; do
    check wait "http://127.0.0.1:${WORKER_PORTS[n-1]}" --container "asrd-worker-$n" \
      || { show_log "asrd-worker-$n"; fail "worker $n /hc"; }
  done
  check task "http://127.0.0.1:$API_PORT" en_jfk_inaugural_1961.flac \
    || { show_log asrd-api; show_log asrd-worker-1; show_log asrd-worker-2; fail "a task"; }
  ok "a task through the API replica, Redis and a worker"
  # A sync request on the API replica: run by a worker (SYNC_VIA_WORKERS=1, where asrd has it).
  check asr "http://127.0.0.1:$API_PORT" en_jfk_inaugural_1961.flac \
    || { show_log asrd-api; show_log asrd-worker-1; show_log asrd-worker-2; fail "/asr on the API"; }
  ok "/asr on the API replica"
  SETTINGS=$(once --network none "$CPU" asrd env-table)
  if grep -q SYNC_VIA_WORKERS <<< "$SETTINGS"; then
    ! log_has asrd-api "loading model" || fail "the API replica loaded a model"
    ok "the API replica loaded no model: the workers ran both"
  fi
  METRICS=$(python3 -c "import urllib.request as r
print(r.urlopen('http://127.0.0.1:${WORKER_PORTS[0]}/metrics').read().decode())")
  grep -q '^asrd_queue_depth' <<< "$METRICS" || fail "no asrd_queue_depth in a worker's /metrics"
  ok "asrd_queue_depth in a worker's /metrics"
  for name in asrd-api asrd-worker-1 asrd-worker-2; do
    podman stop -t 35 "$name" > /dev/null
    [ "$(podman inspect -f '{{.State.ExitCode}}' "$name")" = 0 ] || fail "$name: exit status"
  done
  ok "scale-out: the API and both workers stopped cleanly on SIGTERM"
fi

say "done"
echo "CPU image with tiny.en: $(human "$CPU_SIZE")"
[ "${ASRD_SKIP_CUDA:-}" = 1 ] || echo "CUDA image, no model: $(human "$CUDA_SIZE")"
echo "test-image.sh: all checks passed in $((SECONDS - STARTED)) s"
SKIPS=""
[ "$SKIPPED" -eq 0 ] || SKIPS=", $SKIPPED skipped"
echo "images: $PASSED passed, 0 failed$SKIPS"
