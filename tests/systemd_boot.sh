#!/bin/bash
# Follow README "Installing as a service" literally and run the unit under a real systemd,
# on a machine whose PID 1 is not systemd (a container, a CI runner). As root:
#
#     tests/systemd_boot.sh
#
# Everything happens in private namespaces: a mount namespace where /etc, /opt, /usr/local
# and /var are overlays on a scratch tmpfs (useradd, /opt/bouncer, /etc/bouncer and
# /var/lib/bouncer never reach the real disk) and a PID namespace where systemd boots as
# PID 1 into a target that wants nothing. The network is the host's (pip needs the
# package index), so bouncer listens on a free loopback port.
# The script then drives it with systemctl through nsenter, checks the service
# runs as `bouncer`, that the CLI sees the server's store, that a reload and logrotate's
# `mv` + SIGHUP give a new log file, and shuts systemd down. Exit 0: all checks passed.
#
# Needs: unshare/nsenter (util-linux), overlayfs, a writable cgroup hierarchy, systemd
# installed but not running, python3-venv and the package index pip normally uses.
set -euo pipefail

if [ "${1:-}" = "--inside" ]; then
    # PID 1 of the new PID namespace, in the private mount and network namespaces.
    src=$2 scratch=$3 work=$3/fs port=$4
    mount -t tmpfs tmpfs "$work"
    for dir in etc opt usr/local var; do
        name=${dir//\//-}
        mkdir -p "$work/$name-up" "$work/$name-work"
        mount -t overlay overlay -o "lowerdir=/$dir,upperdir=$work/$name-up,workdir=$work/$name-work" "/$dir"
    done
    mount -t tmpfs tmpfs /run
    cp -a "$src" "$work/src"
    # Nothing this systemd does may reach shared paths: /tmp (systemd-tmpfiles empties it
    # at boot: a first version of this script, without this line, did so to the host's
    # /tmp), home directories, the source tree.
    for dir in /tmp /root /home /srv /work; do
        [ -d "$dir" ] && mount -t tmpfs tmpfs "$dir"
    done
    cd "$work/src"
    # The README's commands up to (not including) systemctl, which needs systemd running:
    # apt-get is skipped (python3-venv is installed here), the rest runs as written.
    awk '/^## Installing as a service/{s=1} s&&/^```sh/{b=1;next} b&&/^```/{exit} b' README.md \
        | grep -v -e '^apt-get ' -e '^systemctl ' > "$work/install.sh"
    echo "--- README install commands:"; cat "$work/install.sh"
    bash -ex "$work/install.sh"
    # The one edit an operator makes here: a free port, and a log file to rotate.
    sed -i "s/^listen = \[\"127.0.0.1:2525\"\]/listen = [\"127.0.0.1:$port\"]/" /etc/bouncer/bouncer.toml
    sed -i 's|^file = ""|file = "/var/log/bouncer/mail.log"|' /etc/bouncer/bouncer.toml
    cat > /etc/systemd/system/bouncer-boot.target <<'EOF'
[Unit]
Description=only what the bouncer check needs
EOF
    # A boot that touches nothing the host shares: no tmpfiles, sysctl, modules, clock,
    # udev, binfmt, timers, /dev mounts or /dev/log (/dev is the host's); journald and
    # bouncer's own dependencies stay.
    for unit in $(ls /lib/systemd/system/sysinit.target.wants /etc/systemd/system/sysinit.target.wants \
                     /lib/systemd/system/timers.target.wants /etc/systemd/system/timers.target.wants \
                     /lib/systemd/system/local-fs.target.wants 2>/dev/null | grep -v -e : -e '^$') \
                systemd-udevd.service systemd-udev-trigger.service systemd-hwdb-update.service \
                systemd-remount-fs.service systemd-fsck-root.service ldconfig.service \
                systemd-journal-catalog-update.service systemd-tmpfiles-clean.service \
                systemd-journald-dev-log.socket systemd-journald-audit.socket; do
        case $unit in systemd-journald.service|*.target) continue ;; esac
        ln -sf /dev/null "/etc/systemd/system/$unit"
    done
    exec /lib/systemd/systemd --system --unit=bouncer-boot.target --log-target=console \
        >"$scratch/systemd.out" 2>&1
