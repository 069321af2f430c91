#!/bin/bash
# Vendored from the team tool ../shared/tools/autobahn/setup.sh so that a clean clone (CI) can install
# the Autobahn|Testsuite by itself; tests/autobahn.rs and .ci/run call it.
# Installs Autobahn|Testsuite (`wstest`, the WebSocket conformance suite) into DIR without changing the
# system: its code is Python 2.7 only, so Python 2.7 comes from Debian 11's packages (same mirror as this
# machine's apt sources, suite bullseye), unpacked under DIR, with a virtualenv of pinned dependencies.
# Usage: setup.sh DIR   -> DIR/wstest   (about 30 s from scratch; a second run reuses DIR)
set -euo pipefail
D=$(realpath -m "${1:?usage: setup.sh DIR}")
[ -x "$D/wstest" ] && "$D/wstest" -a >/dev/null 2>&1 && { echo "$D/wstest"; exit 0; }
mkdir -p "$D/apt/lists/partial" "$D/apt/cache/archives/partial" "$D/debs"
cd "$D"
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
[ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null)
[ -n "$mirror" ] || { echo "no Debian mirror found in apt sources" >&2; exit 1; }
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bullseye main" > apt/sources.list
A="-o Dir::Etc::sourcelist=$D/apt/sources.list -o Dir::Etc::sourceparts=- -o Dir::State::Lists=$D/apt/lists -o Dir::Cache=$D/apt/cache"
apt-get $A update -qq
(cd debs && apt-get $A download -qq libpython2.7-minimal python2.7-minimal libffi7 libssl1.1 \
  libpython2.7-stdlib libpython2.7 libpython2.7-dev python2.7 python2.7-dev)
for f in debs/*.deb; do dpkg -x "$f" py27; done
export LD_LIBRARY_PATH=$D/py27/usr/lib/x86_64-linux-gnu
export CFLAGS="-I$D/py27/usr/include -I$D/py27/usr/include/python2.7"
python3 -m venv tools && tools/bin/pip install -q --no-cache-dir 'virtualenv<20.22'
tools/bin/virtualenv -q -p "$D/py27/usr/bin/python2.7" venv27
cat > req.txt <<'R'
setuptools==44.0.0
txaio==2.1.0
incremental==16.10.1
pyOpenSSL==19.1.0
cryptography==3.3.2
Twisted==19.10.0
zope.interface==4.6.0
jinja2==2.11.3
markupsafe==1.1.1
Werkzeug==1.0.1
klein==17.10.0
service_identity==18.1.0
unittest2==1.1.0
six==1.16.0
autobahn[accelerate,twisted]==0.10.9
R
venv27/bin/pip install -q --no-cache-dir --no-python-version-warning -r req.txt
venv27/bin/pip install -q --no-cache-dir --no-python-version-warning --no-deps autobahntestsuite==25.10.1
printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$LD_LIBRARY_PATH" "$D/venv27/bin/wstest" > wstest
chmod +x wstest
./wstest -a >/dev/null
echo "$D/wstest"
