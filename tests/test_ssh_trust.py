"""Issue 14, items 4 and 6, the logic: host keys decided as OpenSSH decides them, one reading of
the SSH config for both stacks, and which remote folders are safe to run programs from.

The same rules against real sshd hosts (a bastion, $HOME, the CLI's exit 2) are in
tests/test_multihost_trust.py.
"""
from __future__ import annotations

import base64
import os
import pwd
import re
import shlex
import subprocess

import paramiko
import pytest

from cluster.hosts import HostSpec
from cluster.known_hosts import (CheckKnownHosts, HostKeyError, KnownHostsLookup, decide, host_matches, keys_for,
                                 record_line)
from cluster.ssh import SSHHost, SSHOptions
from cluster.ssh_resolve import SSHConfigError, account_home, jump_of, resolve_target
from launcher.remote.folder_check import folder_unsafe_reason

KEY_A = paramiko.ECDSAKey.generate()
KEY_B = paramiko.ECDSAKey.generate()


def line(names: str, key: paramiko.PKey, marker: str = "") -> str:
    return f"{marker} {names} {key.get_name()} {key.get_base64()}\n".lstrip()


def test_host_patterns_and_hashed_names_match_as_in_openssh():
    assert host_matches("10.0.0.7", "10.0.0.7") and not host_matches("10.0.0.7", "10.0.0.70")
    assert host_matches("Gpu*.Example.org", "gpu01.example.org")
    assert host_matches("10.0.0.?,other", "10.0.0.5") and not host_matches("10.0.0.?", "10.0.0.51")
    assert not host_matches("10.0.0.*,!10.0.0.9", "10.0.0.9")
    assert host_matches("[10.0.0.7]:2222", "[10.0.0.7]:2222") and not host_matches("[10.0.0.7]:2222", "10.0.0.7")
    hashed = record_line("[gpu01]:2222", KEY_A, hashed=True).split()[0]
    assert hashed.startswith("|1|") and host_matches(hashed, "[gpu01]:2222") and not host_matches(hashed, "gpu01")


def test_a_key_is_known_in_any_file_and_changed_if_any_file_pins_another(tmp_path):
    user, system = tmp_path / "known_hosts", tmp_path / "ssh_known_hosts"
    user.write_text("# comment\n\n" + line("other", KEY_B))
    system.write_text(line("gpu01,gpu02", KEY_A))
    pinned = keys_for("gpu01", [str(user), str(system), str(tmp_path / "missing")])
    assert [(p.path, p.line) for p in pinned] == [(str(system), 1)]
    assert decide(KEY_A.get_name(), KEY_A.asbytes(), pinned)[0] == "known"
    assert decide(KEY_B.get_name(), KEY_B.asbytes(), pinned) == ("changed", pinned[0])
    assert decide(KEY_B.get_name(), KEY_B.asbytes(), keys_for("gpu03", [str(user), str(system)])) == ("new", None)
    user.write_text(line("*", KEY_A, "@revoked"))
    assert decide(KEY_A.get_name(), KEY_A.asbytes(), keys_for("gpu01", [str(user), str(system)]))[0] == "revoked"
    user.write_text(line("*.example.org", KEY_B, "@cert-authority"))
    assert decide(KEY_A.get_name(), KEY_A.asbytes(), keys_for("gpu01.example.org", [str(user)]))[0] == "changed"


def test_accept_new_records_only_a_host_no_file_knows(tmp_path):
    user, system = tmp_path / "ssh" / "known_hosts", tmp_path / "ssh_known_hosts"
    system.write_text(line("gpu01", KEY_A))
    lookup = KnownHostsLookup("gpu01", (str(user),), (str(system),))
    policy = CheckKnownHosts(lookup, accept_new=True)
    with pytest.raises(HostKeyError, match=f"host key changed: .*{system}:1 has ecdsa-sha2-nistp256 SHA256:"):
        policy.missing_host_key(None, "gpu01", KEY_B)
    assert not user.exists()  # nothing recorded for a host pinned in a system file
    policy.missing_host_key(None, "gpu01", KEY_A)
    assert not user.exists()
    hashed = CheckKnownHosts(KnownHostsLookup("[gpu02]:2222", (str(user),), (), hash_new=True), accept_new=True)
    hashed.missing_host_key(None, "gpu02", KEY_B)
    assert oct(os.stat(user.parent).st_mode & 0o777) == "0o700"
    assert keys_for("[gpu02]:2222", [str(user)])[0].blob == KEY_B.asbytes() and "gpu02" not in user.read_text()
    strict = CheckKnownHosts(KnownHostsLookup("gpu03", (str(user),), (str(system),)), accept_new=False)
    with pytest.raises(HostKeyError, match=r"^unknown host key ecdsa-sha2-nistp256 SHA256:\S+: no known-hosts file "
                                           "lists gpu03 .*--accept-new-host-keys"):
        strict.missing_host_key(None, "gpu03", KEY_A)


