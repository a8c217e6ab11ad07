#!/usr/bin/env bash
# Installs Disco as a systemd service on this machine (run as root):
#   discod, discoctl            -> $PREFIX/bin (default /usr/local/bin)
#   Config/discod.service       -> /etc/systemd/system/discod.service
#   Config/discod.toml          -> /etc/disco/discod.toml (an existing one is kept; the new one
#                                  goes beside it as discod.toml.new)
#   Zones/ (examples)           -> not installed; /etc/disco/zones is made empty
#   README.md, the Grafana dashboard -> /usr/share/doc/disco/
# then checks the installed configuration (discod --check-config) and reloads systemd.
#
# Usage: scripts/install.sh [--skip-build]
# Environment: PREFIX (/usr/local), DESTDIR (a staging root, for packages and tests: nothing
# outside it is touched and systemd is not reloaded), CONFIGURATION (release; debug to install
# a debug build), SKIP_BUILD=1 (use what .build holds).
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
CONFIGURATION=${CONFIGURATION:-release}
SKIP_BUILD=${SKIP_BUILD:-0}
[[ "${1:-}" == "--skip-build" ]] && SKIP_BUILD=1

if [[ "$SKIP_BUILD" != 1 ]]; then
  swift build -c "$CONFIGURATION" --product discod
  swift build -c "$CONFIGURATION" --product discoctl
fi
bin=".build/$CONFIGURATION"
for tool in discod discoctl; do
  [[ -x "$bin/$tool" ]] || { echo "install.sh: $bin/$tool is missing (build it, or drop SKIP_BUILD)" >&2; exit 1; }
done

install -d -m 0755 "$DESTDIR$PREFIX/bin" "$DESTDIR/etc/systemd/system" "$DESTDIR/etc/disco" "$DESTDIR/etc/disco/zones" \
  "$DESTDIR/usr/share/doc/disco"
install -m 0755 "$bin/discod" "$bin/discoctl" "$DESTDIR$PREFIX/bin/"
# The unit names /usr/local/bin/discod; another PREFIX is written into the installed copy.
sed "s|/usr/local/bin/discod|$PREFIX/bin/discod|" Config/discod.service > "$DESTDIR/etc/systemd/system/discod.service"
chmod 0644 "$DESTDIR/etc/systemd/system/discod.service"
if [[ -f "$DESTDIR/etc/disco/discod.toml" ]]; then
  install -m 0644 Config/discod.toml "$DESTDIR/etc/disco/discod.toml.new"
  echo "install.sh: kept /etc/disco/discod.toml; the shipped one is beside it as discod.toml.new"
else
  install -m 0644 Config/discod.toml "$DESTDIR/etc/disco/discod.toml"
fi
install -m 0644 README.md Config/grafana-dashboard.json "$DESTDIR/usr/share/doc/disco/"
# The socket unit is installed but not enabled: `systemctl enable --now discod.socket` opts in.
install -m 0644 Config/discod.socket "$DESTDIR/etc/systemd/system/discod.socket"

# The installed configuration as discod will read it (zones resolved inside DESTDIR).
DISCO_ZONES_DIRECTORY="$DESTDIR/etc/disco/zones" "$DESTDIR$PREFIX/bin/discod" --check-config "$DESTDIR/etc/disco/discod.toml"

if [[ -z "$DESTDIR" ]] && command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
  systemctl daemon-reload
fi
cat <<NEXT
install.sh: installed. Next:
  edit /etc/disco/discod.toml: raft.id, raft.servers, a secret raft.cluster_token, and [tls]
    (discoctl tls ca create; discoctl tls cert create --server --ip ADDRESS) or *.allow_insecure
  put zone files in /etc/disco/zones (NAME.zone), then: systemctl enable --now discod
  discoctl acl bootstrap   (ACLs are on in the shipped configuration)
NEXT
