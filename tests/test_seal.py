"""seal.py: what is sealed opens only at its place, with a secret of the
file; the secret file is private and wholly secrets, or refused."""

import base64
import os

import pytest
from conftest import require

from tlsmgr.stores.seal import NotOpened, Seal, SecretFileError, new_secret_line, read_secret_file

OLD, NEW = os.urandom(32), os.urandom(32)
PLACE = b"{tlsmgr:smtpd}:s:sess1"


def test_a_sealed_value_opens_at_its_place_and_shows_nothing_of_itself():
    seal = Seal([OLD])
    value = b"master secret " * 8
    sealed = seal.seal(value, PLACE)
    assert value not in sealed and b"master secret" not in sealed
    assert seal.open(sealed, PLACE) == value
    assert Seal([OLD]).open(sealed, PLACE) == value          # another process, same secret


def test_a_value_moved_or_altered_does_not_open():
    seal = Seal([OLD])
    sealed = seal.seal(b"session", PLACE)
    with pytest.raises(NotOpened, match="altered, or moved"):
        seal.open(sealed, b"{tlsmgr:smtpd}:s:sess2")
    with pytest.raises(NotOpened, match="altered, or moved"):
        seal.open(sealed, b"{tlsmgr:smtp}:s:sess1")
    for index in range(len(sealed)):
        altered = bytearray(sealed)
        altered[index] ^= 1
        with pytest.raises(NotOpened):
            seal.open(bytes(altered), PLACE)
    with pytest.raises(NotOpened, match="not sealed"):
        seal.open(b"\0" * 8 + b"plain session", PLACE)


def test_the_first_secret_seals_and_every_secret_opens():
    old_only, both = Seal([OLD]), Seal([NEW, OLD])
    assert both.open(old_only.seal(b"v", PLACE), PLACE) == b"v"
    assert Seal([OLD, NEW]).open(both.seal(b"w", PLACE), PLACE) == b"w"
    with pytest.raises(NotOpened, match="sealed with a fleet secret this host does not have"):
        old_only.open(both.seal(b"w", PLACE), PLACE)


def test_nonces_never_repeat_within_a_process():
    seal = Seal([OLD])
    nonces = {seal.seal(b"v", PLACE)[21:33] for _ in range(1000)}
    assert len(nonces) == 1000


def test_a_new_secret_line_is_32_random_bytes_in_base64():
    first, second = new_secret_line(), new_secret_line()
    assert len(base64.b64decode(first, validate=True)) == 32 and first != second


def write_secret_file(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_a_good_file_with_comments_and_two_secrets(tmp_path):
    path = write_secret_file(tmp_path / "fleet.secret", "# the fleet's secrets\n%s\n\n%s  # old\n"
                             % (base64.b64encode(NEW).decode(), base64.b64encode(OLD).decode()))
    seal = read_secret_file(str(path), {os.geteuid()})
    assert Seal([NEW]).open(seal.seal(b"v", PLACE), PLACE) == b"v"     # the first seals
    assert seal.open(Seal([OLD]).seal(b"w", PLACE), PLACE) == b"w"     # the second opens


@pytest.mark.parametrize(("text", "mode", "problem"), [
    ("%s\n", 0o640, "may be read or written by group or others (mode 0640); chmod 600 it"),
    ("%s\n", 0o602, "may be read or written by group or others (mode 0602); chmod 600 it"),
    ("", 0o600, "holds no secret (make one with: tlsmgr-ctl fleet-secret)"),
    ("# only a comment\n", 0o600, "holds no secret"),
    ("%s\nnot base64!\n", 0o600, "line 2 is not the base64 form of 32 bytes"),
    ("%s\n" % base64.b64encode(b"short").decode(), 0o600,
     "line 1 is not the base64 form of 32 bytes (make one with: tlsmgr-ctl fleet-secret)"),
])
def test_a_bad_file_is_refused_with_its_problem(tmp_path, text, mode, problem):
    path = write_secret_file(tmp_path / "fleet.secret",
                             text.replace("%s", base64.b64encode(OLD).decode()), mode)
    with pytest.raises(SecretFileError) as raised:
        read_secret_file(str(path), {os.geteuid()})
    assert problem in str(raised.value)


def test_a_file_of_another_owner_a_link_or_none_is_refused(tmp_path):
    path = write_secret_file(tmp_path / "fleet.secret", new_secret_line())
    with pytest.raises(SecretFileError, match="is owned by uid %d, not by root or mail_owner"
                       % os.geteuid()):
        read_secret_file(str(path), {os.geteuid() + 1})
    (tmp_path / "link").symlink_to(path)
    with pytest.raises(SecretFileError, match="cannot open"):
        read_secret_file(str(tmp_path / "link"), {os.geteuid()})
    with pytest.raises(SecretFileError, match="cannot open: No such file or directory"):
        read_secret_file(str(tmp_path / "absent"), {os.geteuid()})
    with pytest.raises(SecretFileError, match="is not a regular file"):
        read_secret_file(str(tmp_path), {os.geteuid()})


def test_root_may_not_be_fooled_by_a_file_that_others_own(tmp_path):
    require(os.geteuid() == 0, "root (to give a file away)")
    path = write_secret_file(tmp_path / "fleet.secret", new_secret_line())
    os.chown(path, 65534, 65534)
    with pytest.raises(SecretFileError, match="is owned by uid 65534"):
        read_secret_file(str(path), {0})