def write_config(tmp_path, text: str) -> str:
    path = tmp_path / "ssh_config"
    path.write_text(text)
    return str(path)


def test_config_gives_alias_files_and_jump_with_the_accounts_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "not-home"))
    home = pwd.getpwuid(os.getuid()).pw_dir
    config = write_config(tmp_path, "Host gpu01\n  HostName 10.0.0.7\n  Port 2222\n  HostKeyAlias gpu01-key\n"
                                    "  ProxyJump ops@bastion:2200\n"
                                    "Host *\n  UserKnownHostsFile ~/.ssh/k1 \"%d/k 2\" /k/%h-%p\n"
                                    "  GlobalKnownHostsFile /etc/ssh/site_known_hosts\n  HashKnownHosts yes\n")
    target = resolve_target("gpu01", ssh_config=config)
    assert account_home() == home
    assert (target.hostname, target.port, target.known_hosts.name) == ("10.0.0.7", 2222, "gpu01-key")
    assert target.known_hosts.user_files == (f"{home}/.ssh/k1", f"{home}/k 2", "/k/10.0.0.7-2222")
    assert target.known_hosts.global_files == ("/etc/ssh/site_known_hosts",) and target.known_hosts.hash_new
    assert f"not $HOME ({tmp_path / 'not-home'})" in target.known_hosts.note
    jump = jump_of(target)
    assert (jump.name, jump.user, jump.port, jump.known_hosts.name) == ("bastion", "ops", 2200, "[bastion]:2200")
    plain = resolve_target("10.0.0.8", ssh_config=write_config(tmp_path, ""))
    assert plain.known_hosts.user_files == (f"{home}/.ssh/known_hosts", f"{home}/.ssh/known_hosts2")
    assert plain.known_hosts.global_files == ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
    assert jump_of(plain) is None and not plain.known_hosts.hash_new
    looped = resolve_target("a", ssh_config=write_config(tmp_path, "Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n"))
    with pytest.raises(SSHConfigError, match="more than 8 hops"):
        SSHHost(HostSpec("a"), SSHOptions(ssh_config=looped.ssh_config)).openssh_argv()


def test_the_config_is_what_openssh_makes_of_it_with_include_and_match(tmp_path):
    """``ssh -G`` is the authority (issue 25): an Include with a glob and a Match on the resolved address count as
    OpenSSH counts them; identity files and a ProxyCommand get OpenSSH's tokens; a config OpenSSH refuses is refused
    with OpenSSH's words."""
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "gpu.conf").write_text("Host gpu02\n  HostName 10.0.0.9\n  Port 2201\n"
                                                  "  IdentityFile %d/id_%h\n  ProxyCommand nc proxy %h %p\n")
    (tmp_path / "id_10.0.0.9").write_text("not read here")
    config = write_config(tmp_path, f"Include {tmp_path}/conf.d/*.conf\nMatch host 10.0.0.9\n"
                                    "  HostKeyAlias gpu02-key\n  UserKnownHostsFile /k/cluster \"/k/with space\"\n")
    target = resolve_target("gpu02", ssh_config=config)
    assert (target.hostname, target.port, target.known_hosts.name) == ("10.0.0.9", 2201, "gpu02-key")
    assert target.known_hosts.user_files == ("/k/cluster", "/k/with space")
    assert target.proxy_command == "nc proxy 10.0.0.9 2201"
    home = account_home()
    if os.path.realpath(home) == os.path.realpath(tmp_path):  # %d is the account's home: only there is the file
        assert target.identity_files == (str(tmp_path / "id_10.0.0.9"),)
    broken = write_config(tmp_path, "Host a\n  NoSuchOption yes\n")
    with pytest.raises(SSHConfigError, match="(?i)OpenSSH cannot read its configuration for a: .*line 2: "
                                             "bad configuration option: nosuchoption"):
        resolve_target("a", ssh_config=broken)


