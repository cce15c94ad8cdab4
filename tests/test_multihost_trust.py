"""Issue 14, items 4 and 6, on real sshd hosts (network namespaces): host keys pinned in a system
file, under a HostKeyAlias or for a ProxyJump bastion are checked the same way by both SSH
stacks (paramiko for preflight and processes, OpenSSH for staging); $HOME changes neither; and a
remote folder another user could write to is refused before anything is written there."""
from __future__ import annotations

import os
import sys

import pytest

from cluster.hosts import HostSpec
from cluster.ssh import HostKeyError, SSHHost, SSHOptions
from tests.helpers import run_launch

pytestmark = pytest.mark.integration


def host_key(cluster, index: int) -> str:
    """``TYPE BASE64`` of host h<index+1>'s real key."""
    return open(cluster.known_hosts).read().splitlines()[index].split(" ", 1)[1]


def trust_config(cluster, tmp_path, *, user_known: str = "", global_known: str | None = None,
                 before: str = "") -> tuple[str, str]:
    """An SSH config for the namespace hosts with its own known-hosts files; ``before`` comes first
    (its settings win). Returns (config path, user known-hosts path)."""
    user_file = tmp_path / "known_hosts"
    user_file.write_text(user_known)
    text = open(cluster.ssh_config).read().replace(cluster.known_hosts, str(user_file))
    if global_known is not None:
        (tmp_path / "ssh_known_hosts").write_text(global_known)
        text = text.replace("  StrictHostKeyChecking yes\n",
                            f"  StrictHostKeyChecking yes\n  GlobalKnownHostsFile {tmp_path / 'ssh_known_hosts'}\n")
    config = tmp_path / "ssh_config"
    config.write_text(before + text)
    return str(config), str(user_file)


def both_stacks(address: str, config: str, *, accept_new: bool = False) -> tuple[str, tuple[int, str]]:
    """Connect with paramiko (as preflight does) and with OpenSSH (as staging does) and report each outcome:
    paramiko's first output line or its error, OpenSSH's exit code and output."""
    host = SSHHost(HostSpec(address), SSHOptions(ssh_config=config, accept_new_host_keys=accept_new,
                                                 connect_timeout_s=5))
    try:
        code, out, err = host.run(["sh", "-c", "echo ${SSH_CLIENT%% *}"], timeout_s=20)
        paramiko_said = out.strip() if code == 0 else f"exit {code}: {err}"
    except HostKeyError as err:
        paramiko_said = f"HostKeyError: {err}"
    proc = host.stream_from("echo ${SSH_CLIENT%% *}")
    out, err = proc.communicate(timeout=30)
    return paramiko_said, (proc.returncode, (out + err).decode(errors="replace").strip())


def test_a_changed_key_pinned_only_in_a_system_file_is_refused_with_accept_new(hosts3, tmp_path):
    h1, h2 = hosts3.hosts[0], hosts3.hosts[1]
    config, user_file = trust_config(hosts3, tmp_path, global_known=f"{h2.address} {host_key(hosts3, 0)}\n")
    (tmp_path / "work").mkdir()
    hosts = tmp_path / "hosts.txt"
    hosts.write_text(f"{h2.address} python={sys.executable}\n")
    done = run_launch(["--hosts", str(hosts), "--ssh-config", config, "--remote-dir", "/srv/mxft-host",
                       "--accept-new-host-keys", "--run-root", str(tmp_path / "runs"), "-n", "1", "-s", "1",
                       "--", "python", "prog.py"], cwd=str(tmp_path / "work"), timeout_s=60)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"mxft-launch: error: host {h2.address}: host key changed: it offers ssh-ed25519 "
                               "SHA256:"), lines[0]
    assert f"{tmp_path / 'ssh_known_hosts'}:1 has ssh-ed25519 SHA256:" in lines[0]
    assert open(user_file).read() == "" and not (tmp_path / "runs").exists()
    paramiko_said, (code, openssh_said) = both_stacks(h2.address, config, accept_new=True)
    assert paramiko_said.startswith("HostKeyError: host key changed") and code == 255, (paramiko_said, openssh_said)
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in openssh_said and open(user_file).read() == ""

    # The right key, pinned only in the system file, is trusted by both without anything recorded.
    config, user_file = trust_config(hosts3, tmp_path, global_known=f"{h2.address} {host_key(hosts3, 1)}\n")
    assert both_stacks(h2.address, config) == ("10.231.77.1", (0, "10.231.77.1"))
    assert open(user_file).read() == "" and h1.address != h2.address


def test_a_host_key_alias_is_where_both_stacks_look(hosts3, tmp_path):
    h3 = hosts3.hosts[2]
    alias = f"Host {h3.address}\n  HostKeyAlias h3-key\n"
    config, _ = trust_config(hosts3, tmp_path, user_known=f"h3-key {host_key(hosts3, 2)}\n", before=alias)
    assert both_stacks(h3.address, config) == ("10.231.77.1", (0, "10.231.77.1"))
    # Under the alias, a right key for the address does not count: the alias's (wrong) key does.
    config, _ = trust_config(hosts3, tmp_path, before=alias,
                             user_known=f"h3-key {host_key(hosts3, 0)}\n{h3.address} {host_key(hosts3, 2)}\n")
    paramiko_said, (code, openssh_said) = both_stacks(h3.address, config, accept_new=True)
    assert paramiko_said.startswith("HostKeyError: host key changed") and "for h3-key" in paramiko_said, paramiko_said
    assert code == 255 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in openssh_said, openssh_said


