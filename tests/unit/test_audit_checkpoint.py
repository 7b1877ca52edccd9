"""Signed notes and checkpoints, byte-compatible with the C2SP specs and Go's sumdb/note."""

from __future__ import annotations

import base64
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from civicline.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    Signer,
    Verifier,
    open_checkpoint,
    open_note,
    sign_checkpoint,
    sign_note,
)
from civicline.audit.cli import run

# The example from Go's golang.org/x/mod/sumdb/note documentation.
GO_VERIFIER = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
GO_NOTE = (
    "This is an example message.\n"
    "\n"
    "— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3m"
    "FXmRKuwHjG1Yu72IneyaQM=\n"
)
ROOT = bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")
SIGNED_AT = datetime(2026, 7, 18, 9, 30, 15, tzinfo=UTC)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer.generate("vote.example.gov/civicline-audit")


def test_a_note_signed_by_go_tooling_opens() -> None:
    verifier = Verifier.parse(GO_VERIFIER)
    assert verifier.key_id.hex() == "530d903a"
    assert verifier.encode() == GO_VERIFIER
    assert open_note(GO_NOTE, verifier) == "This is an example message.\n"


def test_a_changed_go_note_does_not_open() -> None:
    verifier = Verifier.parse(GO_VERIFIER)
    with pytest.raises(CheckpointError, match="does not verify"):
        open_note(GO_NOTE.replace("example message", "exemplary message"), verifier)


def test_keys_round_trip_through_their_text_forms(signer: Signer) -> None:
    assert Signer.parse(signer.encode()) == signer
    assert Verifier.parse(signer.verifier.encode()) == signer.verifier
    assert signer.encode().startswith("PRIVATE+KEY+vote.example.gov/civicline-audit+")
    assert "seed" not in repr(signer)
    assert signer.encode() not in repr(signer)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "example.com/foo+530d903a",
        "example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # wrong id
        "example.com/foo+530d903a+!!!",
        "example.com/foo+530d903a+AgkyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # not Ed25519
        "exa mple+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
    ],
)
def test_malformed_verifier_keys_are_refused(text: str) -> None:
    with pytest.raises(CheckpointError):
        Verifier.parse(text)


def test_checkpoint_text_is_the_c2sp_format(signer: Signer) -> None:
    checkpoint = Checkpoint(signer.name, 8, ROOT, SIGNED_AT)
    assert checkpoint.text() == (
        "vote.example.gov/civicline-audit\n8\n"
        f"{base64.b64encode(ROOT).decode()}\ntime 2026-07-18T09:30:15Z\n"
    )
    note = sign_checkpoint(checkpoint, signer)
    _body, signature_line = note.split("\n\n")
    assert signature_line.startswith("— vote.example.gov/civicline-audit ")
    signature = base64.b64decode(signature_line.split(" ")[2])
    assert signature[:4] == signer.verifier.key_id
    assert len(signature) == 68
    assert open_checkpoint(note, signer.verifier) == checkpoint


def test_a_cosignature_by_another_key_is_ignored(signer: Signer) -> None:
    note = sign_checkpoint(Checkpoint(signer.name, 8, ROOT, SIGNED_AT), signer)
    witness = Signer.generate("witness.example.org")
    cosigned = note + sign_note(note.split("\n\n")[0] + "\n", witness).split("\n\n")[1]
    assert open_checkpoint(cosigned, signer.verifier).tree_size == 8
    assert open_note(cosigned, witness.verifier).startswith(signer.name)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda note: note.replace("\n8\n", "\n9\n", 1),
        lambda note: note.replace("time 2026", "time 2027", 1),
        lambda note: note.split("\n\n")[0] + "\n",  # signature stripped
        lambda note: note.replace("— ", "-- ", 1),
    ],
)
def test_a_changed_checkpoint_does_not_open(signer: Signer, tamper: object) -> None:
    note = sign_checkpoint(Checkpoint(signer.name, 8, ROOT, SIGNED_AT), signer)
    assert callable(tamper)
    with pytest.raises(CheckpointError):
        open_checkpoint(tamper(note), signer.verifier)


def test_a_checkpoint_signed_by_another_key_does_not_open(signer: Signer) -> None:
    impostor = Signer.generate(signer.name)
    note = sign_checkpoint(Checkpoint(signer.name, 8, ROOT, SIGNED_AT), impostor)
    with pytest.raises(CheckpointError, match="not signed by"):
        open_checkpoint(note, signer.verifier)


def test_checkpoints_are_signed_only_for_the_keys_own_log(signer: Signer) -> None:
    with pytest.raises(CheckpointError, match="origin"):
        sign_checkpoint(Checkpoint("other.example/log", 1, ROOT), signer)


@pytest.mark.parametrize(
    "text",
    [
        "origin\n8\n",
        "origin\n08\n" + base64.b64encode(ROOT).decode() + "\n",
        "origin\n-1\n" + base64.b64encode(ROOT).decode() + "\n",
        "origin\n8\n" + base64.b64encode(ROOT[:31]).decode() + "\n",
        "\n8\n" + base64.b64encode(ROOT).decode() + "\n",
    ],
)
def test_malformed_checkpoints_are_refused(text: str) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint.parse(text)


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    key = tmp_path / "audit.key"
    assert run(["keygen", "--origin", "vote.example.gov/audit", "--out", str(key)]) == 0
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    signer = Signer.parse(key.read_text())
    verifier = Verifier.parse((tmp_path / "audit.key.pub").read_text())
    assert signer.verifier == verifier
    assert verifier.name == "vote.example.gov/audit"
    # A key is never overwritten: that would orphan every head signed with it.
    assert run(["keygen", "--origin", "vote.example.gov/audit", "--out", str(key)]) == 2
    assert Signer.parse(key.read_text()) == signer