def openssh_reads(argv: list[str]) -> dict[str, str]:
    """What OpenSSH itself makes of an argv (``ssh -G``: the resolved options; nothing is contacted)."""
    done = subprocess.run(argv[:1] + ["-G"] + argv[1:], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    return dict(text.split(" ", 1) for text in done.stdout.splitlines() if " " in text)


def test_openssh_is_told_the_same_files_alias_and_bastion(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "not-home"))
    config = write_config(tmp_path, "Host gpu01\n  HostName 10.0.0.7\n  HostKeyAlias gpu01-key\n  ProxyJump bastion\n"
                                    "Host *\n  UserKnownHostsFile /k/user%%1 \"/k/with space\"\n"
                                    "  GlobalKnownHostsFile /k/global\n  Include /nonexistent/*.conf\n")
    host = SSHHost(HostSpec("gpu01"), SSHOptions(ssh_config=config, accept_new_host_keys=True))
    seen = openssh_reads(host.openssh_argv())
    assert "HostName=10.0.0.7" in host.openssh_argv()  # given, not left to OpenSSH's own reading of the files
    # OpenSSH never accepts a key itself: preflight's connection recorded any new one (a key of a new type for a
    # pinned host would pass OpenSSH's accept-new)
    assert (seen["hostname"], seen["hostkeyalias"], seen["stricthostkeychecking"]) == ("10.0.0.7", "gpu01-key", "true")
    assert seen["userknownhostsfile"] == "/k/user%1 /k/with space" and seen["globalknownhostsfile"] == "/k/global"
    command = re.sub(r"%(.)", lambda m: {"h": "10.0.0.7", "p": "22", "%": "%"}[m.group(1)], seen["proxycommand"])
    bastion = shlex.split(command)
    assert bastion[-4:] == ["-W", "[10.0.0.7]:22", "--", "bastion"], bastion
    seen_by_bastion = openssh_reads(bastion[:-4] + bastion[-2:])  # the ssh that reaches the bastion, as OpenSSH runs it
    assert (seen_by_bastion["hostname"], seen_by_bastion["stricthostkeychecking"]) == ("bastion", "true")
    assert seen_by_bastion["userknownhostsfile"] == "/k/user%1 /k/with space"
    assert seen_by_bastion["globalknownhostsfile"] == "/k/global" and "proxycommand" not in seen_by_bastion
    direct = openssh_reads(SSHHost(HostSpec("10.0.0.8"), SSHOptions()).openssh_argv())
    home = account_home()
    assert direct["userknownhostsfile"] == f"{home}/.ssh/known_hosts {home}/.ssh/known_hosts2"
    assert "proxycommand" not in direct and "proxyjump" not in direct


def test_safe_folders_are_yours_and_shut_to_others(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    assert folder_unsafe_reason(str(mine)) is None
    assert folder_unsafe_reason(str(mine / "not" / "yet")) is None  # created by mxft inside a folder of yours
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp
    assert folder_unsafe_reason(str(shared)) == f"{shared} is writable by others (mode 1777)"
    assert folder_unsafe_reason(str(shared / "job")) == (
        f"the folder would be created in {shared}, which others can write (mode 1777): another user could "
        "create it first")
    (shared / "job").mkdir(mode=0o700)
    assert folder_unsafe_reason(str(shared / "job")) is None  # yours, in a sticky folder: nobody can replace it
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    (open_dir / "inner").mkdir(mode=0o700)
    assert folder_unsafe_reason(str(open_dir / "inner")) == f"{open_dir} is writable by others (mode 0777)"
    (mine / "link").symlink_to(open_dir)
    assert folder_unsafe_reason(str(mine / "link")) == f"{open_dir} is writable by others (mode 0777)"
    (mine / "file").write_text("")
    assert folder_unsafe_reason(str(mine / "file")) == f"{mine / 'file'} is not a folder"


def test_record_line_is_what_openssh_writes():
    assert record_line("gpu01", KEY_A, hashed=False) == f"gpu01 ecdsa-sha2-nistp256 {KEY_A.get_base64()}\n"
    assert base64.b64decode(KEY_A.get_base64()) == KEY_A.asbytes()
