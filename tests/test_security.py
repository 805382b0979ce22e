"""What a local user or the postfix uid can try against the host through
the daemon's own files and sockets, each test the attack itself
(docs/SECURITY.md): a symbolic link put where the daemon makes its socket,
links planted in mail_owner's directories for root's supplementary groups
to open, and damaged copies of files that hold secrets."""

import os
import pwd
import socket
import stat

from conftest import require
from helpers.harness import postfix_dirs, start_ours, wait_for

from tlsmgr.admin.client import TlsmgrClient
from tlsmgr.runtime import server
from tlsmgr.service.keyfile import NAME as KEY_FILE
from tlsmgr.util import log

PRECIOUS = b"root's own, not postfix's\n"


def as_root():
    require(os.geteuid() == 0, "root, which starts the daemon and gives files to mail_owner "
                               "(run the tests as root)")
    return pwd.getpwnam("postfix")


def victim(path):
    """A file of root's that group 0 may write (root:root 0660)."""
    path.write_bytes(PRECIOUS)
    os.chown(path, 0, 0)
    path.chmod(0o660)
    return path


def untouched(path) -> bool:
    info = path.lstat()
    return (path.read_bytes(), info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == \
        (PRECIOUS, 0, 0, 0o660)


def test_the_stand_alone_socket_is_made_as_mail_owner_and_never_chowned(tmp_path, monkeypatch):
    postfix = as_root()
    # The socket's directory is mail_owner's, as Postfix's private/ is.
    private = tmp_path / "private"
    private.mkdir()
    os.chown(private, postfix.pw_uid, postfix.pw_gid)
    for parent in [tmp_path, *tmp_path.parents]:
        if parent.stat().st_uid == 0:
            parent.chmod(parent.stat().st_mode | 0o011)
    target = victim(tmp_path / "victim")
    path = private / "tlsmgr"
    bind = socket.socket.bind
    groups = os.getgroups()

    def bind_then_lose_the_race(sock, address):
        # The postfix user's inotify watcher, made deterministic: the moment
        # the socket exists, it becomes a link to a file of root's.
        bind(sock, address)
        os.rename(address, str(private / "moved"))
        os.symlink(target, address)

    monkeypatch.setattr(socket.socket, "bind", bind_then_lose_the_race)
    listener = server.listen_unix(str(path), (postfix.pw_uid, postfix.pw_gid))
    listener.close()
    monkeypatch.undo()
    assert untouched(target)
    made = (private / "moved").stat()
    assert (made.st_uid, made.st_gid, stat.S_IMODE(made.st_mode)) == \
        (postfix.pw_uid, postfix.pw_gid, 0o600)
    # Root is root again, with its own groups.
    assert (os.geteuid(), os.getegid(), os.getgroups()) == (0, 0, groups)


def test_a_directory_mail_owner_cannot_write_is_one_fatal_line(tmp_path, capsys):
    postfix = as_root()
    log.setup_stderr("tlsmgr")
    try:
        server.listen_unix(str(tmp_path / "tlsmgr"), (postfix.pw_uid, postfix.pw_gid))
    except log.Fatal as fatal:
        assert fatal.text == "bind %s: Permission denied (the socket is made as mail_owner: " \
            "its directory must be writable by mail_owner)" % (tmp_path / "tlsmgr")
    else:
        raise AssertionError("bound where mail_owner may not write")
    assert not (tmp_path / "tlsmgr").exists()


def started_with_root_groups(tmp_path, **params):
    """The daemon started as master(8) runs on Debian: root, with group 0
    among its supplementary groups; it makes its files as mail_owner."""
    return start_ours(tmp_path, mail_owner="postfix", wait=False, extra_groups=[0], **params)


def test_links_planted_by_mail_owner_reach_nothing_through_roots_groups(tmp_path):
    as_root()
    dirs = postfix_dirs(tmp_path)
    data = dirs["data_directory"]
    exchange = victim(tmp_path / "exchange-victim")
    os.symlink(exchange, data / "prng_exch")
    daemon = started_with_root_groups(tmp_path, **dirs, smtpd_tls_session_cache_database="")
    wait_for(lambda: daemon.process.poll() is not None or daemon.connectable(),
             what="tlsmgr to exit or listen")
    assert untouched(exchange)
    assert "fatal: cannot open PRNG exchange file %s: Permission denied" % (data / "prng_exch") \
        in daemon.log

    # The cache kept across restarts: its lock file is opened where it is.
    os.unlink(data / "prng_exch")
    lock = victim(tmp_path / "lock-victim")
    os.symlink(lock, data / "smtpd_scache.lmdb-lock")
    daemon = started_with_root_groups(
        tmp_path, **dirs, tlsmgr_preserve_sessions="yes",
        smtpd_tls_session_cache_database="lmdb:%s/smtpd_scache" % data)
    # The lock file mail_owner may not open is taken for a damaged file,
    # and made anew in its place.
    wait_for(daemon.connectable, what="tlsmgr to listen")
    assert untouched(lock)
    assert "Permission denied): removed, starting anew" in daemon.log
    assert not (data / "smtpd_scache.lmdb-lock").is_symlink()


def damaged_copies(directory):
    return sorted(p.name for p in directory.iterdir() if ".damaged-" in p.name)


def test_no_damaged_copy_of_a_secret_outlives_a_restart(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    cache = "lmdb:%s/smtpd_scache" % data
    # What an earlier version set aside and never removed: a cache file and
    # a key file, each a copy of secrets.
    for name in ("smtpd_scache.lmdb.damaged-20261201-101010",
                 KEY_FILE + ".damaged-20261201-101010"):
        (data / name).write_bytes(b"master secrets and ticket keys")
    for preserve in ("no", "yes"):
        # And damaged files of this run: the key file altered, the cache
        # file garbage.
        (data / KEY_FILE).write_bytes(b"tlsmgrK1" + bytes(41))
        (data / "smtpd_scache.lmdb").write_bytes(b"not an LMDB file" * 512)
        daemon = start_ours(tmp_path, data_directory=data, tlsmgr_preserve_sessions=preserve,
                            smtpd_tls_session_cache_database=cache)
        with TlsmgrClient(str(daemon.socket_path)) as client:
            assert client.update("smtpd", "id", b"session") == 0
            assert client.tktkey()[0] == 0
        assert daemon.stop() == 0
        assert damaged_copies(data) == [], preserve
    assert "saved ticket keys %s are damaged: removed" % (data / KEY_FILE) in daemon.log
    assert "cache file %s is damaged (" % (data / "smtpd_scache.lmdb") in daemon.log


def test_each_removal_is_logged(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    copy = data / ("smtpd_scache.lmdb.damaged-20261201-101010")
    copy.write_bytes(b"master secrets")
    keys = data / (KEY_FILE + ".damaged-20261201-101010")
    keys.write_bytes(b"ticket keys")
    daemon = start_ours(tmp_path, data_directory=data,
                        smtpd_tls_session_cache_database="lmdb:%s/smtpd_scache" % data)
    wait_for(lambda: not copy.exists() and not keys.exists(), what="the copies to go")
    assert "tlsmgr: removed %s, a damaged copy of smtpd_scache.lmdb that an earlier version " \
           "kept" % copy in daemon.log
    assert "tlsmgr: removed %s, a damaged copy of %s that an earlier version kept" \
           % (keys, KEY_FILE) in daemon.log
    daemon.stop()


def test_damaged_copies_under_a_name_planted_as_a_link_remove_only_the_link(tmp_path):
    as_root()
    dirs = postfix_dirs(tmp_path)
    data = dirs["data_directory"]
    target = victim(tmp_path / "victim")
    os.symlink(target, data / (KEY_FILE + ".damaged-1"))
    daemon = start_ours(tmp_path, mail_owner="postfix", **dirs)
    assert not os.path.lexists(data / (KEY_FILE + ".damaged-1"))
    assert untouched(target)
    daemon.stop()