fi

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
if [ -d /run/systemd/system ]; then
    echo "systemd already runs this machine: install as the README says and use systemctl" >&2
    exit 2
fi
src=$(cd "$(dirname "$0")/.." && pwd)
# Outside every path the namespace covers (/tmp, /var, ...): its output is read from here.
scratch=$(mktemp -d /dev/shm/bouncer-boot.XXXXXX)
mkdir "$scratch/fs"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
unshare --mount --propagation private --pid --fork --mount-proc \
    bash "$0" --inside "$src" "$scratch" "$port" > "$scratch/install.out" 2>&1 &
outer=$!
pid=""
# However the script ends, the namespace's PID 1 goes, and everything in it with it.
cleanup() {
    if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
    kill -9 "$outer" 2>/dev/null || true
    sleep 1
    # The cgroups that systemd made in the (shared) hierarchy, now empty: unit names only.
    find /sys/fs/cgroup/*/ -mindepth 1 -depth -type d 2>/dev/null \
        | grep -E '\.(mount|scope|slice|service|socket|swap)(/|$)' \
        | while read -r dir; do rmdir "$dir" 2>/dev/null || true; done || true
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; status=1; }
status=0
# The systemd process: unshare's child, PID 1 inside.
for _ in $(seq 100); do
    pid=$(pgrep -P "$outer" || true)
    [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = systemd ] && break
    sleep 0.5
done
if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" != systemd ]; then
    echo "systemd did not start; the install and systemd output:" >&2
    cat "$scratch/install.out" "$scratch/systemd.out" >&2 || true
    exit 1
fi
in_ns() { nsenter -t "$pid" -m -p "$@"; }
for _ in $(seq 60); do
    in_ns systemctl is-system-running 2>/dev/null | grep -qE 'running|degraded' && break
    sleep 0.5
done
cat "$scratch/install.out"
echo "--- systemd: $(in_ns systemctl is-system-running || true)"
in_ns systemctl daemon-reload
in_ns systemctl enable --now bouncer || fail "systemctl enable --now bouncer"
in_ns systemctl is-active bouncer || fail "bouncer is not active"
in_ns systemctl status --no-pager bouncer || true
user=$(in_ns ps -o user= -p "$(in_ns systemctl show -p MainPID --value bouncer)" || true)
[ "$user" = bouncer ] || fail "the service runs as '$user', not bouncer"
in_ns bash -c 'cd / && bouncer suppression add dead@example.com --category bad-mailbox --why boot-test' \
    || fail "suppression add"
in_ns bash -c 'cd /tmp && bouncer suppression list' | grep -q dead@example.com \
    || fail "the CLI does not see the record"
in_ns python3 - "$port" <<'EOF' || fail "SMTP to the service"
import smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10) as s:
    s.ehlo("client.example.com")
    code, _ = s.docmd("MAIL FROM:<app@example.com>")
    assert code == 250, code
    code, text = s.docmd("RCPT TO:<dead@example.com>")
    assert code == 550 and b"suppressed" in text, (code, text)
    print("RCPT to the suppressed address:", code, text.decode())
EOF
in_ns mv /var/log/bouncer/mail.log /var/log/bouncer/mail.log.1
in_ns systemctl reload bouncer || fail "systemctl reload"
in_ns python3 -c "import smtplib; smtplib.SMTP('127.0.0.1', $port, timeout=10).quit()"
sleep 1
in_ns grep -q "connect from" /var/log/bouncer/mail.log || fail "no new mail.log after mv + reload"
echo "--- /var/log/bouncer/mail.log.1:"; in_ns cat /var/log/bouncer/mail.log.1
echo "--- /var/log/bouncer/mail.log:"; in_ns cat /var/log/bouncer/mail.log
in_ns journalctl -u bouncer --no-pager 2>/dev/null | tail -5 || true
in_ns systemctl stop bouncer || fail "systemctl stop"
in_ns systemctl show -p ExecMainStatus --value bouncer
cleanup
wait "$outer" 2>/dev/null || true
rm -rf "$scratch"
pid=""
[ "$status" = 0 ] && echo "systemd boot check: ok"
exit "$status"
