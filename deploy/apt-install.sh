#!/usr/bin/env bash
# apt-get install the Debian packages given that are missing, as root, without starting any
# service they ship (nginx or redis-server would take their ports): used by validate.sh and
# test-image.sh on CI's fresh machine.
set -euo pipefail
missing=()
for package in "$@"; do
  dpkg -s "$package" > /dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "apt-install.sh: needs root to install ${missing[*]}" >&2
  exit 1
fi
apt-get update -qq
guard=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  guard=1
fi
status=0
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" \
  || status=$?
[ -z "$guard" ] || rm -f /usr/sbin/policy-rc.d
exit $status