def test_a_bastions_key_is_checked_like_any_hosts(hosts3, tmp_path):
    h1, h2 = hosts3.hosts[0], hosts3.hosts[1]
    jump = f"Host {h2.address}\n  ProxyJump {h1.address}\n"
    config, user_file = trust_config(hosts3, tmp_path, user_known=f"{h2.address} {host_key(hosts3, 1)}\n",
                                     before=jump)
    paramiko_said, (code, openssh_said) = both_stacks(h2.address, config)
    assert paramiko_said.startswith(f"HostKeyError: ProxyJump host {h1.address}: unknown host key ssh-ed25519 "), \
        paramiko_said
    assert code == 255 and "Host key verification failed" in openssh_said, openssh_said

    wrong = f"{h2.address} {host_key(hosts3, 1)}\n{h1.address} {host_key(hosts3, 2)}\n"
    config, user_file = trust_config(hosts3, tmp_path, user_known=wrong, before=jump)
    paramiko_said, (code, openssh_said) = both_stacks(h2.address, config, accept_new=True)
    assert paramiko_said.startswith(f"HostKeyError: ProxyJump host {h1.address}: host key changed"), paramiko_said
    assert code == 255 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in openssh_said, openssh_said
    assert open(user_file).read() == wrong

    # Known keys for both: both stacks reach h2 through h1 (h2 sees the connection come from h1).
    config, _ = trust_config(hosts3, tmp_path, before=jump,
                             user_known=f"{h2.address} {host_key(hosts3, 1)}\n{h1.address} {host_key(hosts3, 0)}\n")
    assert both_stacks(h2.address, config) == (h1.address, (0, h1.address))


def test_home_that_is_not_the_accounts_changes_neither_stack(hosts3, tmp_path, monkeypatch):
    """$HOME/.ssh/known_hosts pins a wrong key for h2: neither stack reads it (OpenSSH never does)."""
    h2 = hosts3.hosts[1]
    fake_home = tmp_path / "home"
    (fake_home / ".ssh").mkdir(parents=True)
    (fake_home / ".ssh" / "known_hosts").write_text(f"{h2.address} {host_key(hosts3, 0)}\n")
    monkeypatch.setenv("HOME", str(fake_home))
    config, _ = trust_config(hosts3, tmp_path, user_known=f"{h2.address} {host_key(hosts3, 1)}\n")
    assert both_stacks(h2.address, config) == ("10.231.77.1", (0, "10.231.77.1"))
    # Without a known key, the message says which home the files were read from.
    config, _ = trust_config(hosts3, tmp_path, user_known="")
    paramiko_said, (code, _) = both_stacks(h2.address, config)
    assert paramiko_said.startswith("HostKeyError: unknown host key") and code == 255, paramiko_said
    assert f"not $HOME ({fake_home})" in paramiko_said


def command_launch(cluster, tmp_path, *extra: str):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text(f"{cluster.hosts[0].address} python={sys.executable}\n")
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "prog.py").write_text("print('ran')\n")
    return run_launch(["--hosts", str(hosts), "--ssh-config", cluster.ssh_config, "--run-root",
                       str(tmp_path / "runs"), "-n", "1", "-s", "1", *extra, "--", "python", "prog.py"],
                      cwd=str(work), timeout_s=60)


def test_a_sync_folder_another_user_owns_or_can_write_is_refused(hosts3, tmp_path):
    h1 = hosts3.hosts[0]
    theirs = tmp_path / "job"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)  # created first by another user (nobody)
    before = sorted(os.listdir(h1.work_dir))
    done = command_launch(hosts3, tmp_path, "--remote-dir", "/srv/mxft-host", "--sync-dst-dir", str(theirs))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (
        f"mxft-launch: error: host {h1.address}: unsafe folder {theirs}: {theirs} is owned by nobody (uid 65534), "
        "not by you (root) or root; another user could plant programs there that run as you (choose a --sync-dir "
        "of your own, e.g. under your home directory)")
    assert os.listdir(theirs) == [] and sorted(os.listdir(h1.work_dir)) == before
    assert not (tmp_path / "runs").exists()

    shared = os.path.join(h1.work_dir, "shared")  # /srv/mxft-host/shared on h1, open to everyone
    os.mkdir(shared)
    os.chmod(shared, 0o1777)
    done = command_launch(hosts3, tmp_path, "--remote-dir", "/srv/mxft-host/shared/mxft")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(
        f"mxft-launch: error: host {h1.address}: unsafe folder /srv/mxft-host/shared/mxft: the folder would be "
        "created in /srv/mxft-host/shared, which others can write (mode 1777): another user could create it first"), \
        done.stderr
    assert "(choose a --remote-dir of your own" in done.stderr and os.listdir(shared) == []

    # Folders of this user (root here) pass: the plan is made, nothing runs (--dry-run --probe).
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    done = command_launch(hosts3, tmp_path, "--remote-dir", "/srv/mxft-host", "--sync-dst-dir", str(mine),
                          "--dry-run", "--probe")
    assert done.returncode == 0, done.stdout + done.stderr
    os.rmdir(shared)
