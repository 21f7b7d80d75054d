#!/bin/sh
# The SFTP account that holds one VPS's off-site copies, on a server the operator owns; run as root
# there by `fab -H SERVER backup.offsite.account` (tasks/offsite.py). Idempotent: a second run
# changes nothing. Arguments: the account, the repository directory, the VPS's public key (the
# line `backup.offsite.init` prints).
#
# The account can do SFTP and nothing else (ForceCommand internal-sftp in a Match block of its
# own: no shell, no forwarding, no TTY; its key line carries `restrict` too), and owns only the
# restic repository DIR and pgBackRest's DIR-pgbackrest (mode 0700). Not append-only: restic and
# pgBackRest delete and rename files there (locks, WAL pushes), so the VPS's key can delete its
# copies; docs/operations.md says which layouts protect them from a compromised VPS.
#
# Prints `CHANGED what` for each change, then `FINGERPRINT SHA256:...` (the server's ed25519 host
# key: the VPS's OFFSITE_HOST_KEY). Exit 4: sshd refused the new configuration (it was removed
# again, sshd untouched); 5: sshd does not apply it to the account.
set -eu
account=$1 dir=$2 key=$3

if ! id -u "$account" >/dev/null 2>&1; then
  useradd --system --create-home --home-dir "/var/lib/$account" --shell /usr/sbin/nologin \
    "$account"
  echo "CHANGED account $account (system user, no shell)"
fi
home=$(getent passwd "$account" | cut -d: -f6)
group=$(id -gn "$account")

for d in "$dir" "$dir-pgbackrest"; do
  if [ ! -d "$d" ]; then
    mkdir -p "$d"
    echo "CHANGED directory $d"
  fi
  chown "$account:$group" "$d"
  chmod 700 "$d"
done

install -d -m 700 -o "$account" -g "$group" "$home/.ssh"
keys=$home/.ssh/authorized_keys
[ -f "$keys" ] || install -m 600 -o "$account" -g "$group" /dev/null "$keys"
if ! grep -qxF "restrict $key" "$keys"; then
  printf 'restrict %s\n' "$key" >>"$keys"
  echo "CHANGED key $(printf '%s' "$key" | cut -d' ' -f3-) authorized"
fi

conf=/etc/ssh/sshd_config.d/tasktracker-offsite-$account.conf
wanted="# Written by \`fab backup.offsite.account\`: $account does SFTP and nothing else.
Match User $account
    ForceCommand internal-sftp
    PasswordAuthentication no
    AllowTcpForwarding no
    AllowAgentForwarding no
    X11Forwarding no
    PermitTTY no
    PermitTunnel no"
if [ "$(cat "$conf" 2>/dev/null)" != "$wanted" ]; then
  mkdir -p /etc/ssh/sshd_config.d
  printf '%s\n' "$wanted" >"$conf"
  if ! sshd -t 2>/tmp/offsite-account-sshd.$$; then
    rm -f "$conf"
    echo "sshd refused the account's configuration: $(cat /tmp/offsite-account-sshd.$$)" >&2
    rm -f /tmp/offsite-account-sshd.$$
    exit 4
  fi
  rm -f /tmp/offsite-account-sshd.$$
  systemctl reload ssh 2>/dev/null || systemctl reload sshd
  echo "CHANGED sshd: $account is SFTP only ($conf)"
fi
if ! sshd -T -C "user=$account,host=tasktracker-check,addr=192.0.2.1" \
    | grep -qx 'forcecommand internal-sftp'; then
  echo "sshd does not apply $conf to $account: is /etc/ssh/sshd_config.d/*.conf included?" >&2
  exit 5
fi
echo "FINGERPRINT $(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2)"
